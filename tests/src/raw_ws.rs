//! A WebSocket client written out byte by byte (RFC 6455 client side), for tests that
//! send what real libraries never would: broken frames, floods, clients that never read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::Icebreaker;

/// A WebSocket client written out byte by byte, so tests can send what real libraries
/// never would.
pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq)]
pub enum In {
    Text(Value),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    /// The server closed the TCP connection.
    Eof,
}

/// One client frame as bytes: masked (unless `unmasked`), FIN as given (for tests that
/// write many frames in one go).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    let mask = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n if n < 126 => f.push(mask | n as u8),
        n if n <= 0xFFFF => {
            f.push(mask | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if unmasked {
        f.extend_from_slice(payload);
    } else {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    f
}

impl Raw {
    pub fn connect(ib: &Icebreaker) -> Raw {
        Self::connect_from(ib, None)
    }

    /// The standard handshake (RFC 6455's sample key) from `from`.
    pub fn connect_from(ib: &Icebreaker, from: Option<std::net::IpAddr>) -> Raw {
        let (status, head, raw) = Self::handshake_from(
            ib,
            from,
            "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        assert_eq!(status, 101, "{head}");
        assert!(
            head.to_lowercase().contains("sec-websocket-accept: ")
                && head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "RFC 6455 accept key: {head}"
        );
        raw
    }

    /// Sends the request with `headers`; returns the status, the response head and the
    /// connection.
    pub fn handshake(ib: &Icebreaker, headers: &str) -> (u16, String, Raw) {
        Self::handshake_from(ib, None, headers)
    }

    /// [`Raw::handshake`] from a chosen source address (another loopback IP stands for
    /// another client).
    pub fn handshake_from(
        ib: &Icebreaker,
        from: Option<std::net::IpAddr>,
        headers: &str,
    ) -> (u16, String, Raw) {
        let mut s = match from {
            None => TcpStream::connect(ib.http).unwrap(),
            Some(ip) => {
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(ib.http),
                    socket2::Type::STREAM,
                    None,
                )
                .unwrap();
                sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
                sock.connect(&ib.http.into()).unwrap();
                sock.into()
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /ws HTTP/1.1\r\nHost: {}\r\n{headers}\r\n", ib.http).unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut b).unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&b[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head[9..12].parse().unwrap();
        let rest = buf[end..].to_vec();
        (status, head, Raw { s, buf: rest })
    }

    /// One client frame: masked (unless `unmasked`), FIN as given.
    pub fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], unmasked: bool) {
        let f = client_frame(fin, opcode, payload, unmasked);
        self.s.write_all(&f).unwrap();
    }

    pub fn text(&mut self, v: Value) {
        self.frame(true, 0x1, v.to_string().as_bytes(), false);
    }

    /// The next frame from the server (which must not mask).
    pub fn recv(&mut self) -> In {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                assert_ne!(self.buf[0] & 0x80, 0, "server frames are final");
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
                    let p: Vec<u8> = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return match op {
                        0x1 => In::Text(serde_json::from_slice(&p).unwrap()),
                        0x9 => In::Ping(p),
                        0xA => In::Pong(p),
                        0x8 => In::Close(
                            u16::from_be_bytes([p[0], p[1]]),
                            String::from_utf8(p[2..].to_vec()).unwrap(),
                        ),
                        other => panic!("unexpected opcode {other}"),
                    };
                }
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return In::Eof,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
            }
        }
    }

    /// The next text message, skipping pings.
    pub fn message(&mut self) -> Value {
        loop {
            match self.recv() {
                In::Text(v) => return v,
                In::Ping(_) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The close frame, skipping messages and pings; then the server ends the TCP stream.
    pub fn close_code(&mut self) -> u16 {
        loop {
            match self.recv() {
                In::Close(code, _) => {
                    assert_eq!(self.recv(), In::Eof, "closed after the close frame");
                    return code;
                }
                In::Eof => panic!("connection ended without a close frame"),
                _ => {}
            }
        }
    }
}
