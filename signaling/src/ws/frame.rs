//! RFC 6455 framing, server side: parse masked client frames in place, write unmasked
//! server frames. No extensions are negotiated, so the RSV bits must be zero.

use thiserror::Error;

/// A frame's opcode (RFC 6455 §5.2); reserved opcodes have no variant and are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0: a later fragment of a fragmented message.
    Continuation,
    /// 0x1: a text (UTF-8) message, or its first fragment.
    Text,
    /// 0x2: a binary message, or its first fragment.
    Binary,
    /// 0x8: the closing handshake (§5.5.1).
    Close,
    /// 0x9: a ping, to be answered with a pong (§5.5.2).
    Ping,
    /// 0xA: a pong, answering a ping or unsolicited (§5.5.3).
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: control frames (§5.5), which may come between the
    /// fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why a client's bytes are not a WebSocket frame we accept; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// RSV1-3 set, which only a negotiated extension may do (§5.2).
    #[error("reserved bits set without a negotiated extension")]
    Reserved,
    /// A reserved opcode (0x3-0x7, 0xB-0xF).
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    /// A client frame without the MASK bit (§5.1).
    #[error("client frames must be masked")]
    Unmasked,
    /// A fragmented control frame, or one with more than 125 payload bytes (§5.5).
    #[error("control frames must be final and at most 125 bytes")]
    BadControl,
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
    #[error("64-bit payload length with its top bit set")]
    BadLength,
    /// The declared payload is over the limit; the connection is closed with 1009.
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
}

impl FrameError {
    /// The close code to send: 1009 (message too big) for an oversized frame, else 1002
    /// (protocol error).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge(_) => 1009,
            _ => 1002,
        }
    }
}

/// One complete frame at the start of a buffer; its payload is unmasked in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// FIN: the last fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// Where the payload sits in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the whole frame takes (header and payload).
    pub len: usize,
}

/// Parses the frame at the start of `buf`. `Ok(None)`: more bytes are needed. Payloads
/// over `max_payload` are refused from the header alone, before they are read.
pub fn parse(buf: &mut [u8], max_payload: usize) -> Result<Option<Head>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::Opcode(b0 & 0x0F))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let len = len as usize;
    // Subtractions, not `at + 4 + len`: with a limit near usize::MAX that sum overflows
    // (found by the ws_frame fuzz target).
    if buf.len() - at < 4 || buf.len() - at - 4 < len {
        return Ok(None);
    }
    let mut key = [0u8; 4];
    key.copy_from_slice(&buf[at..at + 4]);
    at += 4;
    unmask(&mut buf[at..at + len], key);
    Ok(Some(Head {
        fin,
        opcode,
        payload: at..at + len,
        len: at + len,
    }))
}

/// XORs the payload with the client's key, eight bytes at a time: this runs over every
/// byte every client sends.
pub fn unmask(data: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Writes an unmasked, final frame header for `len` payload bytes into `out`; returns
/// how many bytes of `out` it used (2, 4 or 10).
pub fn header(opcode: Opcode, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A whole close frame's payload: the code and a reason (cut to fit a control frame).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut r = reason;
    while r.len() > 123 {
        let mut end = 123;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    let mut p = Vec::with_capacity(2 + r.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(r.as_bytes());
    p
}

/// A masked client frame as a browser would send it (for the crate's tests).
#[cfg(test)]
pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc6455_examples() {
        // Section 5.7: a masked "Hello" from a client.
        let mut b = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let h = parse(&mut b, 1024).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.len), (true, Opcode::Text, 11));
        assert_eq!(&b[h.payload], b"Hello");
        // Fragmented: first part unmasked is refused (client frames must be masked).
        let mut b = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        assert_eq!(parse(&mut b, 1024), Err(FrameError::Unmasked));
        // Server-side header for "Hello" and for 256 and 65536 bytes.
        let hdr = |op, len| {
            let mut h = [0u8; 10];
            let n = header(op, len, &mut h);
            h[..n].to_vec()
        };
        assert_eq!(hdr(Opcode::Text, 5), [0x81, 0x05]);
        assert_eq!(hdr(Opcode::Binary, 256), [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(
            hdr(Opcode::Binary, 65536),
            [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn refuses_what_we_do_not_speak() {
        let k = [1, 2, 3, 4];
        let mut f = client_frame(true, 0x1, b"x", k);
        f[0] |= 0x40; // RSV1 = permessage-deflate, which we never negotiate
        assert_eq!(parse(&mut f, 100), Err(FrameError::Reserved));
        let mut f = client_frame(true, 0x3, b"x", k);
        assert_eq!(parse(&mut f, 100), Err(FrameError::Opcode(3)));
        let mut f = client_frame(false, 0x9, b"x", k);
        assert_eq!(parse(&mut f, 100), Err(FrameError::BadControl));
        let mut f = client_frame(true, 0x8, &[0; 126], k);
        assert_eq!(parse(&mut f, 1000), Err(FrameError::BadControl));
        // Too large is known from the header, before the payload arrives.
        let f = client_frame(true, 0x1, &[b'a'; 70_000], k);
        let mut head = f[..14].to_vec();
        assert_eq!(parse(&mut head, 65_536), Err(FrameError::TooLarge(70_000)));
        assert_eq!(FrameError::TooLarge(1).close_code(), 1009);
        // RFC 6455 §5.2: a 64-bit length with its top bit set is an error.
        let mut f = vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(parse(&mut f, usize::MAX), Err(FrameError::BadLength));
    }

    /// The ws_frame fuzz target's first find (fuzz/regressions/ws_frame): a length near
    /// usize::MAX with a limit that admits it overflowed `at + 4 + len`.
    #[test]
    fn huge_lengths_under_a_huge_limit_wait_for_more() {
        for len in [u64::MAX >> 1, (u64::MAX >> 1) - 13, 1 << 40] {
            let mut f = vec![0x81, 0xFF];
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            assert_eq!(parse(&mut f, usize::MAX), Ok(None), "{len}");
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }

    proptest! {
        /// Any frame a client may send parses back to its payload, however the bytes are
        /// split, and a prefix never parses as a frame.
        #[test]
        fn roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                     key in any::<[u8; 4]>(), fin in any::<bool>(), cut in any::<prop::sample::Index>()) {
            let f = client_frame(fin, 0x2, &payload, key);
            let at = cut.index(f.len());
            let mut prefix = f[..at].to_vec();
            prop_assert_eq!(parse(&mut prefix, 1 << 20), Ok(None));
            let mut whole = f.clone();
            whole.extend_from_slice(b"next frame");
            let h = parse(&mut whole, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(h.len, f.len());
            prop_assert_eq!(h.fin, fin);
            prop_assert_eq!(&whole[h.payload], &payload[..]);
        }

        /// Arbitrary bytes never panic and never claim more than the buffer holds.
        #[test]
        fn arbitrary_bytes(mut b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let n = b.len();
            if let Ok(Some(h)) = parse(&mut b, 200) {
                prop_assert!(h.len <= n && h.payload.end == h.len);
            }
        }
    }
}
