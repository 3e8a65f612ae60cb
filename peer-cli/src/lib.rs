//! `icebreaker-peer`: a headless WebRTC peer (webrtc-rs) speaking Icebreaker's protocol v1.
//! The library half lets tests and the load generator reuse the same negotiation code.

#![warn(missing_docs, unreachable_pub)]

pub mod chat;
pub mod doctor;
pub mod load;
pub mod media;
pub mod output;
pub mod peer;
pub mod pointer;
pub mod room;
pub mod signaling;
pub mod tls;

use std::time::Duration;

/// `30s`, `500ms`, `2m` (humantime's syntax), or a bare number of seconds, as the
/// servers' flags take them; the value parser of every duration flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("bad duration {s:?} (e.g. 30s, 500ms, 2m)");
    match s.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| bad()),
        Err(_) => humantime::parse_duration(s).map_err(|_| bad()),
    }
}
