//! `icebreaker-peer`: a headless WebRTC peer (webrtc-rs) speaking Icebreaker's protocol v1.
//! The library half lets tests and the load generator reuse the same negotiation code.

pub mod chat;
pub mod doctor;
pub mod load;
pub mod media;
pub mod output;
pub mod peer;
pub mod pointer;
pub mod room;
pub mod signaling;
