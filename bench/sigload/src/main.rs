//! icebreaker-sigload — the signaling load client of bench/signaling in Rust: the same modes,
//! options and JSON line as load.mjs, at a fraction of its CPU, so that the client is not
//! what limits the servers' measured throughput.
//!
//!   icebreaker-sigload idle       --target ours|peerjs --url URL --connections N [--hold-s 5]
//!   icebreaker-sigload throughput --target ours|peerjs --url URL --pairs P --rate MSGS_PER_S
//!                                 --duration-s D [--size 500] [--inflight 8] [--bidir]
//!
//! URL: ours ws://127.0.0.1:PORT/ws; peerjs ws://127.0.0.1:PORT (/peerjs?key=..&id=..&token=..
//! is appended). Common: [--pid PID|auto] [--concurrency 500] [--timeout-s S]
//! [--heartbeat-s 25] [--per-source 20000] [--open-timeout-s 15] [--key peerjs] [--label L]
//! [--quiet] [--threads N]. `report` stays with `node load.mjs report`; --deflate is not
//! supported (tungstenite has no permessage-deflate).
//!
//! Output: progress on stderr, ONE JSON line on stdout (the fields of load.mjs, plus
//! "client" and "client_threads"). Exit 0 = clean run; 1 = the run finished but something
//! failed (see "failures"); 2 = usage or environment error (no JSON line). A watchdog thread
//! ends the run after --timeout-s. Only loopback targets are accepted.
//!
//! Differences from load.mjs that do not change the meaning of any field: the send time in
//! each payload is a zero-padded microsecond count since this process started (the frame
//! size stays `--size`), latencies have microsecond resolution, and both connections of a pair
//! are served by one task.

macro_rules! log {
    ($($arg:tt)*) => {
        if !$crate::sh().cfg.quiet {
            eprintln!(
                "[sigload {} {}] {}",
                $crate::sh().cfg.mode.name(),
                $crate::sh().cfg.target.name(),
                format_args!($($arg)*)
            );
        }
    };
}

mod pair;
mod proc;
mod proto;
mod stats;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::pair::{heartbeat_interval, Kind, PairStats, Start, StreamCfg};
use crate::proto::{
    dispatch, err_key, first_peer, open_conn, take_text, Conn, Target, Template, UrlParts, Who,
};
use crate::stats::{jint, jnum, percentile_ms, round3};

const LIMIT_CONNECTIONS: u64 = 200_000;
const LIMIT_PAIRS: u64 = 20_000;
const LIMIT_RATE: u64 = 1_000_000;
const LIMIT_DURATION_S: f64 = 600.0;
const LIMIT_HOLD_S: f64 = 600.0;
/// Latency / lag samples kept over the whole run (load.mjs keeps 20 M of each).
const MAX_SAMPLES: u64 = 20_000_000;

// ---------------------------------------------------------------------------------------------
// shared state

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Idle,
    Throughput,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Throughput => "throughput",
        }
    }
}

pub struct Cfg {
    pub mode: Mode,
    pub target: Target,
    pub url: UrlParts,
    /// where odd-numbered connections go (a pair's second member): another cluster node
    pub url2: Option<UrlParts>,
    pub label: Option<String>,
    pub quiet: bool,
    pub concurrency: usize,
    pub heartbeat_s: u64,
    pub per_source: u64,
    pub open_timeout: Duration,
    pub key: String,
    pub run_id: String,
    pub server_pid: Option<u32>,
    /// more processes whose CPU and RSS count as the server's (other nodes, Redis)
    pub also_pids: Vec<u32>,
    pub ws_cfg: WebSocketConfig,
    pub threads: usize,
}

pub struct Shared {
    pub cfg: Cfg,
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// set when the result is being printed: closes from then on are not failures
    pub closing: AtomicBool,
    finished: AtomicBool,
    /// Sec-WebSocket-Extensions of the first connection ("" = none)
    pub extensions: Mutex<Option<String>>,
    /// the mode's result fields, in output order (what the watchdog prints if it fires)
    result: Mutex<Vec<(String, Value)>>,
    /// progress counters
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// idle: connections currently open
    pub open_now: AtomicI64,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();
static SEED: OnceLock<u64> = OnceLock::new();

pub fn sh() -> &'static Shared {
    SHARED
        .get()
        .expect("shared state is set before the runtime starts")
}

/// Microseconds since this process's epoch: the clock of the send timestamps.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Per-process randomness for run ids and PeerJS tokens (names, not secrets).
pub fn seed() -> u64 {
    *SEED.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        splitmix(t ^ ((std::process::id() as u64) << 32))
    })
}

pub fn fail(kind: &str) {
    fail_n(kind, 1);
}

pub fn fail_n(kind: &str, n: u64) {
    let mut m = sh().failures.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(kind.to_string()).or_insert(0) += n;
}

/// Sets a result field, keeping the position of its first setting.
fn set(key: &str, v: Value) {
    let mut r = sh().result.lock().unwrap_or_else(|e| e.into_inner());
    match r.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => r.push((key.to_string(), v)),
    }
}

/// Prints the JSON line and exits: 0 if no failures, else 1. Only the first caller prints.
fn finish() -> ! {
    let s = sh();
    if s.finished.swap(true, SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    s.closing.store(true, SeqCst);
    let failures = s.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ok = failures.is_empty();
    let ext = s
        .extensions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut fields: Vec<(String, Value)> = vec![
        ("tool".into(), "icebreaker-signaling-load".into()),
        ("client".into(), "icebreaker-sigload".into()),
        ("mode".into(), s.cfg.mode.name().into()),
        ("target".into(), s.cfg.target.name().into()),
        (
            "label".into(),
            s.cfg.label.clone().map(Value::from).unwrap_or(Value::Null),
        ),
        ("url".into(), s.cfg.url.href().into()),
        (
            "url2".into(),
            s.cfg
                .url2
                .as_ref()
                .map(|u| Value::from(u.href()))
                .unwrap_or(Value::Null),
        ),
        ("server_pid".into(), jint(s.cfg.server_pid.map(u64::from))),
        ("also_pids".into(), Value::from(s.cfg.also_pids.clone())),
        (
            "ws_extensions".into(),
            ext.map(Value::from).unwrap_or(Value::Null),
        ),
    ];
    fields.extend(
        s.result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    fields.push(("ok".into(), Value::from(ok)));
    fields.push((
        "failures".into(),
        serde_json::to_value(&failures).unwrap_or(Value::Null),
    ));
    let mut line = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Value::from(k.as_str()).to_string());
        line.push(':');
        line.push_str(&v.to_string());
    }
    line.push_str("}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    std::process::exit(if ok { 0 } else { 1 })
}

/// The run ends by itself even if the server stops answering (or the runtime wedges).
fn watchdog(seconds: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        log!("timeout after {seconds} s");
        fail("timeout");
        finish();
    });
}

// ---------------------------------------------------------------------------------------------
// arguments

#[derive(Parser, Debug)]
#[command(
    name = "icebreaker-sigload",
    about = "Signaling load client (Icebreaker protocol v1 / PeerJS): the modes and JSON line of bench/signaling/load.mjs"
)]
struct Args {
    /// idle | throughput
    mode: String,
    /// (report FILE is load.mjs's job)
    file: Option<String>,
    /// ours | peerjs
    #[arg(long)]
    target: Option<String>,
    /// ws://127.0.0.1:PORT/ws (ours) or ws://127.0.0.1:PORT (peerjs); loopback only
    #[arg(long)]
    url: Option<String>,
    /// ours: every pair's second member (idle: every other connection) connects here
    /// instead, e.g. a second cluster node: signals then cross nodes
    #[arg(long)]
    url2: Option<String>,
    /// another process whose CPU and RSS are added to the server's (repeatable: the other
    /// nodes and redis-server of a cluster)
    #[arg(long)]
    also_pid: Vec<u32>,
    /// server pid for /proc figures; auto = the process listening on the URL's port
    #[arg(long, default_value = "auto")]
    pid: String,
    /// idle: connections to open
    #[arg(long)]
    connections: Option<u64>,
    /// idle: seconds to hold them before reading RSS
    #[arg(long, default_value_t = 5.0)]
    hold_s: f64,
    /// throughput: pairs
    #[arg(long)]
    pairs: Option<u64>,
    /// throughput: total msg/s over all streams; 0 = max (window) mode
    #[arg(long)]
    rate: Option<u64>,
    /// throughput: seconds of sending
    #[arg(long)]
    duration_s: Option<f64>,
    /// throughput: frame bytes
    #[arg(long, default_value_t = 500)]
    size: u64,
    /// max mode: undelivered messages allowed per stream
    #[arg(long, default_value_t = 8)]
    inflight: u64,
    /// seconds to wait for messages still in flight after sending
    #[arg(long, default_value_t = 5.0)]
    drain_s: f64,
    /// both members of a pair send
    #[arg(long)]
    bidir: bool,
    /// handshakes in flight
    #[arg(long, default_value_t = 500)]
    concurrency: u64,
    /// watchdog (default from the load size)
    #[arg(long)]
    timeout_s: Option<u64>,
    /// heartbeat period per connection (ours: ping; PeerJS: HEARTBEAT); 0 = none
    #[arg(long, default_value_t = 25)]
    heartbeat_s: u64,
    /// connections per source address (127.0.0.1, then .2, ...)
    #[arg(long, default_value_t = 20_000)]
    per_source: u64,
    /// seconds for connect + handshake + join
    #[arg(long, default_value_t = 15)]
    open_timeout_s: u64,
    /// not supported by this client (load.mjs has it)
    #[arg(long)]
    deflate: bool,
    /// PeerJS key
    #[arg(long, default_value = "peerjs")]
    key: String,
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    quiet: bool,
    /// tokio worker threads; 0 = one per CPU
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("icebreaker-sigload: {msg}");
    eprintln!(
        "usage: icebreaker-sigload idle|throughput --target ours|peerjs --url ws://127.0.0.1:PORT[/ws] ...\n       (the options of bench/signaling/load.mjs; see --help)"
    );
    std::process::exit(2)
}

fn int_in(name: &str, v: Option<u64>, min: u64, max: u64) -> u64 {
    let Some(v) = v else {
        usage(&format!("--{name} is required"))
    };
    if v < min || v > max {
        usage(&format!(
            "--{name} must be an integer in [{min}, {max}], got {v}"
        ));
    }
    v
}

fn num_in(name: &str, v: Option<f64>, min: f64, max: f64) -> f64 {
    let Some(v) = v else {
        usage(&format!("--{name} is required"))
    };
    if !v.is_finite() || v < min || v > max {
        usage(&format!(
            "--{name} must be a number in [{min}, {max}], got {v}"
        ));
    }
    v
}

fn check_fd_limit(needed: u64) {
    if let Some(lim) = proc::open_files_limit() {
        if needed + 64 > lim {
            usage(&format!(
                "need ~{} file descriptors, limit is {lim}: raise it with ulimit -n (run.sh does)",
                needed + 64
            ));
        }
    }
}

struct IdleParams {
    n: u64,
    hold_s: f64,
    timeout_s: u64,
}

struct TpParams {
    pairs: u64,
    rate: u64,
    duration_s: f64,
    size: u64,
    inflight: u64,
    drain_s: f64,
    bidir: bool,
    timeout_s: u64,
}

enum Params {
    Idle(IdleParams),
    Throughput(TpParams),
}

fn run_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = splitmix(seed() ^ 0x5157_4c4f_4144);
    (0..8)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn main() {
    let a = Args::parse();
    EPOCH.get_or_init(Instant::now);

    let mode = match a.mode.as_str() {
        "idle" => Mode::Idle,
        "throughput" => Mode::Throughput,
        "report" => {
            usage("report is load.mjs's job: node bench/signaling/load.mjs report RESULTS.jsonl")
        }
        other => usage(&format!("unknown mode {other}")),
    };
    if let Some(f) = &a.file {
        usage(&format!("unexpected argument {f}"));
    }
    let target = match a.target.as_deref() {
        Some("ours") => Target::Ours,
        Some("peerjs") => Target::Peerjs,
        _ => usage("--target must be ours or peerjs"),
    };
    let Some(url) = a.url.as_deref() else {
        usage("--url is required")
    };
    let url = proto::parse_url(url).unwrap_or_else(|e| usage(&e));
    let url2 = a
        .url2
        .as_deref()
        .map(|u| proto::parse_url(u).unwrap_or_else(|e| usage(&e)));
    if url2.is_some() && target != Target::Ours {
        usage("--url2 is for --target ours (a second cluster node)");
    }
    for &pid in &a.also_pid {
        if pid == 0 || proc::cpu_ticks(Some(pid)).is_none() {
            usage(&format!("--also-pid: no such process {pid}"));
        }
    }
    if a.deflate {
        usage("--deflate is not supported by this client (use load.mjs)");
    }
    let concurrency = int_in("concurrency", Some(a.concurrency), 1, 5000);
    let heartbeat_s = int_in("heartbeat-s", Some(a.heartbeat_s), 0, 3600);
    let per_source = int_in("per-source", Some(a.per_source), 100, 28_000);
    let open_timeout_s = int_in("open-timeout-s", Some(a.open_timeout_s), 1, 300);
    let threads = if a.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        a.threads.min(256)
    };

    let params = match mode {
        Mode::Idle => {
            let n = int_in("connections", a.connections, 1, LIMIT_CONNECTIONS);
            let hold_s = num_in("hold-s", Some(a.hold_s), 0.0, LIMIT_HOLD_S);
            if url.ip.is_ipv6() && n > per_source {
                usage(&format!(
                    "::1 targets are limited to --per-source ({per_source}) connections"
                ));
            }
            check_fd_limit(n);
            let def = (60.0 + n as f64 / 200.0 + hold_s).ceil() as u64;
            let timeout_s = int_in("timeout-s", Some(a.timeout_s.unwrap_or(def)), 1, 7200);
            Params::Idle(IdleParams {
                n,
                hold_s,
                timeout_s,
            })
        }
        Mode::Throughput => {
            let pairs = int_in("pairs", a.pairs, 1, LIMIT_PAIRS);
            let rate = int_in("rate", a.rate, 0, LIMIT_RATE);
            let duration_s = num_in("duration-s", a.duration_s, 0.1, LIMIT_DURATION_S);
            let size = int_in("size", Some(a.size), 64, 65_536);
            let inflight = int_in("inflight", Some(a.inflight), 1, 10_000);
            let drain_s = num_in("drain-s", Some(a.drain_s), 0.0, 120.0);
            check_fd_limit(2 * pairs);
            let def = (60.0 + pairs as f64 / 100.0 + duration_s + drain_s).ceil() as u64;
            let timeout_s = int_in("timeout-s", Some(a.timeout_s.unwrap_or(def)), 1, 7200);
            Params::Throughput(TpParams {
                pairs,
                rate,
                duration_s,
                size,
                inflight,
                drain_s,
                bidir: a.bidir,
                timeout_s,
            })
        }
    };

    let server_pid = if a.pid == "auto" {
        None // found below, once logging works
    } else {
        let pid: u32 = a
            .pid
            .parse()
            .unwrap_or_else(|_| usage(&format!("--pid must be a pid or auto, got {}", a.pid)));
        if pid == 0 || proc::cpu_ticks(Some(pid)).is_none() {
            usage(&format!("no such process {pid}"));
        }
        Some(pid)
    };
    let server_pid = server_pid.or_else(|| {
        if a.pid == "auto" {
            proc::find_listener_pid(url.port)
        } else {
            None
        }
    });
    let port = url.port;

    // Idle: thousands of mostly silent sockets, small buffers. Throughput: few sockets, large
    // read buffer (many frames per read) and a write buffer that lets feeds coalesce until
    // the flush.
    let ws_cfg = match &params {
        Params::Idle(_) => WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0),
        Params::Throughput(p) => {
            let read = if p.pairs <= 1000 {
                128 * 1024
            } else {
                16 * 1024
            };
            WebSocketConfig::default()
                .read_buffer_size(read)
                .write_buffer_size(64 * 1024)
        }
    };
    let cfg = Cfg {
        mode,
        target,
        url,
        url2,
        label: a.label,
        quiet: a.quiet,
        concurrency: concurrency as usize,
        heartbeat_s,
        per_source,
        open_timeout: Duration::from_secs(open_timeout_s),
        key: a.key,
        run_id: run_id(),
        server_pid,
        also_pids: a.also_pid,
        ws_cfg,
        threads,
    };
    let shared = Shared {
        cfg,
        failures: Mutex::new(BTreeMap::new()),
        closing: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        extensions: Mutex::new(None),
        result: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        open_now: AtomicI64::new(0),
    };
    if SHARED.set(shared).is_err() {
        unreachable!("shared state set twice");
    }
    if server_pid.is_none() {
        log!("no process found listening on port {port}: server figures will be null");
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("icebreaker-sigload: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    rt.block_on(async move {
        let r = match params {
            Params::Idle(p) => idle(p).await,
            Params::Throughput(p) => throughput(p).await,
        };
        if let Err(e) = r {
            eprintln!("icebreaker-sigload: {e:#}");
            fail("exception");
        }
        finish()
    })
}

// ---------------------------------------------------------------------------------------------
// opening many connections

/// Keeps --concurrency opens in flight; stops starting new ones after too many failures.
/// Returns the results by index, the number opened and the number failed.
async fn open_all<T, F, Fut>(n: usize, make: F) -> (Vec<Option<T>>, usize, usize)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    struct State<T> {
        next: AtomicUsize,
        opened: AtomicUsize,
        failed: AtomicUsize,
        results: Mutex<Vec<Option<T>>>,
        last_err: Mutex<Option<String>>,
    }
    let max_failures = std::cmp::max(20, n.div_ceil(100));
    let st = Arc::new(State {
        next: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        results: Mutex::new((0..n).map(|_| None).collect()),
        last_err: Mutex::new(None),
    });
    let make = Arc::new(make);
    let t0 = Instant::now();
    let progress = {
        let st = st.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            iv.tick().await;
            loop {
                iv.tick().await;
                let opened = st.opened.load(Relaxed);
                let rate = opened as f64 / t0.elapsed().as_secs_f64();
                log!(
                    "opened {opened}/{n} ({rate:.0}/s), failed {}",
                    st.failed.load(Relaxed)
                );
            }
        })
    };
    let workers = sh().cfg.concurrency.min(n).max(1);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let st = st.clone();
        let make = make.clone();
        handles.push(tokio::spawn(async move {
            loop {
                if st.failed.load(Relaxed) >= max_failures {
                    break;
                }
                let i = st.next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                let fut = (*make)(i);
                match fut.await {
                    Ok(v) => {
                        st.results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
                        st.opened.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        st.failed.fetch_add(1, Relaxed);
                        fail(&format!("open_failed_{}", err_key(&e)));
                        let msg = format!("{e:#}");
                        *st.last_err.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    }
                }
            }
        }));
    }
    for h in handles {
        if h.await.is_err() {
            fail("exception");
        }
    }
    progress.abort();
    let opened = st.opened.load(Relaxed);
    let failed = st.failed.load(Relaxed);
    if failed > 0 {
        let last = st
            .last_err
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        log!("{failed} opens failed, last: {last}");
    }
    let results = std::mem::take(&mut *st.results.lock().unwrap_or_else(|e| e.into_inner()));
    (results, opened, failed)
}

// ---------------------------------------------------------------------------------------------
// idle: memory and CPU cost of N joined, silent connections

async fn open_idle(k: usize) -> anyhow::Result<()> {
    let cfg = &sh().cfg;
    let who = match cfg.target {
        Target::Ours => Who::Room(format!("idle-{}-{}", cfg.run_id, k >> 1)), // rooms of two members
        Target::Peerjs => Who::Id(format!("idle-{}-{}", cfg.run_id, k)),
    };
    let c = open_conn(k, who).await?;
    sh().open_now.fetch_add(1, Relaxed);
    tokio::spawn(hold(c));
    Ok(())
}

/// Keeps an idle connection: reads (tungstenite answers pings on the next read) and beats.
async fn hold(mut c: Conn) {
    let target = sh().cfg.target;
    let hb_on = sh().cfg.heartbeat_s > 0;
    let mut hb = heartbeat_interval();
    loop {
        tokio::select! {
            m = c.ws.next() => {
                if let Some(text) = take_text(&mut c.st, m) {
                    let _ = dispatch(target, &mut c.st, text.as_str());
                }
            }
            _ = hb.tick(), if hb_on => {
                if let Err(e) = c.ws.send(Message::text(target.heartbeat())).await {
                    proto::mark_dead(&mut c.st, Some(&e));
                }
            }
        }
        if !c.st.alive {
            sh().open_now.fetch_sub(1, Relaxed);
            return;
        }
    }
}

/// The server's processes: the one listening on --url (or --pid) and every --also-pid.
/// Empty when none was found, and then the server figures are null.
fn server_pids() -> Vec<u32> {
    let cfg = &sh().cfg;
    match cfg.server_pid {
        Some(p) => std::iter::once(p)
            .chain(cfg.also_pids.iter().copied())
            .collect(),
        None => Vec::new(),
    }
}

async fn idle(p: IdleParams) -> anyhow::Result<()> {
    let pid = server_pids();
    set("conns", Value::from(0));
    set("requested", Value::from(p.n));
    watchdog(p.timeout_s);

    let rss0 = proc::rss_kib(&pid);
    let cpu0 = proc::cpu_ticks_all(&pid);
    let t0 = Instant::now();
    let (_, opened, _) = open_all(p.n as usize, open_idle).await;
    let open_s = t0.elapsed().as_secs_f64();
    let cpu1 = proc::cpu_ticks_all(&pid);
    set("conns", Value::from(opened));
    set("open_s", jnum(round3(open_s)));
    set(
        "open_rate_per_s",
        jnum(Some((opened as f64 / open_s).round())),
    );
    let us_cpu_per_conn = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) if opened > 0 => {
            round3((c1 as f64 - c0 as f64) * 1e6 / proc::CLK_TCK / opened as f64)
        }
        _ => None,
    };
    set("us_cpu_per_conn", jnum(us_cpu_per_conn));
    log!("{opened} open in {open_s:.2} s; holding {} s", p.hold_s);

    // Settle: let the server finish per-connection work and the allocator quiet down.
    tokio::time::sleep(Duration::from_secs_f64(p.hold_s)).await;
    let rss1 = proc::rss_kib(&pid);
    let cpu2 = proc::cpu_ticks_all(&pid);
    let still = sh().open_now.load(Relaxed).max(0) as u64;
    if still != opened as u64 {
        fail_n("closed_while_idle", (opened as u64).saturating_sub(still));
    }
    let rss_before = rss0.as_ref().and_then(|r| r.rss);
    let rss_after = rss1.as_ref().and_then(|r| r.rss);
    set("conns_open_at_end", Value::from(still));
    set("rss_before_kib", jint(rss_before));
    set("rss_after_kib", jint(rss_after));
    set("rss_peak_kib", jint(rss1.as_ref().and_then(|r| r.hwm)));
    let kib_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if opened > 0 => round3((a as f64 - b as f64) / opened as f64),
        _ => None,
    };
    set("kib_per_conn", jnum(kib_per_conn));
    set("hold_s", jnum(Some(p.hold_s)));
    // What N silent connections cost the server per second (timers, keepalive sweeps).
    let hold_pct = match (cpu1, cpu2) {
        (Some(c1), Some(c2)) if p.hold_s > 0.0 => {
            round3((c2 as f64 - c1 as f64) / proc::CLK_TCK / p.hold_s * 100.0)
        }
        _ => None,
    };
    set("server_cpu_pct_hold", jnum(hold_pct));
    set("concurrency", Value::from(sh().cfg.concurrency));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// throughput: signals between pair members, measured at the receiver in the same process

struct PairHandle {
    /// whom a sends to / b sends to
    a_to: String,
    b_to: String,
    start_tx: oneshot::Sender<Start>,
    stats_rx: oneshot::Receiver<PairStats>,
}

/// Pair up. Ours: the second member learns the first from "joined", the first learns the
/// second from "peer-joined". PeerJS: ids are ours to choose, so each side knows the other.
async fn open_pair(i: usize, lat_cap: usize) -> anyhow::Result<PairHandle> {
    let cfg = &sh().cfg;
    let (a, b, a_to, b_to) = match cfg.target {
        Target::Ours => {
            let room = format!("tp-{}-{}", cfg.run_id, i);
            let mut a = open_conn(2 * i, Who::Room(room.clone())).await?;
            let mut b = open_conn(2 * i + 1, Who::Room(room)).await?;
            let a_to = first_peer(&mut a).await?;
            let b_to = first_peer(&mut b).await?;
            if b.st.id.as_deref() != Some(a_to.as_str())
                || a.st.id.as_deref() != Some(b_to.as_str())
            {
                anyhow::bail!("pair ids mismatch");
            }
            (a, b, a_to, b_to)
        }
        Target::Peerjs => {
            let a_id = format!("tp-{}-{}-a", cfg.run_id, i);
            let b_id = format!("tp-{}-{}-b", cfg.run_id, i);
            let (ra, rb) = tokio::join!(
                open_conn(2 * i, Who::Id(a_id.clone())),
                open_conn(2 * i + 1, Who::Id(b_id.clone()))
            );
            (ra?, rb?, b_id, a_id)
        }
    };
    let (start_tx, start_rx) = oneshot::channel();
    let (stats_tx, stats_rx) = oneshot::channel();
    tokio::spawn(pair::run_pair(a, b, start_rx, stats_tx, lat_cap));
    Ok(PairHandle {
        a_to,
        b_to,
        start_tx,
        stats_rx,
    })
}

async fn throughput(p: TpParams) -> anyhow::Result<()> {
    let cfg = &sh().cfg;
    let pid = server_pids();
    set("pairs", Value::from(p.pairs));
    set("streams", Value::from(0));
    set("rate_target", Value::from(p.rate));
    set("duration_s", jnum(Some(p.duration_s)));
    set("size", Value::from(p.size));
    watchdog(p.timeout_s);

    let lat_cap = ((MAX_SAMPLES / p.pairs) as usize).max(10_000);
    let (handles, _, failed) = open_all(p.pairs as usize, move |i| open_pair(i, lat_cap)).await;
    let handles: Vec<PairHandle> = handles.into_iter().flatten().collect();
    if failed > 0 || handles.len() != p.pairs as usize {
        log!("pair setup failed; not measuring");
        return Ok(());
    }

    // One stream per direction in use. Padding sizes the whole frame to ~size bytes.
    let mut list: Vec<(usize, bool, String)> = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        list.push((i, false, h.a_to.clone()));
        if p.bidir {
            list.push((i, true, h.b_to.clone()));
        }
    }
    let n_streams = list.len();
    let mut per_pair: Vec<Vec<StreamCfg>> = (0..handles.len()).map(|_| Vec::new()).collect();
    let mut frame_bytes = 0;
    for (idx, (i, from_b, dst)) in list.into_iter().enumerate() {
        let template = Template::new(cfg.target, &dst, p.size as usize);
        frame_bytes = template.frame(0, 0).len();
        per_pair[i].push(StreamCfg {
            from_b,
            template,
            phase: idx as f64 / n_streams as f64,
        });
    }
    set("streams", Value::from(n_streams));
    set("frame_bytes", Value::from(frame_bytes));
    let kind = if p.rate == 0 {
        Kind::Max {
            inflight: p.inflight,
            duration: Duration::from_secs_f64(p.duration_s),
        }
    } else {
        let r = p.rate as f64 / n_streams as f64;
        Kind::Paced {
            r,
            total: (r * p.duration_s).round() as u64,
        }
    };
    let drain = Duration::from_secs_f64(p.drain_s);

    let cpu0 = proc::cpu_ticks_all(&pid);
    let cu0 = proc::self_cpu_ticks();
    let t0 = Instant::now();
    let progress = tokio::spawn(async {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.tick().await;
        loop {
            iv.tick().await;
            log!(
                "sent {} delivered {}",
                sh().sent.load(Relaxed),
                sh().delivered.load(Relaxed)
            );
        }
    });
    let mut stats_rxs = Vec::with_capacity(handles.len());
    for (h, streams) in handles.into_iter().zip(per_pair) {
        let _ = h.start_tx.send(Start {
            t0,
            kind,
            drain,
            streams,
        });
        stats_rxs.push(h.stats_rx);
    }
    let mut all: Vec<PairStats> = Vec::with_capacity(stats_rxs.len());
    for rx in stats_rxs {
        match rx.await {
            Ok(s) => all.push(s),
            Err(_) => fail("exception"),
        }
    }
    let done = Instant::now();
    progress.abort();
    let cpu1 = proc::cpu_ticks_all(&pid);
    let cu1 = proc::self_cpu_ticks();

    let sent: u64 = all.iter().map(|s| s.sent).sum();
    let delivered: u64 = all.iter().map(|s| s.delivered).sum();
    let order_violations: u64 = all.iter().map(|s| s.order_violations).sum();
    let gaps: u64 = all.iter().map(|s| s.gaps).sum();
    let send_end = all.iter().filter_map(|s| s.send_end).max().unwrap_or(done);
    let last_delivery = all.iter().filter_map(|s| s.last_delivery).max();
    let end = last_delivery.map_or(send_end, |l| l.max(send_end));
    let window_s = end.saturating_duration_since(t0).as_secs_f64().max(1e-6);
    let lost = sent.saturating_sub(delivered);
    if lost > 0 {
        fail_n("lost", lost);
    }
    if order_violations > 0 {
        fail_n("order_violations", order_violations);
    }

    let mut lat: Vec<u32> = Vec::with_capacity(all.iter().map(|s| s.lat_us.len()).sum());
    let mut lag: Vec<u32> = Vec::with_capacity(all.iter().map(|s| s.lag_us.len()).sum());
    for s in &mut all {
        lat.append(&mut s.lat_us);
        lag.append(&mut s.lag_us);
    }
    lat.sort_unstable();
    lag.sort_unstable();
    let server_s = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) => Some((c1 as f64 - c0 as f64) / proc::CLK_TCK),
        _ => None,
    };
    let client_s = match (cu0, cu1) {
        (Some(c0), Some(c1)) => Some((c1 as f64 - c0 as f64) / proc::CLK_TCK),
        _ => None,
    };
    let paced = p.rate > 0;
    set(
        "mode_detail",
        Value::from(if paced {
            "paced".to_string()
        } else {
            format!("window {} in flight per stream", p.inflight)
        }),
    );
    set(
        "inflight",
        if paced {
            Value::Null
        } else {
            Value::from(p.inflight)
        },
    );
    set("sent", Value::from(sent));
    set("delivered", Value::from(delivered));
    set("lost", Value::from(lost));
    set("order_violations", Value::from(order_violations));
    set("gaps", Value::from(gaps));
    set(
        "achieved_msgs_per_s",
        jnum(Some((delivered as f64 / window_s).round())),
    );
    set(
        "send_s",
        jnum(round3(send_end.saturating_duration_since(t0).as_secs_f64())),
    );
    set("window_s", jnum(round3(window_s)));
    set("latency_ms_p50", jnum(percentile_ms(&lat, 0.5)));
    set("latency_ms_p90", jnum(percentile_ms(&lat, 0.9)));
    set("latency_ms_p99", jnum(percentile_ms(&lat, 0.99)));
    set("latency_ms_max", jnum(percentile_ms(&lat, 1.0)));
    set(
        "send_lag_ms_p99",
        if paced {
            jnum(percentile_ms(&lag, 0.99))
        } else {
            Value::Null
        },
    );
    set(
        "send_lag_ms_max",
        if paced {
            jnum(percentile_ms(&lag, 1.0))
        } else {
            Value::Null
        },
    );
    set("server_cpu_s", jnum(server_s.and_then(round3)));
    set(
        "server_cpu_pct",
        jnum(server_s.map(|s| (s / window_s * 100.0).round())),
    );
    set(
        "us_cpu_per_msg",
        jnum(
            server_s
                .filter(|_| delivered > 0)
                .and_then(|s| round3(s * 1e6 / delivered as f64)),
        ),
    );
    set(
        "client_cpu_pct",
        jnum(client_s.map(|s| (s / window_s * 100.0).round())),
    );
    set("client_threads", Value::from(cfg.threads));
    Ok(())
}
