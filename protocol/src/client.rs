//! Client → server messages.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{to_json, ErrorCode, ProtocolError};

/// Client → server. Parsed messages borrow from the frame they came in (a signal is
/// forwarded before the frame's buffer is reused), so forwarding one allocates nothing for
/// the input.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage<'a> {
    /// Enter a room; answered by `joined` (or an `error`).
    Join {
        /// 1–64 of `[A-Za-z0-9_-]`.
        room: Cow<'a, str>,
        /// A join token (JWT) when the server requires one.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<Cow<'a, str>>,
        /// A JSON object of at most 1 KiB shown to the other peers.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a RawValue>,
    },
    /// To one peer of the room; `data` is opaque to the server and forwarded byte for byte.
    Signal {
        /// The recipient's peer id.
        to: Cow<'a, str>,
        /// SDP, a candidate, or anything else the peers agree on.
        data: &'a RawValue,
    },
    /// Leave the room (the connection stays open).
    Leave,
    /// Answered by `pong`. `last_seq`: the highest seq the client has processed; the server
    /// then keeps only what comes after it for a resume (and stops trusting WebSocket pongs
    /// for that).
    Ping {
        /// Acknowledges every message up to this seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// Take an identity back after a dropped connection; answered by `resumed` and every
    /// message after `last_seq`, or `error` `resume-failed`.
    Resume {
        /// The peer id `joined` gave.
        id: Cow<'a, str>,
        /// The `resume_token` `joined` gave.
        token: Cow<'a, str>,
        /// The highest seq the client has processed.
        last_seq: u64,
    },
}

/// Every field any client message may carry. serde cannot keep a `RawValue` (the opaque
/// `data`) inside an internally tagged enum, so frames are read flat, then checked per type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    last_seq: Option<u64>,
}

impl<'a> ClientMessage<'a> {
    /// The `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Signal { .. } => "signal",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Resume { .. } => "resume",
        }
    }

    /// Parses a client frame (the server's side). Unknown fields are refused; the error is
    /// `bad-message` with a sentence saying what is wrong.
    pub fn parse(text: &'a str) -> Result<ClientMessage<'a>, ProtocolError> {
        let bad = |m: String| ProtocolError::new(ErrorCode::BadMessage, m);
        let w: Wire<'a> = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a protocol v1 message: {e}")))?;
        fn need<T>(v: Option<T>, field: &str, kind: &str) -> Result<T, ProtocolError> {
            v.ok_or_else(|| {
                ProtocolError::new(ErrorCode::BadMessage, format!("`{kind}` needs `{field}`"))
            })
        }
        let kind = w.kind.ok_or_else(|| bad("missing `type`".into()))?;
        Ok(match &*kind {
            "join" => ClientMessage::Join {
                room: need(w.room, "room", "join")?,
                token: w.token,
                meta: w.meta,
            },
            "signal" => ClientMessage::Signal {
                to: need(w.to, "to", "signal")?,
                data: need(w.data, "data", "signal")?,
            },
            "leave" => ClientMessage::Leave,
            "ping" => ClientMessage::Ping {
                last_seq: w.last_seq,
            },
            "resume" => ClientMessage::Resume {
                id: need(w.id, "id", "resume")?,
                token: need(w.token, "token", "resume")?,
                last_seq: need(w.last_seq, "last_seq", "resume")?,
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(bad(format!("unknown message type {shown:?}")));
            }
        })
    }

    /// The message as a WebSocket text frame's payload.
    pub fn to_json(&self) -> Vec<u8> {
        let hint = match self {
            ClientMessage::Signal { data, .. } => data.get().len() + 64,
            _ => 128,
        };
        to_json(self, hint)
    }

    /// [`Self::to_json`] as a `String` (what WebSocket client libraries take).
    pub fn to_text(&self) -> String {
        String::from_utf8(self.to_json()).expect("serde_json writes UTF-8")
    }
}
