//! `chat`: text over the `chat` data channel (ordered, reliable). Frames are
//! `{"from":"<name>","text":"…","ts":<ms>}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncBufReadExt;
use webrtc::data_channel::DataChannel;

use crate::output::Out;
use crate::peer::PeerEvent;
use crate::room::{event_json, now_ms, Event, Options, Room};

/// Options of the `chat` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// Send TEXT once each peer's chat channel opens (repeatable).
    #[arg(long)]
    pub send: Vec<String>,
    /// Exit 0 after N messages are received.
    #[arg(long)]
    pub expect: Option<usize>,
    /// The global --timeout (filled in by main).
    #[arg(skip)]
    pub timeout: Option<Duration>,
    /// Test hook: cut the signaling TCP connection after this long, then resume.
    #[arg(long, hide = true, value_parser = crate::parse_duration)]
    pub drop_signaling_after: Option<Duration>,
}

/// Joins, chats with every peer (stdin lines and `--send`) and prints what arrives; true
/// once `--expect` messages arrived, false on timeout or a failed signaling session.
pub async fn run(opts: Options, args: ChatArgs, out: Out) -> anyhow::Result<bool> {
    let mut room = Room::join(&opts, None).await?;
    let mut chans: HashMap<String, Arc<dyn DataChannel>> = HashMap::new();
    let mut received = 0usize;
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = r.next_line().await {
            if line_tx.send(l).await.is_err() {
                break;
            }
        }
    });
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let drop_at = args
        .drop_signaling_after
        .map(|t| tokio::time::Instant::now() + t);
    let mut dropped = false;
    let frame = |text: &str| json!({"from": opts.name, "text": text, "ts": now_ms()}).to_string();
    let ok = loop {
        let sleep_until = |d: Option<tokio::time::Instant>| async move {
            match d {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = room.events.recv() => {
                let Some(ev) = ev else { break false };
                match &ev {
                    Event::Peer(PeerEvent::ChannelOpen { peer, label, dc }) if label == "chat" => {
                        out.event(&event_json(&ev), Some(format!("* chat open with {peer}")));
                        for s in &args.send {
                            let _ = dc.send_text(&frame(s)).await;
                        }
                        chans.insert(peer.clone(), dc.clone());
                        continue;
                    }
                    Event::Peer(PeerEvent::Message { peer, label, text }) if label == "chat" => {
                        let v: serde_json::Value = serde_json::from_str(text).unwrap_or(json!({"text": text}));
                        let from = v["from"].as_str().unwrap_or(peer).to_string();
                        let body = v["text"].as_str().unwrap_or("").to_string();
                        received += 1;
                        out.event(&json!({"event": "chat", "peer": peer, "from": from, "text": body, "ts": v["ts"]}), Some(format!("{from}: {body}")));
                        if args.expect.is_some_and(|n| received >= n) {
                            break true;
                        }
                        continue;
                    }
                    Event::PeerLeft { peer, .. } => {
                        chans.remove(peer);
                    }
                    Event::SignalingFailed(_) => {
                        out.event(&event_json(&ev), Some(format!("{ev:?}")));
                        break false;
                    }
                    _ => {}
                }
                out.event(&event_json(&ev), Some(format!("* {}", event_json(&ev))));
            }
            l = lines.recv() => {
                if let Some(l) = l {
                    for dc in chans.values() {
                        let _ = dc.send_text(&frame(&l)).await;
                    }
                }
            }
            _ = sleep_until(if dropped { None } else { drop_at }) => {
                dropped = true;
                room.sig.drop_connection().await;
            }
            _ = sleep_until(deadline) => {
                out.event(&json!({"event": "timeout", "received": received}), Some(format!("timed out after {received} messages")));
                break false;
            }
        }
    };
    // Linger so our own last messages and the others' still-arriving channels settle.
    let linger = tokio::time::sleep(Duration::from_millis(if ok { 1500 } else { 0 }));
    tokio::pin!(linger);
    loop {
        tokio::select! {
            _ = &mut linger => break,
            ev = room.events.recv() => {
                if let Some(Event::Peer(PeerEvent::ChannelOpen { label, dc, .. })) = &ev {
                    if label == "chat" {
                        for s in &args.send {
                            let _ = dc.send_text(&frame(s)).await;
                        }
                    }
                }
                if ev.is_none() { break; }
            }
        }
    }
    out.event(
        &json!({"event": "done", "ok": ok, "received": received}),
        None,
    );
    room.close().await;
    Ok(ok)
}
