//! Protocol v1: one JSON object per WebSocket text frame, tagged by `type`.
//! These names are a public interface (browsers and third-party clients depend on them);
//! `docs/protocol.md` documents them with examples.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Client → server. A signal borrows from the frame it came in (it is forwarded before
/// the frame's buffer is reused), so forwarding one allocates nothing for the input.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    Join {
        room: String,
        token: Option<String>,
        meta: Option<Box<RawValue>>,
    },
    /// `data` is opaque to the server and forwarded byte for byte.
    Signal {
        to: Cow<'a, str>,
        data: &'a RawValue,
    },
    Leave,
    /// `last_seq`: the highest seq the client has processed; the server then keeps only
    /// what comes after it for a resume (and stops trusting WebSocket pongs for that).
    Ping {
        last_seq: Option<u64>,
    },
    Resume {
        id: String,
        token: String,
        last_seq: u64,
    },
}

impl ClientMessage<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Signal { .. } => "signal",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping { .. } => "ping",
            ClientMessage::Resume { .. } => "resume",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo<'a> {
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
    /// Whether the *recipient* is the polite side towards this peer (perfect negotiation:
    /// the peer already in the room is polite).
    pub polite: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Server → client. Every message carries `seq`, increasing per recipient, for resume.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage<'a> {
    Joined {
        id: &'a str,
        room: &'a str,
        peers: Vec<PeerInfo<'a>>,
        ice_servers: &'a RawValue,
        resume_token: &'a str,
        seq: u64,
    },
    PeerJoined {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a RawValue>,
        polite: bool,
        seq: u64,
    },
    PeerLeft {
        id: &'a str,
        reason: LeaveReason,
        seq: u64,
    },
    Signal {
        from: &'a str,
        data: &'a RawValue,
        seq: u64,
    },
    Resumed {
        id: &'a str,
        peers: Vec<PeerInfo<'a>>,
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        seq: u64,
    },
}

impl ServerMessage<'_> {
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

    /// The message as a WebSocket text frame's payload (serde_json writes UTF-8 only).
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: a signal is its `data` plus a few dozen bytes, and growing the
        // buffer while serializing would copy it several times.
        let hint = match self {
            ServerMessage::Signal { data, .. } => data.get().len() + 96,
            _ => 256,
        };
        let mut out = Vec::with_capacity(hint);
        serde_json::to_writer(&mut out, self).expect("server messages always serialize");
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    Left,
    Timeout,
    Kicked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadMessage,
    TooLarge,
    RateLimited,
    Unauthorized,
    RoomFull,
    UnknownPeer,
    NotJoined,
    ResumeFailed,
}

impl ErrorCode {
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
        }
    }
}

/// An error that goes back to the client: a protocol code and words a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// Room names: 1–64 of `[A-Za-z0-9_-]` (safe in URLs, logs and Redis keys).
pub fn valid_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every field any client message may carry. serde cannot keep `RawValue` (the opaque
/// `data`) inside an internally tagged enum, so frames are read flat, then checked per type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    room: Option<String>,
    token: Option<String>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    id: Option<String>,
    last_seq: Option<u64>,
}

/// Parses a client frame; the error says what is wrong in a sentence.
pub fn parse(text: &str) -> Result<ClientMessage<'_>, ProtocolError> {
    let bad = |m: String| ProtocolError::new(ErrorCode::BadMessage, m);
    let w: Wire<'_> =
        serde_json::from_str(text).map_err(|e| bad(format!("not a protocol v1 message: {e}")))?;
    let need = |v: Option<String>, field: &str, kind: &str| {
        v.ok_or_else(|| bad(format!("`{kind}` needs `{field}`")))
    };
    let kind = w.kind.ok_or_else(|| bad("missing `type`".into()))?;
    Ok(match &*kind {
        "join" => ClientMessage::Join {
            room: need(w.room, "room", "join")?,
            token: w.token,
            meta: w.meta.map(|m| m.to_owned()),
        },
        "signal" => ClientMessage::Signal {
            to: w.to.ok_or_else(|| bad("`signal` needs `to`".into()))?,
            data: w.data.ok_or_else(|| bad("`signal` needs `data`".into()))?,
        },
        "leave" => ClientMessage::Leave,
        "ping" => ClientMessage::Ping {
            last_seq: w.last_seq,
        },
        "resume" => ClientMessage::Resume {
            id: need(w.id, "id", "resume")?,
            token: need(w.token, "token", "resume")?,
            last_seq: w
                .last_seq
                .ok_or_else(|| bad("`resume` needs `last_seq`".into()))?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(format!("unknown message type {shown:?}")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_messages() {
        match parse(r#"{"type":"join","room":"abc","meta":{"name":"A"}}"#).unwrap() {
            ClientMessage::Join { room, meta, token } => {
                assert_eq!(room, "abc");
                assert_eq!(meta.unwrap().get(), r#"{"name":"A"}"#);
                assert!(token.is_none());
            }
            m => panic!("{m:?}"),
        }
        match parse(r#"{"type":"signal","to":"p1","data":{"sdp":{"type":"offer","sdp":"v=0"}}}"#)
            .unwrap()
        {
            ClientMessage::Signal { to, data } => {
                assert_eq!(to, "p1");
                assert_eq!(data.get(), r#"{"sdp":{"type":"offer","sdp":"v=0"}}"#);
            }
            m => panic!("{m:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave
        ));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping { last_seq: None }
        ));
        assert!(matches!(
            parse(r#"{"type":"ping","last_seq":17}"#).unwrap(),
            ClientMessage::Ping { last_seq: Some(17) }
        ));
        assert!(matches!(
            parse(r#"{"type":"resume","id":"a","token":"t","last_seq":4}"#).unwrap(),
            ClientMessage::Resume { last_seq: 4, .. }
        ));
    }

    #[test]
    fn bad_messages_explain_themselves() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"signal"}"#,
            r#"{"room":"x"}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadMessage, "{bad}");
            assert!(!e.message.is_empty());
        }
        assert!(parse(r#"{"type":"dance"}"#)
            .unwrap_err()
            .message
            .contains("unknown message type"));
    }

    #[test]
    fn server_messages_serialize_with_type_and_seq() {
        let data = RawValue::from_string(r#"{"candidate":null}"#.into()).unwrap();
        let s = ServerMessage::Signal {
            from: "a",
            data: &data,
            seq: 7,
        }
        .to_json();
        assert_eq!(
            String::from_utf8(s).unwrap(),
            r#"{"type":"signal","from":"a","data":{"candidate":null},"seq":7}"#
        );
        let e = ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "full",
            seq: 1,
        }
        .to_json();
        assert_eq!(
            String::from_utf8(e).unwrap(),
            r#"{"type":"error","code":"room-full","message":"full","seq":1}"#
        );
    }

    #[test]
    fn room_names() {
        assert!(valid_room("a") && valid_room(&"x".repeat(64)) && valid_room("my_room-1"));
        assert!(
            !valid_room("")
                && !valid_room(&"x".repeat(65))
                && !valid_room("a b")
                && !valid_room("é")
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn cases() -> u32 {
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(20_000)
        }

        /// Frames shaped like protocol messages, with any type, fields and values.
        fn frameish() -> impl Strategy<Value = String> {
            let kind = prop_oneof![
                Just("join".to_string()),
                Just("signal".to_string()),
                Just("resume".to_string()),
                Just("leave".to_string()),
                Just("ping".to_string()),
                "[a-z-]{0,12}",
            ];
            let value = prop_oneof![
                Just("null".to_string()),
                Just("{}".to_string()),
                Just("[]".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| format!("{n:?}")),
                ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            ];
            (
                kind,
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("room"),
                            Just("to"),
                            Just("data"),
                            Just("meta"),
                            Just("id"),
                            Just("token"),
                            Just("last_seq"),
                            Just("x")
                        ],
                        value,
                    ),
                    0..6,
                ),
            )
                .prop_map(|(k, fields)| {
                    let mut s = format!("{{\"type\":{}", serde_json::to_string(&k).unwrap());
                    for (f, v) in fields {
                        s.push_str(&format!(",\"{f}\":{v}"));
                    }
                    s.push('}');
                    s
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

            /// Nothing a client sends panics the parser; every refusal is `bad-message`
            /// with a reason.
            #[test]
            fn parse_never_panics(s in ".{0,200}") {
                if let Err(e) = parse(&s) {
                    prop_assert_eq!(e.code, ErrorCode::BadMessage);
                    prop_assert!(!e.message.is_empty());
                }
            }

            #[test]
            fn structured_frames_parse_or_explain(s in frameish()) {
                match parse(&s) {
                    Ok(ClientMessage::Join { room, .. }) => { let _ = valid_room(&room); }
                    Ok(_) => {}
                    Err(e) => {
                        prop_assert_eq!(e.code, ErrorCode::BadMessage);
                        prop_assert!(!e.message.is_empty());
                    }
                }
            }
        }
    }
}
