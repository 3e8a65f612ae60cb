//! The signaling protocol parser (`icebreaker_protocol::ClientMessage::parse`) on arbitrary
//! UTF-8 (the bytes when they are UTF-8, and always their lossy conversion). Every refusal
//! is `bad-message` with a reason; what is accepted is forwarded as the server would
//! (`signal`'s `data`, `join`'s `meta`) and the server's JSON must be valid and carry the
//! client's value byte for byte.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

use icebreaker_protocol::{self as protocol, ClientMessage, ErrorCode, ServerMessage};

fn check(text: &str) {
    match ClientMessage::parse(text) {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadMessage);
            assert!(!e.message.is_empty());
            // The reason goes back to the client in an error message.
            let out = ServerMessage::Error {
                code: e.code,
                message: e.message.as_str().into(),
                seq: 1,
            }
            .to_json();
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["message"].as_str(), Some(e.message.as_str()));
        }
        Ok(m) => {
            let _ = m.kind();
            match m {
                ClientMessage::Join { room, meta, token } => {
                    let _ = protocol::valid_room(&room);
                    let _ = token;
                    if let Some(meta) = &meta {
                        forwarded(meta, |data| ServerMessage::PeerJoined {
                            id: "p".into(),
                            meta: Some(data),
                            polite: true,
                            seq: 2,
                        });
                    }
                }
                ClientMessage::Signal { to, data } => {
                    let _ = to;
                    forwarded(data, |data| ServerMessage::Signal {
                        from: "p".into(),
                        data,
                        seq: 3,
                    });
                }
                ClientMessage::Resume { .. }
                | ClientMessage::Leave
                | ClientMessage::Ping { .. } => {}
            }
        }
    }
}

/// `value` (a client's raw JSON) inside a server message: the server's JSON is valid and
/// carries the value byte for byte.
fn forwarded<'a>(value: &'a RawValue, msg: impl FnOnce(&'a RawValue) -> ServerMessage<'a>) {
    let out = msg(value).to_json();
    let fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(&out).expect("server JSON parses");
    let field = if fields["type"].get() == "\"signal\"" {
        "data"
    } else {
        "meta"
    };
    assert_eq!(fields[field].get(), value.get(), "forwarded value altered");
    // And a client reads it back (the same crate's other direction).
    let text = std::str::from_utf8(&out).expect("UTF-8");
    let back = ServerMessage::parse(text).expect("clients parse what the server sends");
    assert_eq!(back.to_json(), out, "server message changed on a client round trip");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
    }
    check(&String::from_utf8_lossy(data));
});
