//! Both directions of protocol v1: parsing, refusals, and serialize → parse round trips.

use crate::*;

#[test]
fn parses_v1_messages() {
    match ClientMessage::parse(r#"{"type":"join","room":"abc","meta":{"name":"A"}}"#).unwrap() {
        ClientMessage::Join { room, meta, token } => {
            assert_eq!(room, "abc");
            assert_eq!(meta.unwrap().get(), r#"{"name":"A"}"#);
            assert!(token.is_none());
        }
        m => panic!("{m:?}"),
    }
    match ClientMessage::parse(
        r#"{"type":"signal","to":"p1","data":{"sdp":{"type":"offer","sdp":"v=0"}}}"#,
    )
    .unwrap()
    {
        ClientMessage::Signal { to, data } => {
            assert_eq!(to, "p1");
            assert_eq!(data.get(), r#"{"sdp":{"type":"offer","sdp":"v=0"}}"#);
        }
        m => panic!("{m:?}"),
    }
    assert!(matches!(
        ClientMessage::parse(r#"{"type":"leave"}"#).unwrap(),
        ClientMessage::Leave
    ));
    assert!(matches!(
        ClientMessage::parse(r#"{"type":"ping"}"#).unwrap(),
        ClientMessage::Ping { last_seq: None }
    ));
    assert!(matches!(
        ClientMessage::parse(r#"{"type":"ping","last_seq":17}"#).unwrap(),
        ClientMessage::Ping { last_seq: Some(17) }
    ));
    assert!(matches!(
        ClientMessage::parse(r#"{"type":"resume","id":"a","token":"t","last_seq":4}"#).unwrap(),
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
        let e = ClientMessage::parse(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadMessage, "{bad}");
        assert!(!e.message.is_empty());
    }
    assert!(ClientMessage::parse(r#"{"type":"dance"}"#)
        .unwrap_err()
        .message
        .contains("unknown message type"));
}

#[test]
fn server_messages_serialize_with_type_and_seq() {
    let data = RawValue::from_string(r#"{"candidate":null}"#.into()).unwrap();
    let s = ServerMessage::Signal {
        from: "a".into(),
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
        message: "full".into(),
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
        !valid_room("") && !valid_room(&"x".repeat(65)) && !valid_room("a b") && !valid_room("é")
    );
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.into()).unwrap()
}

/// Every client message the peers send parses back on the server to what was sent.
#[test]
fn client_messages_round_trip() {
    let meta = raw(r#"{"name":"A \"quoted\""}"#);
    let data = raw(r#"{"sdp":{"type":"offer","sdp":"v=0\r\n"}}"#);
    let msgs = [
        ClientMessage::Join {
            room: "r1".into(),
            token: Some("t.k.n".into()),
            meta: Some(&meta),
        },
        ClientMessage::Join {
            room: "r2".into(),
            token: None,
            meta: None,
        },
        ClientMessage::Signal {
            to: "p\"x".into(),
            data: &data,
        },
        ClientMessage::Leave,
        ClientMessage::Ping { last_seq: None },
        ClientMessage::Ping {
            last_seq: Some(u64::MAX),
        },
        ClientMessage::Resume {
            id: "abc".into(),
            token: "tok".into(),
            last_seq: 9,
        },
    ];
    for m in msgs {
        let text = m.to_text();
        let back = ClientMessage::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back.to_text(), text);
        assert_eq!(back.kind(), m.kind());
    }
    // Optional fields are left out, not sent as null.
    assert_eq!(
        ClientMessage::Ping { last_seq: None }.to_text(),
        r#"{"type":"ping"}"#
    );
    assert_eq!(ClientMessage::Leave.to_text(), r#"{"type":"leave"}"#);
}

/// Every server message parses back on a client, escapes included; unknown fields and
/// codes from a newer server do not break an older client.
#[test]
fn server_messages_round_trip() {
    let meta = raw(r#"{"name":"B"}"#);
    let ice = raw(
        r#"[{"urls":["stun:127.0.0.1:3478"]},{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"1:peer","credential":"x"}]"#,
    );
    let data = raw(r#"{"candidate":null}"#);
    let peers = vec![PeerInfo {
        id: "p2".into(),
        meta: Some(&meta),
        polite: true,
    }];
    let msgs = [
        ServerMessage::Joined {
            id: "p1".into(),
            room: "r".into(),
            peers: peers.clone(),
            ice_servers: &ice,
            resume_token: "tok".into(),
            seq: 1,
        },
        ServerMessage::PeerJoined {
            id: "p3".into(),
            meta: None,
            polite: false,
            seq: 2,
        },
        ServerMessage::PeerLeft {
            id: "p3".into(),
            reason: LeaveReason::Timeout,
            seq: 3,
        },
        ServerMessage::Signal {
            from: "p2".into(),
            data: &data,
            seq: 4,
        },
        ServerMessage::Resumed {
            id: "p1".into(),
            peers,
            seq: 4,
        },
        ServerMessage::Pong { seq: 5 },
        ServerMessage::Error {
            code: ErrorCode::BadMessage,
            message: r#"unknown message type "x""#.into(),
            seq: 6,
        },
    ];
    for m in msgs {
        let text = String::from_utf8(m.to_json()).unwrap();
        let back = ServerMessage::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(String::from_utf8(back.to_json()).unwrap(), text);
        assert_eq!((back.kind(), back.seq()), (m.kind(), m.seq()));
    }
    let list = IceServer::list(&ice).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].username.as_deref(), Some("1:peer"));
    assert!(list[0].credential.is_none());

    let newer = r#"{"type":"error","code":"new-thing","message":"m","seq":1,"extra":true}"#;
    match ServerMessage::parse(newer).unwrap() {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::Other),
        m => panic!("{m:?}"),
    }
    let e = ServerMessage::parse(r#"{"type":"signal","from":"a","seq":1}"#).unwrap_err();
    assert!(e.0.contains("`data`"), "{e}");
    assert!(ServerMessage::parse(r#"{"type":"pong"}"#).is_err());
}

/// The payload shapes docs/protocol.md shows, as browsers write them.
#[test]
fn signal_payloads() {
    let offer = raw(r#"{"sdp":{"type":"offer","sdp":"v=0\r\n"}}"#);
    assert_eq!(
        SignalData::parse(&offer),
        Some(SignalData::Description(SessionDescription {
            kind: SdpType::Offer,
            sdp: "v=0\r\n".into()
        }))
    );
    let cand = raw(
        r#"{"candidate":{"candidate":"candidate:842163049 1 udp 1677729535 198.51.100.7 61021 typ srflx raddr 0.0.0.0 rport 0 generation 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"f3Kq"}}"#,
    );
    let parsed = SignalData::parse(&cand).unwrap();
    match &parsed {
        SignalData::Candidate(Some(c)) => {
            assert_eq!(c.sdp_mid.as_deref(), Some("0"));
            assert_eq!(c.sdp_m_line_index, Some(0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parsed.to_raw().get(), cand.get());
    let end = raw(r#"{"candidate":null}"#);
    assert_eq!(SignalData::parse(&end), Some(SignalData::Candidate(None)));
    assert_eq!(SignalData::Candidate(None).to_raw().get(), end.get());
    assert_eq!(SignalData::parse(&raw(r#"{"hello":1}"#)), None);
}

mod prop {
    use crate::*;
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
            if let Err(e) = ClientMessage::parse(&s) {
                prop_assert_eq!(e.code, ErrorCode::BadMessage);
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn structured_frames_parse_or_explain(s in frameish()) {
            match ClientMessage::parse(&s) {
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

/// A message built without its seq, closed by whoever assigns it, is the same message
/// byte for byte as one built with the seq (the cluster bus relies on it).
#[test]
fn unsequenced_json_closed_with_seq_is_the_sequenced_message() {
    let data = serde_json::value::RawValue::from_string(r#"{"sdp":"v=0"}"#.into()).unwrap();
    let meta = serde_json::value::RawValue::from_string(r#"{"name":"A"}"#.into()).unwrap();
    let seq = 4_294_967_301;
    let msgs = [
        ServerMessage::Signal {
            from: "p1".into(),
            data: &data,
            seq,
        },
        ServerMessage::PeerJoined {
            id: "p2".into(),
            meta: Some(&meta),
            polite: true,
            seq,
        },
        ServerMessage::PeerLeft {
            id: "p2".into(),
            reason: LeaveReason::Timeout,
            seq,
        },
        ServerMessage::Pong { seq },
        ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message: "later".into(),
            seq,
        },
    ];
    for m in msgs {
        let mut open = m.to_json_unsequenced();
        let text = String::from_utf8_lossy(&open).into_owned();
        assert!(!text.contains("\"seq\""), "{text}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_err(),
            "left open: {text}"
        );
        open.extend_from_slice(format!(",\"seq\":{seq}}}").as_bytes());
        assert_eq!(open, m.to_json());
        let text = String::from_utf8(open).unwrap();
        assert_eq!(ServerMessage::parse(&text).unwrap().seq(), seq);
    }
}
