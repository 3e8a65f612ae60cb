//! `pointer`: a synthetic pointer path over the `pointer` channel (unordered, no
//! retransmits), `{"from":"<name>","x":0..1,"y":0..1,"ts":<ms>}`, and a report of what
//! arrives: positions per second and end-to-end delay from `ts` (same machine clock).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use webrtc::data_channel::DataChannel;

use crate::output::Out;
use crate::peer::PeerEvent;
use crate::room::{event_json, now_ms, Event, Options, Room};

/// Options of the `pointer` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct PointerArgs {
    /// Positions per second.
    #[arg(long, default_value_t = 60.0)]
    pub rate: f64,
    /// How long to send once a channel is open.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Succeed only if at least N positions arrived (else: any at all).
    #[arg(long)]
    pub expect: Option<usize>,
    /// The global --timeout (filled in by main).
    #[arg(skip)]
    pub timeout: Option<Duration>,
}

/// A Lissajous path through the unit square.
pub fn position(t: f64) -> (f64, f64) {
    (0.5 + 0.4 * (t * 1.3).sin(), 0.5 + 0.4 * (t * 2.1).sin())
}

/// The value at fraction `p` (0 to 1) of an ascending `sorted` slice, nearest rank; 0
/// when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends the path to every peer for `--duration` and reports rate and delay; true when
/// positions arrived (at least `--expect`) and all lay in the unit square.
pub async fn run(opts: Options, args: PointerArgs, out: Out) -> anyhow::Result<bool> {
    let mut room = Room::join(&opts, None).await?;
    let mut chans: HashMap<String, Arc<dyn DataChannel>> = HashMap::new();
    let mut delays: Vec<f64> = Vec::new();
    let mut in_range = true;
    let (mut sent, t0) = (0u64, Instant::now());
    let mut started: Option<Instant> = None;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.clamp(1.0, 1000.0)));
    let deadline = tokio::time::Instant::now() + args.timeout.unwrap_or(Duration::from_secs(3600));
    loop {
        if started.is_some_and(|s| s.elapsed() >= args.duration) {
            break;
        }
        tokio::select! {
            ev = room.events.recv() => {
                let Some(ev) = ev else { break };
                match &ev {
                    Event::Peer(PeerEvent::ChannelOpen { peer, label, dc }) if label == "pointer" => {
                        chans.insert(peer.clone(), dc.clone());
                        started.get_or_insert_with(Instant::now);
                    }
                    Event::Peer(PeerEvent::Message { label, text, .. }) if label == "pointer" => {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                            let (x, y, ts) = (v["x"].as_f64().unwrap_or(-1.0), v["y"].as_f64().unwrap_or(-1.0), v["ts"].as_u64().unwrap_or(0));
                            in_range &= (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y);
                            delays.push(now_ms().saturating_sub(ts) as f64);
                        }
                        continue;
                    }
                    Event::PeerLeft { peer, .. } => { chans.remove(peer); }
                    _ => {}
                }
                out.event(&event_json(&ev), Some(format!("* {}", event_json(&ev))));
            }
            _ = tick.tick() => {
                if chans.is_empty() { continue; }
                let (x, y) = position(t0.elapsed().as_secs_f64());
                let msg = json!({"from": opts.name, "x": x, "y": y, "ts": now_ms()}).to_string();
                for dc in chans.values() {
                    if dc.send_text(&msg).await.is_ok() {
                        sent += 1;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let secs = started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-3);
    let mut sorted = delays.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let ok = in_range && !delays.is_empty() && args.expect.is_none_or(|n| delays.len() >= n);
    let report = json!({
        "event": "pointer-report", "ok": ok, "sent": sent, "received": delays.len(),
        "positions_per_s": (delays.len() as f64 / secs * 10.0).round() / 10.0,
        "delay_ms_p50": percentile(&sorted, 0.5), "delay_ms_p99": percentile(&sorted, 0.99),
        "in_range": in_range,
    });
    out.event(
        &report,
        Some(format!(
            "sent {sent}, received {} ({:.1}/s), delay p50 {} ms p99 {} ms",
            delays.len(),
            delays.len() as f64 / secs,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99)
        )),
    );
    // Let the other side finish its own run before we close the channel under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    room.close().await;
    Ok(ok)
}
