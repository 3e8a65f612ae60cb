//! Icebreaker signaling protocol v1, with no I/O: one JSON object per WebSocket text frame,
//! tagged by `type`. This crate is the one definition every side uses: the server
//! (`icebreaker`), the headless peer (`icebreaker-peer`) and the load client
//! (`icebreaker-sigload`). `docs/protocol.md` is the human spec, with examples.
//!
//! Both directions serialize with serde and parse with [`ClientMessage::parse`] /
//! [`ServerMessage::parse`]. Messages borrow from the frame they came in: a signal's
//! `data` is a [`RawValue`], opaque to the server and forwarded byte for byte.
//!
//! Adding a message type means one enum variant here (and its handler where it is
//! received); the field set of the flat wire structs says what may appear on the wire.

#![warn(missing_docs, unreachable_pub)]

pub mod channel;
mod client;
mod server;
mod signal;

pub use channel::MediaState;
pub use client::ClientMessage;
pub use server::{PeerInfo, ServerMessage};
pub use signal::{IceCandidate, SdpType, SessionDescription, SignalData};

use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;

/// Largest `meta` a peer may attach to itself (it is copied to everyone in the room).
pub const MAX_META_BYTES: usize = 1024;

/// One entry of `ice_servers` in `joined`, shaped like the browser's `RTCIceServer`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (REST credentials: `expiry:label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl IceServer {
    /// Parses the `ice_servers` list of a `joined` message.
    pub fn list(raw: &RawValue) -> Result<Vec<IceServer>, ParseError> {
        serde_json::from_str(raw.get()).map_err(|e| ParseError(format!("bad `ice_servers`: {e}")))
    }
}

/// Why a peer left a room (`peer-left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// It sent `leave` or closed its WebSocket.
    Left,
    /// Its connection dropped and it did not resume within the grace period.
    Timeout,
    /// The server removed it (its resume failed, or an operator).
    Kicked,
    /// A reason this version does not know (a newer server).
    #[serde(other)]
    Other,
}

impl LeaveReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Kicked => "kicked",
            LeaveReason::Other => "other",
        }
    }
}

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not a protocol v1 message, or a field is missing or wrong.
    BadMessage,
    /// Over the message size limit.
    TooLarge,
    /// Too many messages or joins; slow down.
    RateLimited,
    /// The join token is missing, invalid or for another room.
    Unauthorized,
    /// The room holds its maximum number of peers.
    RoomFull,
    /// `signal` to a peer that is not in the room.
    UnknownPeer,
    /// The message needs a joined room.
    NotJoined,
    /// `resume` cannot be served: start over with `join`.
    ResumeFailed,
    /// The server cannot do this right now (a cluster node that lost its Redis): try
    /// again in a few seconds.
    Unavailable,
    /// A code this version does not know (a newer server).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::UnknownPeer => "unknown-peer",
            ErrorCode::NotJoined => "not-joined",
            ErrorCode::ResumeFailed => "resume-failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Other => "other",
        }
    }
}

/// An error that goes back to the client: a protocol code and words a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    /// What kind of error.
    pub code: ErrorCode,
    /// A sentence for people.
    pub message: String,
}

impl ProtocolError {
    /// An error with its code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// A server message a client cannot read, in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Room names: 1–64 of `[A-Za-z0-9_-]` (safe in URLs, logs and Redis keys).
pub fn valid_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Serializes a message into a WebSocket text frame's payload (serde_json writes UTF-8).
fn to_json<T: Serialize>(m: &T, hint: usize) -> Vec<u8> {
    // Sized up front: a signal is its `data` plus a few dozen bytes, and growing the
    // buffer while serializing would copy it several times.
    let mut out = Vec::with_capacity(hint);
    serde_json::to_writer(&mut out, m).expect("protocol messages always serialize");
    out
}

#[cfg(test)]
mod tests;
