//! One harness for every end-to-end test: start real binaries (ours from the build's
//! target directory, others from PATH) on free loopback ports, read their logs, and stop
//! exactly what was started, even when a test fails.

pub mod haproxy;
pub mod raw_ws;
pub mod turn_probe;
pub mod ws_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Path of one of our binaries, built by `cargo build --release --workspace` next to the
/// test executable (target/<profile>/deps/.. → target/<profile>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace first (`cargo build --release --workspace`)",
        p.display()
    );
    p
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails the test with install advice when a required external tool is missing: CI
/// installs them (`.ci/run`), so a missing tool is a broken setup, not a skip.
pub fn require(program: &str, package: &str) {
    assert!(
        have(program),
        "`{program}` is missing: apt-get install -y {package} (see .ci/run)"
    );
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// A child process whose stdout and stderr lines are collected (and echoed to the test's
/// output, which cargo shows on failure). Killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    out: Arc<(Mutex<Lines>, Condvar)>,
    stdin: Option<std::process::ChildStdin>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

impl Proc {
    pub fn start(name: &str, cmd: Command) -> Proc {
        Self::spawn(name, cmd, false)
    }

    /// Like [`Proc::start`], with stdin kept open for [`Proc::write_line`].
    pub fn start_with_stdin(name: &str, cmd: Command) -> Proc {
        Self::spawn(name, cmd, true)
    }

    pub fn write_line(&mut self, line: &str) {
        let w = self.stdin.as_mut().expect("started with stdin");
        writeln!(w, "{line}").expect("write to child stdin");
        w.flush().ok();
    }

    fn spawn(name: &str, mut cmd: Command, with_stdin: bool) -> Proc {
        cmd.stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let streams: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        let open = Arc::new(Mutex::new(streams.len()));
        for s in streams {
            let out = out.clone();
            let open = open.clone();
            let tag = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    eprintln!("[{tag}] {line}");
                    out.0.lock().unwrap().lines.push(line);
                    out.1.notify_all();
                }
                let mut n = open.lock().unwrap();
                *n -= 1;
                if *n == 0 {
                    out.0.lock().unwrap().closed = true;
                    out.1.notify_all();
                }
            });
        }
        let stdin = child.stdin.take();
        Proc {
            name: name.to_string(),
            child,
            out,
            stdin,
        }
    }

    /// Starts one of our binaries.
    pub fn ours(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args);
        Proc::start(name, cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.out
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The first line containing `needle`, waiting up to `timeout`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn output(&self) -> String {
        self.out.0.lock().unwrap().lines.join("\n")
    }

    /// Waits for the process to exit by itself, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                // let the reader threads drain the pipes
                let (m, cv) = &*self.out;
                let g = m.lock().unwrap();
                let _ = cv.wait_timeout_while(g, Duration::from_secs(2), |l| !l.closed);
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (None: it had to be killed after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait(timeout)
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A UDP port free right now on 127.0.0.1 (for tools that cannot bind port 0 themselves).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// A TCP port free right now on 127.0.0.1 (for servers we configure by file: redis-server,
/// HAProxy, nginx).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// A random range of relayed ports, so concurrent tests and leftover allocations from
/// clients that leak them never collide.
pub fn port_range(len: u16) -> (u16, u16) {
    let lo = 20000 + rand::random::<u16>() % 30000;
    (lo, lo + len - 1)
}

pub struct Relay {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// The socket address right after `key` in a log line (`addrs=[127.0.0.1:1234]`).
pub fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| c == ']' || c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].trim_start_matches('[').parse().ok()
}

/// `icebreaker-relay` on 127.0.0.1, a free port, a random relay range, users `test:test`
/// and REST secret `s3cret`, realm `example.org`, plus `extra` flags.
pub fn start_relay(extra: &[&str]) -> Relay {
    let (lo, hi) = port_range(400);
    let range = format!("{lo}-{hi}");
    // IB_TEST_RELAY_LOG=debug shows every request when a test needs a closer look.
    let log = std::env::var("IB_TEST_RELAY_LOG").unwrap_or_else(|_| "info".into());
    let mut args = vec!["--listen", "127.0.0.1:0"];
    // A test that needs a range of its own (a big one) names it.
    if !extra.contains(&"--relay-ports") {
        args.extend_from_slice(&["--relay-ports", &range]);
    }
    args.extend_from_slice(&[
        "--realm",
        "example.org",
        "--user",
        "test:test",
        "--auth-secret",
        "s3cret",
        "--metrics-listen",
        "127.0.0.1:0",
        "--log",
        &log,
    ]);
    args.extend_from_slice(extra);
    let proc = Proc::ours("icebreaker-relay", &args);
    let line = proc
        .wait_line("relay listening", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("relay did not start:\n{}", proc.output()));
    let addr = addr_after(&line, "addrs=[").expect("listen address in the log");
    let metrics = proc
        .wait_line("metrics on", Duration::from_secs(5))
        .and_then(|l| addr_after(&l, "addr="));
    Relay {
        proc,
        addr,
        metrics,
    }
}

/// Minimal HTTP/1.0 GET (status, body) for /metrics and /healthz.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    parse_http_response(&out)
}

/// (status, body) of a whole HTTP/1 response; status 0 when there is none.
pub fn parse_http_response(out: &str) -> (u16, String) {
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum of a Prometheus metric's samples whose label set contains every `label` given.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The directory of the repository (for scripts under tests/).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// The records a browser suite (tests/browser/*.mjs) printed, one JSON line per scenario
/// (`{"scenario", "ok", …, "error"}`). Panics unless each of `want` ran and every one passed;
/// a failure ends with a one-line verdict after its record, since CI keeps only the tail.
pub fn scenario_results(p: &Proc, want: &[&str]) -> Vec<serde_json::Value> {
    let output = p.output();
    let results: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["scenario"].is_string())
        .collect();
    let names: Vec<&str> = results
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .collect();
    for w in want {
        assert!(
            names.contains(w),
            "scenario {w} did not run: {names:?}\n{output}"
        );
    }
    for r in &results {
        if r["ok"] != true {
            eprintln!("{output}\n{r}");
            panic!("scenario {} failed: {}", r["scenario"], r["error"]);
        }
    }
    results
}

/// `redis-server` on `port`, in memory only (a restart loses everything, the worst case).
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        require("redis-server", "redis-server");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        let proc = Proc::start("redis", cmd);
        proc.wait_line("Ready to accept connections", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("redis-server did not start:\n{}", proc.output()));
        Redis { proc, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGKILL) };
        self.proc.wait(Duration::from_secs(5));
    }
}

/// `tests/browser`, where the Playwright scripts live, once Chromium, Node and the npm
/// packages are there (`scripts/test` installs them).
pub fn browser_dir() -> PathBuf {
    require("chromium", "chromium");
    require("node", "nodejs");
    let dir = repo_dir().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (.ci/run does)"
    );
    dir
}

pub struct Icebreaker {
    pub proc: Proc,
    pub http: SocketAddr,
    pub relay: Option<SocketAddr>,
}

impl Icebreaker {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

/// `icebreaker` on free loopback ports (HTTP and the bundled relay), plus `extra` flags.
pub fn start_icebreaker(extra: &[&str]) -> Icebreaker {
    let (lo, hi) = port_range(400);
    let range = format!("{lo}-{hi}");
    let log = std::env::var("IB_TEST_LOG").unwrap_or_else(|_| "info".into());
    let mut args = vec!["--listen", "127.0.0.1:0", "--log", &log];
    if !extra.contains(&"--no-relay") {
        args.extend_from_slice(&["--relay-listen", "127.0.0.1:0", "--relay-ports", &range]);
    }
    args.extend_from_slice(extra);
    let proc = Proc::ours("icebreaker", &args);
    let line = proc
        .wait_line("icebreaker listening", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("icebreaker did not start:\n{}", proc.output()));
    let http = addr_after(&line, "http=").expect("http address in the log");
    let relay = addr_after(&line, "relay=[");
    Icebreaker { proc, http, relay }
}

/// `icebreaker-peer` against `ib` in `room`, host candidates on 127.0.0.1, JSON events.
pub fn peer_cmd(
    ib: &Icebreaker,
    room: &str,
    name: &str,
    extra_common: &[&str],
    sub: &[&str],
) -> Command {
    let mut cmd = Command::new(bin("icebreaker-peer"));
    cmd.args([
        "--server",
        &ib.ws_url(),
        "--room",
        room,
        "--name",
        name,
        "--bind",
        "127.0.0.1",
        "--json",
    ])
    .args(["--timeout", "40s"])
    .args(extra_common)
    .args(sub);
    cmd
}

/// The JSON events a peer printed, parsed.
pub fn json_events(p: &Proc) -> Vec<serde_json::Value> {
    p.output()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Resident memory of process `pid` in KiB (VmRSS), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's RSS every 50 ms on a thread until dropped; `peak()` is the highest.
pub struct RssWatch {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo peer from coturn's tools on a free loopback port.
pub fn echo_peer() -> (Proc, u16) {
    require("turnutils_peer", "coturn");
    let port = free_udp_port();
    let mut cmd = Command::new("turnutils_peer");
    cmd.args(["-L", "127.0.0.1", "-p", &port.to_string()]);
    let p = Proc::start("turnutils_peer", cmd);
    std::thread::sleep(Duration::from_millis(200));
    (p, port)
}

/// What `turnutils_uclient` reported.
pub struct Uclient {
    pub ok: bool,
    pub sent: u64,
    pub recv: u64,
    pub lost_zero: bool,
    pub output: String,
}

/// Runs `turnutils_uclient` (bounded) against 127.0.0.1:`port`, through the echo peer on
/// `peer_port`, with `extra` flags (credentials, load, `-t`, `-S`).
pub fn uclient(port: u16, peer_port: u16, extra: &[&str]) -> Uclient {
    require("turnutils_uclient", "coturn");
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "turnutils_uclient", "-p", &port.to_string()])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string(), "-c"])
        .args(extra)
        .arg("127.0.0.1");
    let mut p = Proc::start("uclient", cmd);
    let status = p.wait(Duration::from_secs(70)).expect("uclient finished");
    Uclient::read(status.success(), p.output())
}

impl Uclient {
    /// What a finished uclient run reports: its closing totals and whether it saw loss.
    pub fn read(ok: bool, output: String) -> Uclient {
        let totals = output
            .lines()
            .rev()
            .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
            .unwrap_or("");
        let num = |key: &str| -> u64 {
            totals
                .split(key)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Uclient {
            ok,
            sent: num("tot_send_msgs="),
            recv: num("tot_recv_msgs="),
            lost_zero: output.contains("Total lost packets 0 (0.000000%)"),
            output,
        }
    }
}

/// A soak's memory check on RSS samples taken every second: after warm-up (the first
/// third), the median of the last fifth may exceed the median of the fifth right after
/// warm-up by at most 5 %.
pub fn assert_rss_flat(name: &str, samples: &[u64]) {
    fn median(mut v: Vec<u64>) -> u64 {
        v.sort_unstable();
        v[v.len() / 2]
    }
    let len = samples.len();
    assert!(len >= 10, "{name}: too few RSS samples: {samples:?}");
    let (from, to) = (len / 3, len / 3 + len / 5);
    let early = median(samples[from..to.max(from + 1)].to_vec());
    let late = median(samples[len - len / 5..].to_vec());
    let peak = *samples.iter().max().unwrap();
    println!("{name}: RSS after warm-up {early} KiB, at the end {late} KiB, peak {peak} KiB");
    assert!(
        late as f64 <= early as f64 * 1.05,
        "{name} grew from {early} to {late} KiB: {samples:?}"
    );
}

/// Every message `uclient` sent came back, none lost.
pub fn assert_all_echoed(u: &Uclient, what: &str, expect_sent: u64) {
    assert!(u.ok, "{what}: uclient failed:\n{}", u.output);
    assert_eq!(u.sent, expect_sent, "{what}: messages sent\n{}", u.output);
    assert_eq!(
        u.recv, u.sent,
        "{what}: every message echoed back\n{}",
        u.output
    );
    assert!(u.lost_zero, "{what}: uclient reports loss\n{}", u.output);
}
