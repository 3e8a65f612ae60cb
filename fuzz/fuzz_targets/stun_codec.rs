//! The STUN/TURN codec on arbitrary bytes: `Message::parse` and every accessor, the
//! packet classifier, the ChannelData parser and the TCP framer, with the properties that
//! tie them together (the framer's lengths are what the parsers accept; what parses can
//! be re-encoded and signed and then verifies).

#![no_main]

use libfuzzer_sys::fuzz_target;

use icebreaker_relay::codec::{
    self, attr, DecodeError, Message, MessageWriter, PacketKind, CHANNEL_MAX, CHANNEL_MIN,
    HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES,
};

const KEY: &[u8] = b"fuzz-key-0123456";

/// Attribute types worth asking for even when absent.
const TYPES: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::RESERVATION_TOKEN,
    attr::XOR_MAPPED_ADDRESS,
    attr::SOFTWARE,
    attr::FINGERPRINT,
];

/// The attributes of a parsed message as (type, value) by walking its TLVs (the codec has
/// no public iterator over all attributes, only lookups by type).
fn tlvs(raw: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + 4 <= raw.len() {
        let t = u16::from_be_bytes([raw[pos], raw[pos + 1]]);
        let l = u16::from_be_bytes([raw[pos + 2], raw[pos + 3]]) as usize;
        let end = pos + 4 + l;
        assert!(
            end <= raw.len(),
            "a parsed message's attribute runs past it"
        );
        out.push((t, &raw[pos + 4..end]));
        pos += 4 + l.div_ceil(4) * 4;
    }
    out
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

fn check_message(data: &[u8], m: &Message<'_>) {
    // The typed decoder agrees with the raw accessors: the first of each attribute, all
    // the peers in order, and a refusal names what is wrong.
    match codec::Attributes::parse(m) {
        Ok(a) => {
            assert_eq!(a.username, m.text(attr::USERNAME).map(|t| t.unwrap()));
            assert_eq!(a.lifetime, m.get(attr::LIFETIME).map(|v| attr::decode_u32(v).unwrap()));
            assert_eq!(a.data, m.get(attr::DATA));
            let peers: Vec<_> = m
                .get_all(attr::XOR_PEER_ADDRESS)
                .map(|v| attr::decode_xor_address(v, &m.transaction_id).unwrap())
                .collect();
            assert_eq!(a.xor_peer_addresses.as_slice(), &peers[..]);
            assert_eq!(a.dont_fragment, m.has(attr::DONT_FRAGMENT));
        }
        Err(e) => assert!(!e.reason().is_empty()),
    }

    let raw = m.raw();
    assert_eq!(raw.len(), data.len());
    assert!(raw.len() >= HEADER_LEN && (raw.len() - HEADER_LEN).is_multiple_of(4));
    assert_eq!(raw[0] & 0xC0, 0);
    assert_eq!(
        u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
        MAGIC_COOKIE
    );
    assert_eq!(&m.transaction_id[..], &raw[8..20]);
    // Method and class are exactly the 14-bit type.
    let typ = u16::from_be_bytes([raw[0], raw[1]]);
    assert_eq!(codec::message_type(m.method, m.class), typ);
    assert_eq!(codec::split_message_type(typ), (m.method, m.class));
    let _ = m.method.name();

    let all = tlvs(raw);
    let mut types: Vec<u16> = all
        .iter()
        .map(|(t, _)| *t)
        .chain(TYPES.iter().copied())
        .collect();
    types.sort_unstable();
    types.dedup();
    for &t in &types {
        let first = m.get(t);
        assert_eq!(m.has(t), first.is_some());
        assert_eq!(m.get_all(t).next(), first);
        for v in m.get_all(t) {
            assert!(within(raw, v), "attribute value outside the message");
            // Every value the index returns is one of the message's TLVs of that type.
            assert!(all
                .iter()
                .any(|(tt, vv)| *tt == t && vv.as_ptr() == v.as_ptr() && vv.len() == v.len()));
        }
        if let Some(Ok(a)) = m.xor_address(t) {
            // Decoding then encoding gives the value back (the first byte is reserved).
            let v = first.unwrap();
            let mut enc = [0u8; 20];
            let n = attr::encode_address(a, Some(&m.transaction_id), &mut enc);
            assert_eq!(&enc[1..n], &v[1..], "XOR address does not round-trip");
        }
        if let Some(r) = m.text(t) {
            assert_eq!(r.ok(), first.and_then(|v| std::str::from_utf8(v).ok()));
        }
        if let Some(v) = first {
            let _ = attr::decode_error_code(v);
            let _ = attr::decode_u32(v);
            let _ = attr::decode_address(v);
        }
    }
    for t in m.unknown_required() {
        assert!(t < 0x8000 && !attr::is_understood(t));
        assert!(m.has(t));
    }
    let fp = m.verify_fingerprint();
    if !m.has_fingerprint() {
        assert!(fp, "no FINGERPRINT passes");
    }
    let _ = m.verify_integrity(KEY);
    if !m.has_integrity() {
        assert!(!m.verify_integrity(KEY), "no integrity never verifies");
    }
    assert!(!m.uses_sha256() || m.has_integrity());

    // Writer and parser agree: the same attributes re-encoded, signed and fingerprinted
    // parse back, verify, and keep their values.
    if !m.has_integrity()
        && !m.has_fingerprint()
        && all.len() + 2 <= MAX_ATTRIBUTES
        && raw.len() + 48 <= u16::MAX as usize
    {
        for sha256 in [false, true] {
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(&mut buf, m.method, m.class, m.transaction_id);
            for (t, v) in &all {
                w.attr(*t, v);
            }
            w.integrity(KEY, sha256);
            let out = w.finish_with_fingerprint();
            let again = Message::parse(out).expect("a written message parses");
            assert!(again.verify_fingerprint());
            assert!(again.verify_integrity(KEY));
            assert_eq!(again.uses_sha256(), sha256);
            assert!(!again.verify_integrity(b"another key"));
            assert_eq!((again.method, again.class), (m.method, m.class));
            for &t in &types {
                if t != attr::MESSAGE_INTEGRITY
                    && t != attr::MESSAGE_INTEGRITY_SHA256
                    && t != attr::FINGERPRINT
                {
                    assert_eq!(again.get(t), m.get(t));
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let kind = codec::classify(data);
    match data.first().map(|b| b >> 6) {
        Some(0) => assert_eq!(kind, PacketKind::Stun),
        Some(1) => assert_eq!(kind, PacketKind::ChannelData),
        _ => assert_eq!(kind, PacketKind::Other),
    }

    match Message::parse(data) {
        Ok(m) => check_message(data, &m),
        Err(e) => {
            let _ = e.to_string();
            if data.len() < HEADER_LEN {
                assert_eq!(e, DecodeError::TooShort);
            }
        }
    }

    if let Some((ch, payload)) = codec::parse_channel_data(data) {
        assert!((CHANNEL_MIN..=CHANNEL_MAX).contains(&ch));
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        assert_eq!(payload, &data[4..4 + len]);
        // Writing it again gives the same bytes (unpadded, as over UDP).
        let mut buf = Vec::new();
        codec::write_channel_data(&mut buf, ch, payload, false);
        assert_eq!(&buf[..], &data[..4 + len]);
    }

    match codec::tcp_frame_len(data) {
        None => assert!(data.len() >= 4 && kind != PacketKind::ChannelData),
        Some(None) => assert!(data.len() < 4),
        Some(Some(n)) => {
            assert!(n >= 4);
            if data.len() >= n {
                let frame = &data[..n];
                match kind {
                    PacketKind::Stun => {
                        assert!(n >= HEADER_LEN);
                        // A frame the framer cut has the length the parser wants.
                        match Message::parse(frame) {
                            Err(DecodeError::TooShort)
                            | Err(DecodeError::NotStun)
                            | Err(DecodeError::BadLength("not a multiple of 4"))
                            | Err(DecodeError::BadLength("does not match the packet size")) => {
                                panic!("framer and parser disagree on {frame:?}")
                            }
                            Ok(m) => assert_eq!(m.raw().len(), n),
                            Err(_) => {}
                        }
                    }
                    PacketKind::ChannelData => {
                        assert_eq!(n % 4, 0);
                        let (_, payload) = codec::parse_channel_data(frame)
                            .expect("a ChannelData frame the framer cut parses");
                        assert!(payload.len() + 4 <= n && n - payload.len() - 4 < 4);
                    }
                    PacketKind::Other => unreachable!("framer accepted a non-TURN packet"),
                }
            }
        }
    }
});
