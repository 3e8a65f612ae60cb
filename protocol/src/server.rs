//! Server → client messages.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{to_json, ErrorCode, LeaveReason, ParseError};

/// A member of the room, as `joined`, `resumed` and `peer-joined` describe it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo<'a> {
    /// Its peer id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// What it attached to itself when it joined.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub meta: Option<&'a RawValue>,
    /// Whether the *recipient* is the polite side towards this peer (perfect negotiation:
    /// the peer already in the room is polite).
    pub polite: bool,
}

/// Server → client. Every message carries `seq`, increasing per recipient, for resume
/// (0 for the few sent before joining).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage<'a> {
    /// The answer to `join`.
    Joined {
        /// The new peer id.
        id: Cow<'a, str>,
        /// The room joined.
        room: Cow<'a, str>,
        /// Who was there already.
        peers: Vec<PeerInfo<'a>>,
        /// STUN/TURN servers and credentials (a list of [`crate::IceServer`]).
        ice_servers: &'a RawValue,
        /// Secret for `resume`.
        resume_token: Cow<'a, str>,
        /// Sequence number.
        seq: u64,
    },
    /// Someone entered the room.
    PeerJoined {
        /// Its peer id.
        id: Cow<'a, str>,
        /// What it attached to itself.
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a RawValue>,
        /// Whether the recipient is the polite side towards it.
        polite: bool,
        /// Sequence number.
        seq: u64,
    },
    /// Someone left the room.
    PeerLeft {
        /// Its peer id.
        id: Cow<'a, str>,
        /// Why.
        reason: LeaveReason,
        /// Sequence number.
        seq: u64,
    },
    /// A signal from another peer, `data` byte for byte as it sent it.
    Signal {
        /// The sender's peer id.
        from: Cow<'a, str>,
        /// What the sender put in `data`.
        data: &'a RawValue,
        /// Sequence number.
        seq: u64,
    },
    /// The answer to a successful `resume`; the missed messages follow.
    Resumed {
        /// The peer id, as before.
        id: Cow<'a, str>,
        /// Who is in the room now.
        peers: Vec<PeerInfo<'a>>,
        /// The `last_seq` the client sent: what follows is what it missed.
        seq: u64,
    },
    /// The answer to `ping`.
    Pong {
        /// Sequence number.
        seq: u64,
    },
    /// Something the client sent was refused.
    Error {
        /// What kind of error.
        code: ErrorCode,
        /// A sentence for people.
        message: Cow<'a, str>,
        /// Sequence number.
        seq: u64,
    },
}

/// Every field any server message may carry, read flat (see the client side's `Wire`).
/// Unknown fields are ignored: a newer server may add some.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    peers: Option<Vec<PeerInfo<'a>>>,
    #[serde(borrow)]
    ice_servers: Option<&'a RawValue>,
    #[serde(borrow)]
    resume_token: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    polite: Option<bool>,
    reason: Option<LeaveReason>,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    code: Option<ErrorCode>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

impl<'a> ServerMessage<'a> {
    /// The `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::PeerJoined { .. } => "peer-joined",
            ServerMessage::PeerLeft { .. } => "peer-left",
            ServerMessage::Signal { .. } => "signal",
            ServerMessage::Resumed { .. } => "resumed",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// The message's `seq`.
    pub fn seq(&self) -> u64 {
        match self {
            ServerMessage::Joined { seq, .. }
            | ServerMessage::PeerJoined { seq, .. }
            | ServerMessage::PeerLeft { seq, .. }
            | ServerMessage::Signal { seq, .. }
            | ServerMessage::Resumed { seq, .. }
            | ServerMessage::Pong { seq }
            | ServerMessage::Error { seq, .. } => *seq,
        }
    }

    /// The message as a WebSocket text frame's payload.
    pub fn to_json(&self) -> Vec<u8> {
        let hint = match self {
            ServerMessage::Signal { data, .. } => data.get().len() + 96,
            _ => 256,
        };
        to_json(self, hint)
    }

    /// The message as [`ServerMessage::to_json`] writes it, but open at the end: without
    /// its `seq` and closing brace (`{"type":"signal",…,"data":{…}`). A cluster node
    /// builds a message before the peer's seq is known; whoever assigns the seq closes it
    /// with `,"seq":N}`. `seq` is the last field of every variant, so this is a cut.
    pub fn to_json_unsequenced(&self) -> Vec<u8> {
        let mut json = self.to_json();
        let tail = format!(",\"seq\":{}}}", self.seq());
        debug_assert!(json.ends_with(tail.as_bytes()), "seq is the last field");
        json.truncate(json.len().saturating_sub(tail.len()));
        json
    }

    /// Parses a server frame (a client's side). Fields a message needs must be there and
    /// well-typed; unknown fields are ignored.
    pub fn parse(text: &'a str) -> Result<ServerMessage<'a>, ParseError> {
        let w: Wire<'a> = serde_json::from_str(text)
            .map_err(|e| ParseError(format!("not a protocol v1 server message: {e}")))?;
        let kind = w.kind.ok_or_else(|| ParseError("missing `type`".into()))?;
        fn need<T>(v: Option<T>, field: &str, kind: &str) -> Result<T, ParseError> {
            v.ok_or_else(|| ParseError(format!("`{kind}` without `{field}`")))
        }
        let k = &*kind;
        let seq = need(w.seq, "seq", k)?;
        Ok(match k {
            "joined" => ServerMessage::Joined {
                id: need(w.id, "id", k)?,
                room: need(w.room, "room", k)?,
                peers: need(w.peers, "peers", k)?,
                ice_servers: need(w.ice_servers, "ice_servers", k)?,
                resume_token: need(w.resume_token, "resume_token", k)?,
                seq,
            },
            "peer-joined" => ServerMessage::PeerJoined {
                id: need(w.id, "id", k)?,
                meta: w.meta,
                polite: need(w.polite, "polite", k)?,
                seq,
            },
            "peer-left" => ServerMessage::PeerLeft {
                id: need(w.id, "id", k)?,
                reason: need(w.reason, "reason", k)?,
                seq,
            },
            "signal" => ServerMessage::Signal {
                from: need(w.from, "from", k)?,
                data: need(w.data, "data", k)?,
                seq,
            },
            "resumed" => ServerMessage::Resumed {
                id: need(w.id, "id", k)?,
                peers: need(w.peers, "peers", k)?,
                seq,
            },
            "pong" => ServerMessage::Pong { seq },
            "error" => ServerMessage::Error {
                code: need(w.code, "code", k)?,
                message: w.message.unwrap_or_default(),
                seq,
            },
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ParseError(format!("unknown message type {shown:?}")));
            }
        })
    }
}
