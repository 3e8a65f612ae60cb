//! Client frames in, whole messages out: fragments joined, UTF-8 checked, control frames
//! handed over between fragments, close frames read. No I/O: the caller reads bytes into
//! a buffer and walks the events in it with [`Reader::events`].
//!
//! Messages in one frame (what browsers send) are borrowed from the buffer, so a burst of
//! signals read in one `read` is handled without copying; only a fragmented message is
//! assembled, in memory the reader owns until it is whole.

use std::borrow::Cow;

use super::close::CloseCode;
use super::frame::{self, FrameError, Opcode};

/// What the client sent, one complete unit at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'b> {
    /// A whole text message, valid UTF-8.
    Text(Cow<'b, str>),
    /// A whole binary message.
    Binary(Cow<'b, [u8]>),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'b [u8]),
    /// A pong (an answer to our ping, or unsolicited).
    Pong(&'b [u8]),
    /// The client starts the closing handshake; its code when it gave one.
    Close(Option<CloseCode>),
}

/// Bytes that break RFC 6455 (or our size limit): the connection closes with
/// [`Violation::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Framing rules broken.
    #[error("{0}")]
    Protocol(&'static str),
    /// A text message (or close reason) that is not UTF-8.
    #[error("text frames must be UTF-8")]
    InvalidUtf8,
    /// A message over the limit: declared in a frame header, or reached by fragments.
    #[error("message of {0} bytes or more is over the limit")]
    TooLarge(u64),
}

impl Violation {
    /// The close frame's reason: a few words, no client data.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Protocol(r) => r,
            Violation::InvalidUtf8 => "text frames must be UTF-8",
            Violation::TooLarge(_) => "message too large",
        }
    }

    /// The close code this violation ends the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Violation::Protocol(_) => CloseCode::Protocol,
            Violation::InvalidUtf8 => CloseCode::InvalidPayload,
            Violation::TooLarge(_) => CloseCode::TooBig,
        }
    }
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge(n) => Violation::TooLarge(n),
            FrameError::Reserved => Violation::Protocol("reserved bits set"),
            FrameError::Opcode(_) => Violation::Protocol("unknown opcode"),
            FrameError::Unmasked => Violation::Protocol("client frames must be masked"),
            FrameError::BadControl => Violation::Protocol("bad control frame"),
            FrameError::BadLength => Violation::Protocol("bad frame length"),
        }
    }
}

/// The per-connection state of the read side: the message size limit and a fragmented
/// message in progress (rare: browsers send every message in one frame).
#[derive(Debug)]
pub struct Reader {
    max_message: usize,
    fragments: Option<(Opcode, Vec<u8>)>,
}

impl Reader {
    /// A reader for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Reader {
            max_message,
            fragments: None,
        }
    }

    /// The events in `buf` (bytes as read; payloads are unmasked in place). Walk them, then
    /// keep [`Events::rest`], the start of a frame not complete yet, for the next read.
    /// After a [`Violation`] there are no more events.
    pub fn events<'r, 'b>(&'r mut self, buf: &'b mut [u8]) -> Events<'r, 'b> {
        Events {
            reader: self,
            rest: buf,
            failed: false,
        }
    }
}

/// Iterator over the events in one buffer, see [`Reader::events`].
pub struct Events<'r, 'b> {
    reader: &'r mut Reader,
    rest: &'b mut [u8],
    failed: bool,
}

impl<'b> Events<'_, 'b> {
    /// What is left: the beginning of a frame that needs more bytes.
    pub fn rest(&self) -> &[u8] {
        self.rest
    }

    fn fail(&mut self, v: Violation) -> Option<Result<WsEvent<'b>, Violation>> {
        self.failed = true;
        Some(Err(v))
    }

    fn data(
        &mut self,
        fin: bool,
        op: Opcode,
        payload: &'b [u8],
    ) -> Option<Result<WsEvent<'b>, Violation>> {
        let r = &mut *self.reader;
        match op {
            Opcode::Text | Opcode::Binary if r.fragments.is_some() => self.fail(
                Violation::Protocol("a new message began inside a fragmented one"),
            ),
            Opcode::Text | Opcode::Binary if fin => Some(message(op, Cow::Borrowed(payload))),
            Opcode::Text | Opcode::Binary => {
                r.fragments = Some((op, payload.to_vec()));
                None
            }
            _ => {
                let Some((op, mut buf)) = r.fragments.take() else {
                    return self.fail(Violation::Protocol("continuation without a message"));
                };
                if buf.len() + payload.len() > r.max_message {
                    return self.fail(Violation::TooLarge((buf.len() + payload.len()) as u64));
                }
                buf.extend_from_slice(payload);
                if !fin {
                    r.fragments = Some((op, buf));
                    return None;
                }
                Some(message(op, Cow::Owned(buf)))
            }
        }
    }
}

fn message(op: Opcode, payload: Cow<'_, [u8]>) -> Result<WsEvent<'_>, Violation> {
    if op == Opcode::Binary {
        return Ok(WsEvent::Binary(payload));
    }
    Ok(WsEvent::Text(match payload {
        Cow::Borrowed(b) => {
            Cow::Borrowed(std::str::from_utf8(b).map_err(|_| Violation::InvalidUtf8)?)
        }
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).map_err(|_| Violation::InvalidUtf8)?),
    }))
}

fn close(payload: &[u8]) -> Result<WsEvent<'_>, Violation> {
    match payload {
        [] => Ok(WsEvent::Close(None)),
        [_] => Err(Violation::Protocol("a close payload of one byte")),
        [a, b, reason @ ..] => {
            // §5.5.1: the reason is UTF-8; we do not keep it, but must check it.
            std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(WsEvent::Close(Some(u16::from_be_bytes([*a, *b]).into())))
        }
    }
}

impl<'b> Iterator for Events<'_, 'b> {
    type Item = Result<WsEvent<'b>, Violation>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            let head = match frame::parse(self.rest, self.reader.max_message) {
                Ok(None) => return None,
                Ok(Some(h)) => h,
                Err(e) => return self.fail(e.into()),
            };
            // Split the frame off; what the event borrows is only read from here on.
            let (this, next) = std::mem::take(&mut self.rest).split_at_mut(head.len);
            self.rest = next;
            let this: &'b [u8] = this;
            let payload = &this[head.payload];
            let event = match head.opcode {
                Opcode::Ping => Some(Ok(WsEvent::Ping(payload))),
                Opcode::Pong => Some(Ok(WsEvent::Pong(payload))),
                Opcode::Close => Some(close(payload)),
                op => self.data(head.fin, op, payload),
            };
            match event {
                Some(Err(v)) => return self.fail(v),
                Some(ok) => return Some(ok),
                None => continue,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser writes it.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame::client_frame(fin, opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    fn all(r: &mut Reader, mut bytes: Vec<u8>) -> (Vec<String>, usize) {
        let mut ev = r.events(&mut bytes);
        let out = ev.by_ref().map(|e| format!("{e:?}")).collect();
        (out, ev.rest().len())
    }

    #[test]
    fn whole_messages_are_borrowed_and_a_partial_frame_is_left() {
        let mut r = Reader::new(1024);
        let mut b = client(true, 1, b"{\"type\":\"ping\"}");
        b.extend(client(true, 2, &[1, 2]));
        let tail = client(true, 1, b"next");
        b.extend_from_slice(&tail[..3]);
        let mut ev = r.events(&mut b);
        match ev.next() {
            Some(Ok(WsEvent::Text(Cow::Borrowed(t)))) => assert_eq!(t, "{\"type\":\"ping\"}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ev.next(),
            Some(Ok(WsEvent::Binary(Cow::Borrowed(&[1, 2][..]))))
        );
        assert_eq!(ev.next(), None);
        assert_eq!(ev.rest().len(), 3);
    }

    #[test]
    fn fragments_are_joined_with_a_ping_in_between() {
        let mut r = Reader::new(1024);
        let mut b = client(false, 1, "hé".as_bytes());
        b.extend(client(true, 9, b"p"));
        b.extend(client(false, 0, b"ll"));
        let (ev, rest) = all(&mut r, b);
        assert_eq!(
            ev,
            [format!("{:?}", Ok::<_, Violation>(WsEvent::Ping(b"p")))]
        );
        assert_eq!(rest, 0);
        // The message is completed by a later read.
        let mut b = client(true, 0, b"o");
        let mut evs = r.events(&mut b);
        match evs.next() {
            Some(Ok(WsEvent::Text(Cow::Owned(t)))) => assert_eq!(t, "héllo"),
            other => panic!("{other:?}"),
        }
        // A UTF-8 sequence split across fragments is fine; only the whole is checked.
        let e = "é".as_bytes();
        let mut b = client(false, 1, &e[..1]);
        b.extend(client(true, 0, &e[1..]));
        let mut evs = r.events(&mut b);
        assert_eq!(evs.next(), Some(Ok(WsEvent::Text(Cow::Owned("é".into())))));
    }

    #[test]
    fn violations_end_the_stream_with_their_close_code() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (client(true, 1, &[0xff, 0xfe]), CloseCode::InvalidPayload),
            (client(true, 0, b"x"), CloseCode::Protocol),
            (
                [client(false, 1, b"a"), client(true, 1, b"b")].concat(),
                CloseCode::Protocol,
            ),
            (client(true, 8, &[3]), CloseCode::Protocol),
            (client(true, 8, &[3, 232, 0xff]), CloseCode::InvalidPayload),
            (client(true, 1, &[b'a'; 200]), CloseCode::TooBig),
            (
                [client(false, 1, &[b'a'; 60]), client(true, 0, &[b'a'; 60])].concat(),
                CloseCode::TooBig,
            ),
            (
                {
                    let mut f = client(true, 1, b"x");
                    f[1] &= 0x7f;
                    f
                },
                CloseCode::Protocol,
            ),
        ];
        for (bytes, code) in cases {
            let mut r = Reader::new(100);
            let mut b = bytes.clone();
            b.extend(client(true, 1, b"after"));
            let mut ev = r.events(&mut b);
            let got = loop {
                match ev.next() {
                    Some(Ok(_)) => continue,
                    Some(Err(v)) => break v,
                    None => panic!("no violation in {bytes:?}"),
                }
            };
            assert_eq!(got.close_code(), code, "{bytes:?}");
            assert_eq!(ev.next(), None, "nothing after a violation");
        }
    }

    #[test]
    fn close_frames() {
        let mut r = Reader::new(100);
        let mut b = client(true, 8, &[]);
        assert_eq!(r.events(&mut b).next(), Some(Ok(WsEvent::Close(None))));
        let mut b = client(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(
            r.events(&mut b).next(),
            Some(Ok(WsEvent::Close(Some(CloseCode::Normal))))
        );
    }
}
