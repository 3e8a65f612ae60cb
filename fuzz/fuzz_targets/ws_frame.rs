//! WebSocket frame parsing (`icebreaker_signaling::ws::frame::parse`) on arbitrary bytes
//! with an arbitrary payload limit, walking the buffer frame by frame the way
//! `Conn::frames` in signaling/src/session.rs does (each frame unmasked in place, the rest
//! parsed after it). Checks that every header the parser returns lies within the buffer,
//! that payloads are unmasked correctly, that a frame is never reported complete before
//! all its bytes are there, and that the server's own frame headers read back.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use icebreaker_signaling::ws::frame::{self, FrameError, Opcode};

#[derive(Debug, Arbitrary)]
struct Input {
    max_payload: u64,
    data: Vec<u8>,
}

fn walk(orig: &[u8], max: usize) {
    let mut buf = orig.to_vec();
    let mut rest: &mut [u8] = &mut buf;
    let mut at = 0; // offset of `rest` in `orig`
    loop {
        let n = rest.len();
        match frame::parse(rest, max) {
            Ok(None) => {
                // Incomplete: parsing did not touch the bytes.
                assert_eq!(&rest[..], &orig[at..]);
                break;
            }
            Ok(Some(h)) => {
                assert!(h.len <= n, "frame of {} bytes in {n}", h.len);
                assert!(h.payload.start <= h.payload.end);
                assert_eq!(h.payload.end, h.len);
                assert!(h.payload.start >= 6 && h.payload.start <= 14);
                let plen = h.payload.len();
                assert!(plen as u64 <= max as u64, "payload over the limit");
                if h.opcode.is_control() {
                    assert!(h.fin && plen <= 125, "bad control frame accepted");
                }
                assert_eq!(orig[at] & 0x70, 0);
                assert_ne!(orig[at + 1] & 0x80, 0, "unmasked frame accepted");
                // The payload is the original XOR the key in front of it.
                let key = &orig[at + h.payload.start - 4..at + h.payload.start];
                for (i, b) in rest[h.payload.clone()].iter().enumerate() {
                    assert_eq!(*b, orig[at + h.payload.start + i] ^ key[i % 4]);
                }
                // One byte short of the frame is "need more".
                let mut short = orig[at..at + h.len - 1].to_vec();
                assert_eq!(frame::parse(&mut short, max), Ok(None));
                let (this, next) = std::mem::take(&mut rest).split_at_mut(h.len);
                let this: &[u8] = this;
                let _payload = &this[h.payload];
                rest = next;
                at += h.len;
            }
            Err(e) => {
                if let FrameError::TooLarge(l) = e {
                    assert!(l > max as u64);
                }
                assert!(matches!(e.close_code(), 1002 | 1009));
                let _ = e.to_string();
                break;
            }
        }
    }
}

/// A server header with the mask bit set, the key and the masked payload is a client
/// frame; it must parse back to the payload.
fn roundtrip(payload: &[u8], key: [u8; 4]) {
    let mut hdr = [0u8; 10];
    let n = frame::header(Opcode::Binary, payload.len(), &mut hdr);
    let mut f = hdr[..n].to_vec();
    f[1] |= 0x80;
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    let h = frame::parse(&mut f, payload.len())
        .expect("our own header parses")
        .expect("complete");
    assert_eq!((h.fin, h.opcode, h.len), (true, Opcode::Binary, f.len()));
    assert_eq!(&f[h.payload], payload);
}

fuzz_target!(|input: Input| {
    let max = usize::try_from(input.max_payload).unwrap_or(usize::MAX);
    walk(&input.data, max);
    // Small limits reach TooLarge and the control-frame checks more often.
    walk(&input.data, max % 256);

    let key = [0x5a, 0x01, 0xff, 0x80];
    roundtrip(&input.data, key);

    let reason = String::from_utf8_lossy(&input.data);
    let p = frame::close_payload(1000 + (input.max_payload % 4000) as u16, &reason);
    assert!(p.len() <= 125, "close payload over a control frame");
    assert!(
        std::str::from_utf8(&p[2..]).is_ok(),
        "close reason cut mid-character"
    );
    assert!(reason.as_bytes().starts_with(&p[2..]));
});
