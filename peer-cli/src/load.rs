//! `load`: N peers in rooms of K through one server, in this process. Each peer opens
//! data channels to its room mates and pings them over `chat`; the report gives setup
//! time (join → chat channel open) percentiles, the same per phase (signaling round trip,
//! candidates gathered, ICE connected, DTLS connected, channel open: each measured from
//! the start of the join), message round trips, the success rate and failures by cause.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::output::Out;
use crate::peer::PeerEvent;
use crate::pointer::percentile;
use crate::room::{Event, Options, Room};

/// Options of the `load` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Peers to start in all (at least 2).
    #[arg(long, default_value_t = 20)]
    pub peers: usize,
    /// Peers per room (at least 2; the last room may have fewer).
    #[arg(long, default_value_t = 2)]
    pub room_size: usize,
    /// How long to ping once everyone is set up.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Interval between pings from each peer to each room mate.
    #[arg(long, default_value = "100ms", value_parser = crate::parse_duration)]
    pub ping_interval: Duration,
    /// Time allowed for each peer's setup (all its channels open).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    pub setup_timeout: Duration,
    /// Joins per second (a ramp: peer i starts at i / rate s). The report breaks setup down
    /// by the second a peer joined in, so a rising failure rate or setup time shows where a
    /// deployment stops keeping up. Setup counts from a peer's own join, so at low rates it
    /// includes waiting for its room mates to arrive.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
}

#[derive(Debug)]
enum Report {
    /// Join → chat open towards one room mate; the second its peer joined in.
    Setup(Duration, usize),
    /// Join → a setup phase reached (per room mate; `joined` once per peer).
    Phase(&'static str, Duration),
    Rtt(Duration),
    /// A peer is set up; the second it joined in.
    Ready(usize),
    /// A peer failed, and why; the second it joined in.
    Failed(&'static str, usize),
}

/// The peers that joined in one second of the ramp.
#[derive(Clone, Default)]
struct Window {
    ok: usize,
    failed: usize,
    setups: Vec<f64>,
}

/// One simulated peer: join, wait for a chat channel to every room mate, then ping them.
async fn one_peer(
    opts: Options,
    mates: usize,
    args: Arc<LoadArgs>,
    tx: mpsc::Sender<Report>,
    go: tokio::sync::watch::Receiver<bool>,
    second: usize,
) {
    let t0 = Instant::now();
    let mut room = match Room::join(&opts, None).await {
        Ok(r) => r,
        Err(_) => {
            let _ = tx.send(Report::Failed("signaling", second)).await;
            return;
        }
    };
    let _ = tx.send(Report::Phase("joined", t0.elapsed())).await;
    let mut chans = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let setup_deadline = tokio::time::Instant::now() + args.setup_timeout;
    let mut failed = None;
    while chans.len() < mates {
        tokio::select! {
            ev = room.events.recv() => match ev {
                Some(Event::Peer(PeerEvent::ChannelOpen { peer, label, dc })) if label == "chat" => {
                    let _ = tx.send(Report::Setup(t0.elapsed(), second)).await;
                    chans.insert(peer, dc);
                }
                Some(Event::Peer(PeerEvent::Phase { peer, phase })) => {
                    if seen.insert((peer, phase)) {
                        let _ = tx.send(Report::Phase(phase.as_str(), t0.elapsed())).await;
                    }
                }
                Some(Event::Peer(PeerEvent::Failed { .. })) => { failed = Some("ice-failed"); break; }
                Some(Event::ServerError { .. }) => { failed = Some("server-error"); break; }
                Some(Event::SignalingFailed(_)) | None => { failed = Some("signaling"); break; }
                Some(_) => {}
            },
            _ = tokio::time::sleep_until(setup_deadline) => { failed = Some("setup-timeout"); break; }
        }
    }
    if let Some(cause) = failed {
        let _ = tx.send(Report::Failed(cause, second)).await;
        room.close().await;
        return;
    }
    let _ = tx.send(Report::Ready(second)).await;
    // Everyone pings together once all peers are set up (or setup time is over).
    let mut go = go;
    let _ = go.wait_for(|g| *g).await;
    let end = tokio::time::Instant::now() + args.duration;
    let mut tick = tokio::time::interval(args.ping_interval);
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for dc in chans.values() {
                    n += 1;
                    sent.insert(n, Instant::now());
                    let _ = dc.send_text(&json!({"from": opts.name, "text": "ping", "ping": n}).to_string()).await;
                }
            }
            ev = room.events.recv() => match ev {
                Some(Event::Peer(PeerEvent::Message { peer, label, text })) if label == "chat" => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(p) = v["ping"].as_u64() {
                        if let Some(dc) = chans.get(&peer) {
                            let _ = dc.send_text(&json!({"from": opts.name, "text": "pong", "pong": p}).to_string()).await;
                        }
                    } else if let Some(p) = v["pong"].as_u64() {
                        if let Some(t) = sent.remove(&p) {
                            let _ = tx.send(Report::Rtt(t.elapsed())).await;
                        }
                    }
                }
                None => break,
                _ => {}
            },
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    // Let the last pongs arrive before closing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    room.close().await;
}

/// Runs the load test and prints its report; true when every peer set up in time.
pub async fn run(base: Options, args: LoadArgs, out: Out) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.peers >= 2 && args.room_size >= 2,
        "need --peers >= 2 and --room-size >= 2"
    );
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of joins per second"
    );
    let args = Arc::new(args);
    let run_id: u32 = rand::random();
    let (tx, mut rx) = mpsc::channel::<Report>(65536);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let expected_channels: usize = (0..args.peers)
        .map(|i| {
            let room_start = i / args.room_size * args.room_size;
            (args.peers - room_start).min(args.room_size) - 1
        })
        .sum();
    let bar = if out.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(expected_channels as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} setup {bar:30} {pos}/{len} channels open ({elapsed}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    for i in 0..args.peers {
        let room_index = i / args.room_size;
        let room_start = room_index * args.room_size;
        let mates = (args.peers - room_start).min(args.room_size) - 1;
        let opts = Options {
            room: format!("load-{run_id:08x}-{room_index}"),
            name: format!("load-{i}"),
            ..base.clone()
        };
        // The ramp: on schedule from the start, whatever the spawning costs.
        let at = Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until((started + at).into()).await;
        tokio::spawn(one_peer(
            opts,
            mates,
            args.clone(),
            tx.clone(),
            go_rx.clone(),
            at.as_secs() as usize,
        ));
    }
    drop(tx);
    let (mut setups, mut rtts) = (Vec::new(), Vec::new());
    let mut phases: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut failures: HashMap<&'static str, usize> = HashMap::new();
    let (mut ready, mut finished) = (0usize, 0usize);
    let seconds = ((args.peers.saturating_sub(1)) as f64 / args.rate) as usize + 1;
    let mut ramp = vec![Window::default(); seconds];
    let mut released = false;
    while let Some(r) = rx.recv().await {
        match r {
            Report::Setup(d, s) => {
                setups.push(d.as_secs_f64() * 1000.0);
                ramp[s.min(seconds - 1)]
                    .setups
                    .push(d.as_secs_f64() * 1000.0);
                bar.inc(1);
            }
            Report::Rtt(d) => rtts.push(d.as_secs_f64() * 1000.0),
            Report::Phase(p, d) => phases.entry(p).or_default().push(d.as_secs_f64() * 1000.0),
            Report::Ready(s) => {
                ready += 1;
                ramp[s.min(seconds - 1)].ok += 1;
            }
            Report::Failed(c, s) => {
                *failures.entry(c).or_default() += 1;
                finished += 1;
                ramp[s.min(seconds - 1)].failed += 1;
            }
        }
        if !released && ready + finished == args.peers {
            released = true;
            bar.finish_with_message("pinging");
            let _ = go_tx.send(true);
        }
    }
    bar.finish_and_clear();
    setups.sort_by(|a, b| a.total_cmp(b));
    rtts.sort_by(|a, b| a.total_cmp(b));
    let ok_peers = ready;
    let success = ok_peers as f64 / args.peers as f64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    // In setup order; `channel_open` is the setup time itself.
    phases.insert("channel_open", setups.clone());
    let order = [
        "joined",
        "gathered",
        "ice_connected",
        "dtls_connected",
        "channel_open",
    ];
    let mut phase_json = serde_json::Map::new();
    let mut phase_text = Vec::new();
    for name in order {
        let mut v = phases.remove(name).unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        let (p50, p95, p99) = (
            percentile(&v, 0.5),
            percentile(&v, 0.95),
            percentile(&v, 0.99),
        );
        phase_json.insert(
            name.into(),
            json!({"n": v.len(), "p50": round(p50), "p95": round(p95), "p99": round(p99)}),
        );
        phase_text.push(format!("{name} {p50:.0}/{p95:.0}/{p99:.0}"));
    }
    let mut ramp_json = Vec::new();
    let mut ramp_text = Vec::new();
    for (second, w) in ramp.iter_mut().enumerate() {
        w.setups.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&w.setups, 0.5), percentile(&w.setups, 0.99));
        ramp_json.push(json!({
            "second": second, "joined": w.ok + w.failed, "ok": w.ok, "failed": w.failed,
            "setup_ms_p50": round(p50), "setup_ms_p99": round(p99),
        }));
        ramp_text.push(format!(
            "\n  joined in second {second}: {} ok, {} failed, setup p50 {p50:.0} ms p99 {p99:.0} ms",
            w.ok, w.failed
        ));
    }
    let report = json!({
        "event": "load-report",
        "rate": args.rate, "ramp": ramp_json,
        "ok": ok_peers == args.peers,
        "peers": args.peers, "room_size": args.room_size,
        "success_rate": success,
        "channels_open": setups.len(), "channels_expected": expected_channels,
        "setup_ms_p50": round(percentile(&setups, 0.5)), "setup_ms_p95": round(percentile(&setups, 0.95)), "setup_ms_p99": round(percentile(&setups, 0.99)),
        "rtt_ms_p50": round(percentile(&rtts, 0.5)), "rtt_ms_p99": round(percentile(&rtts, 0.99)), "round_trips": rtts.len(),
        "phases_ms": phase_json,
        "failures": failures,
        "wall_s": round(started.elapsed().as_secs_f64()),
    });
    out.event(
        &report,
        Some(format!(
            "{} / {} peers ok ({:.0}%), {} channels; setup p50 {:.0} ms p95 {:.0} ms p99 {:.0} ms; rtt p50 {:.2} ms p99 {:.2} ms ({} round trips); failures {:?}\nphases since join, ms p50/p95/p99: {}",
            ok_peers, args.peers, success * 100.0, setups.len(),
            percentile(&setups, 0.5), percentile(&setups, 0.95), percentile(&setups, 0.99),
            percentile(&rtts, 0.5), percentile(&rtts, 0.99), rtts.len(), failures,
            phase_text.join(", "),
        ) + &if seconds > 1 { ramp_text.concat() } else { String::new() }),
    );
    Ok(ok_peers == args.peers && !rtts.is_empty())
}
