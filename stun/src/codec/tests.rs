use std::net::SocketAddr;

use super::rfc5769 as v;
use super::*;
use crate::auth::long_term_key;

#[test]
fn rfc5769_sample_request() {
    let m = Message::parse(&v::SAMPLE_REQUEST).unwrap();
    assert_eq!((m.method, m.class), (Method::BINDING, Class::Request));
    assert_eq!(m.transaction_id, v::SAMPLE_TRANSACTION_ID);
    assert_eq!(
        m.text(attr::SOFTWARE).unwrap().unwrap(),
        v::SAMPLE_REQUEST_SOFTWARE
    );
    assert_eq!(
        m.text(attr::USERNAME).unwrap().unwrap(),
        v::SAMPLE_REQUEST_USERNAME
    );
    assert!(m.verify_fingerprint());
    assert!(m.verify_integrity(v::SHORT_TERM_PASSWORD.as_bytes()));
    assert!(!m.verify_integrity(b"wrong"));
}

#[test]
fn rfc5769_responses() {
    for (raw, want) in [
        (&v::SAMPLE_IPV4_RESPONSE[..], v::IPV4_MAPPED_ADDRESS),
        (&v::SAMPLE_IPV6_RESPONSE[..], v::IPV6_MAPPED_ADDRESS),
    ] {
        let m = Message::parse(raw).unwrap();
        assert_eq!((m.method, m.class), (Method::BINDING, Class::Success));
        let addr = m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap();
        assert_eq!(addr, want.parse::<SocketAddr>().unwrap());
        assert!(m.verify_fingerprint());
        assert!(m.verify_integrity(v::SHORT_TERM_PASSWORD.as_bytes()));
        assert_eq!(
            m.text(attr::SOFTWARE).unwrap().unwrap(),
            v::SAMPLE_RESPONSE_SOFTWARE
        );
    }
}

#[test]
fn rfc5769_long_term() {
    let m = Message::parse(&v::SAMPLE_REQUEST_LONG_TERM).unwrap();
    let key = long_term_key(
        v::LONG_TERM_USERNAME,
        v::LONG_TERM_REALM,
        v::LONG_TERM_PASSWORD,
    );
    assert_eq!(key, v::LONG_TERM_KEY);
    assert_eq!(m.transaction_id, v::LONG_TERM_TRANSACTION_ID);
    assert_eq!(
        m.text(attr::USERNAME).unwrap().unwrap(),
        v::LONG_TERM_USERNAME
    );
    assert_eq!(m.text(attr::NONCE).unwrap().unwrap(), v::LONG_TERM_NONCE);
    assert_eq!(m.text(attr::REALM).unwrap().unwrap(), v::LONG_TERM_REALM);
    assert!(m.verify_integrity(&key));
    assert!(!m.verify_integrity(&long_term_key(
        v::LONG_TERM_USERNAME,
        v::LONG_TERM_REALM,
        "x"
    )));
}

#[test]
fn every_bit_flip_of_a_vector_is_caught() {
    let base = v::SAMPLE_REQUEST;
    for i in 0..base.len() * 8 {
        let mut b = base;
        b[i / 8] ^= 1 << (i % 8);
        let ok = Message::parse(&b)
            .map(|m| {
                m.has_fingerprint()
                    && m.verify_fingerprint()
                    && m.verify_integrity(v::SHORT_TERM_PASSWORD.as_bytes())
            })
            .unwrap_or(false);
        assert!(!ok, "flip of bit {i} went unnoticed");
    }
}

#[test]
fn writer_round_trip_with_integrity_and_fingerprint() {
    let key = long_term_key("u", "r", "p");
    let tid = [7u8; 12];
    let peer4: SocketAddr = "198.51.100.3:4000".parse().unwrap();
    let peer6: SocketAddr = "[2001:db8::5]:5000".parse().unwrap();
    for sha256 in [false, true] {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, Method::CREATE_PERMISSION, Class::Request, tid);
        w.attr(attr::USERNAME, b"u")
            .xor_address(attr::XOR_PEER_ADDRESS, peer4)
            .xor_address(attr::XOR_PEER_ADDRESS, peer6)
            .error_code(438, "Stale Nonce")
            .integrity(&key, sha256);
        let raw = w.finish_with_fingerprint().to_vec();
        let m = Message::parse(&raw).unwrap();
        assert_eq!(
            (m.method, m.class, m.transaction_id),
            (Method::CREATE_PERMISSION, Class::Request, tid)
        );
        let peers: Vec<SocketAddr> = m
            .get_all(attr::XOR_PEER_ADDRESS)
            .map(|v| attr::decode_xor_address(v, &tid).unwrap())
            .collect();
        assert_eq!(peers, vec![peer4, peer6]);
        assert_eq!(
            attr::decode_error_code(m.get(attr::ERROR_CODE).unwrap()).unwrap(),
            (438, "Stale Nonce")
        );
        assert!(m.verify_fingerprint());
        assert!(m.verify_integrity(&key));
        assert_eq!(m.uses_sha256(), sha256);
    }
}

#[test]
fn message_type_packing() {
    for m in [
        Method::BINDING,
        Method::ALLOCATE,
        Method::CHANNEL_BIND,
        Method(0xFFF),
    ] {
        for c in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            assert_eq!(split_message_type(message_type(m, c)), (m, c));
        }
    }
    assert_eq!(message_type(Method::BINDING, Class::Success), 0x0101);
    assert_eq!(message_type(Method::ALLOCATE, Class::Error), 0x0113);
    assert_eq!(message_type(Method::DATA, Class::Indication), 0x0017);
}

#[test]
fn lying_lengths_and_garbage_are_errors() {
    let mut b = v::SAMPLE_REQUEST.to_vec();
    b[3] = b[3].wrapping_add(4);
    assert!(Message::parse(&b).is_err());
    let mut b = v::SAMPLE_REQUEST.to_vec();
    b[22] = 0xFF; // SOFTWARE length runs past the end
    b[23] = 0xFF;
    assert!(Message::parse(&b).is_err());
    assert_eq!(Message::parse(&b[..10]).unwrap_err(), DecodeError::TooShort);
    let mut b = v::SAMPLE_REQUEST.to_vec();
    b[4] = 0;
    assert_eq!(Message::parse(&b).unwrap_err(), DecodeError::BadCookie);
    assert_eq!(parse_channel_data(&[0x40, 0, 0, 9, 1]), None);
    assert_eq!(
        parse_channel_data(&[0x40, 1, 0, 1, 9, 0, 0, 0]),
        Some((0x4001, &[9u8][..]))
    );
    assert_eq!(tcp_frame_len(&[0x40, 1, 0, 1]), Some(Some(8)));
    assert_eq!(tcp_frame_len(&[0xC0, 1, 0, 1]), None);
    assert_eq!(tcp_frame_len(&[0x00, 1, 0, 3]), None);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50_000)
    }

    /// A structurally plausible STUN message: right cookie, attributes with arbitrary
    /// types and lengths that may lie, so the parser's every branch is reached.
    fn stunish() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u16>(),
            proptest::collection::vec(
                (
                    any::<u16>(),
                    any::<u16>(),
                    proptest::collection::vec(any::<u8>(), 0..40),
                ),
                0..8,
            ),
            any::<bool>(),
        )
            .prop_map(|(t, attrs, fix_len)| {
                let mut b = Vec::new();
                b.extend_from_slice(&(t & 0x3FFF).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
                b.extend_from_slice(&[1; 12]);
                for (ty, len, val) in attrs {
                    let ty = [
                        attr::MESSAGE_INTEGRITY,
                        attr::FINGERPRINT,
                        attr::XOR_PEER_ADDRESS,
                        attr::USERNAME,
                        ty,
                    ][(ty % 5) as usize];
                    let len = if len % 2 == 0 {
                        val.len() as u16
                    } else {
                        len % 64
                    };
                    b.extend_from_slice(&ty.to_be_bytes());
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(&val);
                }
                if fix_len {
                    let l = (b.len() - 20) as u16;
                    b[2..4].copy_from_slice(&l.to_be_bytes());
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = Message::parse(&b) {
                let _ = m.verify_fingerprint();
                let _ = m.verify_integrity(b"k");
                for t in [attr::XOR_PEER_ADDRESS, attr::USERNAME, attr::LIFETIME] {
                    let _ = m.xor_address(t);
                    let _ = m.text(t);
                }
                let _ = m.unknown_required().count();
            }
            let _ = parse_channel_data(&b);
            let _ = tcp_frame_len(&b);
        }

        #[test]
        fn structured_messages_never_panic(b in stunish()) {
            if let Ok(m) = Message::parse(&b) {
                prop_assert!(m.raw().len() == b.len());
                let _ = m.verify_fingerprint();
                let _ = m.verify_integrity(b"k");
                for v in m.get_all(attr::XOR_PEER_ADDRESS) {
                    let _ = attr::decode_xor_address(v, &m.transaction_id);
                }
            }
        }
    }
}

/// One pass decodes every attribute: first occurrence wins, several peers are kept in
/// order, and a malformed value is refused with its name.
#[test]
fn typed_attributes() {
    let tid = [5; 12];
    let p1: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let p2: SocketAddr = "[2001:db8::1]:2000".parse().unwrap();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid);
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .attr(attr::EVEN_PORT, &[0x80])
        .u32(attr::LIFETIME, 900)
        .u32(attr::LIFETIME, 1)
        .attr(attr::USERNAME, b"alice")
        .attr(attr::DONT_FRAGMENT, &[])
        .xor_address(attr::XOR_PEER_ADDRESS, p1)
        .xor_address(attr::XOR_PEER_ADDRESS, p2)
        .attr(attr::RESERVATION_TOKEN, &7u64.to_be_bytes());
    let raw = w.finish().to_vec();
    let m = Message::parse(&raw).unwrap();
    let a = Attributes::parse(&m).unwrap();
    assert_eq!(a.requested_transport, Some(17));
    assert_eq!(a.even_port, Some(true));
    assert_eq!(a.lifetime, Some(900), "the first LIFETIME counts");
    assert_eq!(a.username, Some("alice"));
    assert!(a.dont_fragment);
    assert_eq!(a.xor_peer_addresses.as_slice(), [p1, p2]);
    assert_eq!(a.reservation_token, Some(7));
    assert_eq!(a.channel_number, None);

    for (t, v, why) in [
        (attr::LIFETIME, &[0u8, 1][..], "bad LIFETIME"),
        (attr::REQUESTED_TRANSPORT, &[17], "bad REQUESTED-TRANSPORT"),
        (attr::USERNAME, &[0xff], "USERNAME is not UTF-8"),
        (
            attr::CHANNEL_NUMBER,
            &[0x40],
            "CHANNEL-NUMBER is missing or malformed",
        ),
        (
            attr::XOR_PEER_ADDRESS,
            &[0, 9, 0, 0, 1, 2, 3, 4],
            "bad XOR-PEER-ADDRESS",
        ),
    ] {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid);
        w.attr(t, v);
        let raw = w.finish().to_vec();
        let m = Message::parse(&raw).unwrap();
        assert_eq!(Attributes::parse(&m).unwrap_err().reason(), why);
    }
}
