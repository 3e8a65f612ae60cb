//! `load`: N peers in rooms of K through one server, in this process. Each peer opens
//! data channels to its room mates and pings them over `chat`; the report gives setup
//! time (join → chat channel open) percentiles, the same per phase (signaling round trip,
//! candidates gathered, ICE connected, DTLS connected, channel open: each measured from
//! the start of the join), message round trips, the success rate and failures by cause.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::output::Out;
use crate::peer::{PeerEvent, TrackStats};
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
    /// Every peer also sends VP8 video and Opus audio (the embedded samples) to its room
    /// mates; the report adds what each peer received over --duration: bitrate, packet loss
    /// and jitter (from the RTP that arrived) and round trip (from RTCP receiver reports).
    #[arg(long)]
    pub media: bool,
}

/// What one peer received over the measured window, and the round trip of what it sent.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct PeerMedia {
    name: String,
    /// Remote tracks that delivered packets in the window, and how many were expected.
    tracks: usize,
    tracks_expected: usize,
    video_kbps: f64,
    audio_kbps: f64,
    video_frames: u64,
    packets: u64,
    lost: i64,
    loss_pct: f64,
    /// The worst of its tracks.
    jitter_ms: f64,
    /// The mean over its sending tracks that had a report with a round trip.
    rtt_ms: Option<f64>,
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
    /// `--media`: what a peer received.
    Media(PeerMedia),
}

/// Received tracks of every peer, for the live bitrate on the progress bar.
type Live = Arc<std::sync::Mutex<Vec<Arc<TrackStats>>>>;

/// What `--media` peers share: the embedded samples they loop (read once for all), and
/// every peer's received tracks, for the live bitrate on the progress bar.
#[derive(Clone)]
struct MediaLoad {
    video: Option<Arc<Vec<u8>>>,
    audio: Option<Arc<Vec<u8>>>,
    live: Live,
}

impl MediaLoad {
    async fn play_to(&self, room: &Room, peer: &str) {
        crate::media::play_to(room, peer, &self.video, &self.audio).await;
    }

    /// Keeps a remote track's counters: for this peer's report and the live bitrate.
    fn keep_track(
        &self,
        received: &mut HashMap<(String, String), Arc<TrackStats>>,
        peer: String,
        kind: String,
        stats: Arc<TrackStats>,
    ) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats.clone());
        received.insert((peer, kind), stats);
    }
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
    media: MediaLoad,
) {
    let t0 = Instant::now();
    let tracks = args
        .media
        .then(|| crate::media::factory(true, true, false, opts.name.clone()));
    // (peer, kind) → counters, of every remote track.
    let mut received: HashMap<(String, String), Arc<TrackStats>> = HashMap::new();
    let mut room = match Room::join(&opts, tracks).await {
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
    let mut connected = Vec::new();
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
                Some(Event::Peer(PeerEvent::Connected { peer, .. })) if args.media => connected.push(peer),
                Some(Event::Peer(PeerEvent::Track { peer, kind, stats })) => media.keep_track(&mut received, peer, kind, stats),
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
    // Media starts once this peer is set up, so the setup the report times is measured
    // without our own media in flight.
    for peer in connected.drain(..) {
        media.play_to(&room, &peer).await;
    }
    // Everyone pings together once all peers are set up (or setup time is over).
    let mut go = go;
    let _ = go.wait_for(|g| *g).await;
    let window = Instant::now();
    let at_start: HashMap<(String, String), u64> = received
        .iter()
        .map(|(k, s)| (k.clone(), s.bytes.load(Ordering::Relaxed)))
        .collect();
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
                Some(Event::Peer(PeerEvent::Connected { peer, .. })) if args.media => media.play_to(&room, &peer).await,
                Some(Event::Peer(PeerEvent::Track { peer, kind, stats })) => media.keep_track(&mut received, peer, kind, stats),
                None => break,
                _ => {}
            },
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    if args.media {
        let secs = window.elapsed().as_secs_f64().max(0.001);
        let mut m = PeerMedia {
            name: opts.name.clone(),
            tracks_expected: mates * 2,
            ..Default::default()
        };
        let mut jitter_us = 0u64;
        for ((peer, kind), st) in &received {
            let bytes = st.bytes.load(Ordering::Relaxed)
                - at_start
                    .get(&(peer.clone(), kind.clone()))
                    .copied()
                    .unwrap_or(0);
            let kbps = bytes as f64 * 8.0 / 1000.0 / secs;
            if kind.contains("video") {
                m.video_kbps += kbps;
                m.video_frames += st.frames.load(Ordering::Relaxed);
            } else {
                m.audio_kbps += kbps;
            }
            m.tracks += usize::from(bytes > 0);
            m.packets += st.packets.load(Ordering::Relaxed);
            m.lost += st.lost.load(Ordering::Relaxed);
            jitter_us = jitter_us.max(st.jitter_us.load(Ordering::Relaxed));
        }
        m.jitter_ms = jitter_us as f64 / 1000.0;
        m.loss_pct =
            100.0 * m.lost.max(0) as f64 / (m.packets as f64 + m.lost.max(0) as f64).max(1.0);
        let rtts: Vec<f64> = room
            .remotes
            .lock()
            .await
            .values()
            .flat_map(|r| r.media.iter())
            .filter(|(l, _)| l.sent.rtt_samples.load(Ordering::Relaxed) > 0)
            .map(|(l, _)| l.sent.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0)
            .collect();
        m.rtt_ms = (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64);
        let _ = tx.send(Report::Media(m)).await;
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
    let live: Live = Arc::default();
    let media = MediaLoad {
        video: Some(Arc::new(crate::media::MediaArgs::default_video())),
        audio: Some(Arc::new(crate::media::MediaArgs::default_audio())),
        live: live.clone(),
    };
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
            media.clone(),
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
    let mut media_rows: Vec<PeerMedia> = Vec::new();
    // The second of the ramp a peer joined in (the last window takes any rounding over).
    let window = |s: usize| s.min(seconds - 1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut live_bytes, mut live_at) = (0u64, Instant::now());
    let mut phase_bar: Option<ProgressBar> = None;
    loop {
        let r = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => break },
            _ = tick.tick() => {
                if let Some(b) = &phase_bar {
                    // Bitrate all peers receive, over the last tick.
                    let bytes: u64 = live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .map(|t| t.bytes.load(Ordering::Relaxed))
                        .sum();
                    let secs = live_at.elapsed().as_secs_f64().max(0.001);
                    b.set_position(b.position() + 1);
                    b.set_message(format!(
                        "receiving {:.0} kbit/s in all",
                        bytes.saturating_sub(live_bytes) as f64 * 8.0 / 1000.0 / secs
                    ));
                    (live_bytes, live_at) = (bytes, Instant::now());
                }
                continue;
            }
        };
        match r {
            Report::Setup(d, s) => {
                setups.push(d.as_secs_f64() * 1000.0);
                ramp[window(s)].setups.push(d.as_secs_f64() * 1000.0);
                bar.inc(1);
            }
            Report::Rtt(d) => rtts.push(d.as_secs_f64() * 1000.0),
            Report::Phase(p, d) => phases.entry(p).or_default().push(d.as_secs_f64() * 1000.0),
            Report::Ready(s) => {
                ready += 1;
                ramp[window(s)].ok += 1;
            }
            Report::Failed(c, s) => {
                *failures.entry(c).or_default() += 1;
                finished += 1;
                ramp[window(s)].failed += 1;
            }
            Report::Media(m) => media_rows.push(m),
        }
        if !released && ready + finished == args.peers {
            released = true;
            bar.finish_and_clear();
            let b = if out.json {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(args.duration.as_secs().max(1))
            };
            b.set_style(
                ProgressStyle::with_template(if args.media {
                    "{spinner} media {bar:30} {pos}/{len} s {msg}"
                } else {
                    "{spinner} pinging {bar:30} {pos}/{len} s {msg}"
                })
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            phase_bar = Some(b);
            let _ = go_tx.send(true);
        }
    }
    bar.finish_and_clear();
    if let Some(b) = phase_bar {
        b.finish_and_clear();
    }
    let media_report = args.media.then(|| media_summary(&mut media_rows, ready));
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
    let mut report = report;
    let mut media_ok = true;
    let mut media_text = String::new();
    if let Some((summary, ok, text)) = media_report {
        report["media"] = summary;
        report["ok"] = json!(ok_peers == args.peers && ok);
        media_ok = ok;
        media_text = text;
    }
    out.event(
        &report,
        Some(format!(
            "{} / {} peers ok ({:.0}%), {} channels; setup p50 {:.0} ms p95 {:.0} ms p99 {:.0} ms; rtt p50 {:.2} ms p99 {:.2} ms ({} round trips); failures {:?}\nphases since join, ms p50/p95/p99: {}",
            ok_peers, args.peers, success * 100.0, setups.len(),
            percentile(&setups, 0.5), percentile(&setups, 0.95), percentile(&setups, 0.99),
            percentile(&rtts, 0.5), percentile(&rtts, 0.99), rtts.len(), failures,
            phase_text.join(", "),
        ) + &if seconds > 1 { ramp_text.concat() } else { String::new() }
            + &media_text),
    );
    Ok(ok_peers == args.peers && !rtts.is_empty() && media_ok)
}

/// `--media`'s part of the report: every peer's row, totals and percentiles across peers;
/// ok when each of the `ready` peers received every track it expected.
fn media_summary(rows: &mut [PeerMedia], ready: usize) -> (Value, bool, String) {
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let sorted = |f: &dyn Fn(&PeerMedia) -> Option<f64>| {
        let mut v: Vec<f64> = rows.iter().filter_map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let kbps = sorted(&|m| Some(m.video_kbps + m.audio_kbps));
    let jitter = sorted(&|m| Some(m.jitter_ms));
    let rtt = sorted(&|m| m.rtt_ms);
    let loss = sorted(&|m| Some(m.loss_pct));
    let (packets, lost) = rows
        .iter()
        .fold((0u64, 0i64), |(p, l), m| (p + m.packets, l + m.lost.max(0)));
    let total_kbps: f64 = kbps.iter().sum();
    let tracks: usize = rows.iter().map(|m| m.tracks).sum();
    let expected: usize = rows.iter().map(|m| m.tracks_expected).sum();
    let ok = rows.len() == ready
        && ready > 0
        && rows
            .iter()
            .all(|m| m.tracks == m.tracks_expected && m.video_frames > 0);
    let loss_pct = 100.0 * lost as f64 / (packets as f64 + lost as f64).max(1.0);
    let p = |v: &[f64], q: f64| round(percentile(v, q));
    let summary = json!({
        "ok": ok,
        "tracks_received": tracks, "tracks_expected": expected,
        "total_kbps": round(total_kbps),
        "kbps_per_peer_p50": p(&kbps, 0.5), "kbps_per_peer_min": round(kbps.first().copied().unwrap_or(0.0)),
        "packets": packets, "lost": lost, "loss_pct": round(loss_pct), "loss_pct_worst_peer": round(loss.last().copied().unwrap_or(0.0)),
        "jitter_ms_p50": p(&jitter, 0.5), "jitter_ms_p99": p(&jitter, 0.99),
        "rtt_ms_p50": p(&rtt, 0.5), "rtt_ms_p99": p(&rtt, 0.99), "rtt_peers": rtt.len(),
        "peers": rows,
    });
    let text = format!(
        "\nmedia: {tracks}/{expected} tracks, {total_kbps:.0} kbit/s in all (per peer p50 {:.0}, min {:.0}); loss {loss_pct:.2}% ({lost} of {}, worst peer {:.2}%); jitter p50 {:.1} ms p99 {:.1} ms; rtt p50 {:.1} ms p99 {:.1} ms ({} peers with RTCP round trips)",
        percentile(&kbps, 0.5), kbps.first().copied().unwrap_or(0.0), packets + lost as u64,
        loss.last().copied().unwrap_or(0.0), percentile(&jitter, 0.5), percentile(&jitter, 0.99),
        percentile(&rtt, 0.5), percentile(&rtt, 0.99), rtt.len(),
    );
    (summary, ok, text)
}
