//! A TURN client written with the relay's own codec, for tests that must do what no real
//! client does: point allocations at the relay itself, send half frames, go silent while
//! holding an allocation. Real-client interop lives in e2e/relay.rs (coturn's and
//! webrtc-rs's clients); this one only has to be able to misbehave.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use icebreaker_relay::auth::long_term_key;
use icebreaker_relay::codec::{attr, tcp_frame_len, Class, Message, MessageWriter, Method};

pub enum Conn {
    Udp(UdpSocket),
    Tcp {
        s: TcpStream,
        buf: Vec<u8>,
    },
    /// TURN over DTLS (RFC 7350) with webrtc-rs's DTLS client.
    Dtls(Box<DtlsClient>),
}

/// A DTLS 1.2 client on a UDP socket the test chose (so that a test can restart a client
/// from the same port): webrtc-rs's sans-IO endpoint, driven here.
pub struct DtlsClient {
    pub sock: UdpSocket,
    endpoint: rtc_dtls::endpoint::Endpoint,
    server: SocketAddr,
}

impl DtlsClient {
    /// The ClientHello a DTLS client sends first, to `server` (for tests that send one
    /// without finishing the handshake).
    pub fn client_hello(local: SocketAddr, server: SocketAddr) -> Vec<u8> {
        let mut e =
            rtc_dtls::endpoint::Endpoint::new(local, rtc_shared::TransportProtocol::UDP, None);
        e.connect(Instant::now(), server, Self::config(server), None)
            .unwrap();
        e.poll_transmit().expect("a ClientHello").message.to_vec()
    }

    fn config(server: SocketAddr) -> std::sync::Arc<rtc_dtls::config::HandshakeConfig> {
        let provider = rtc_dtls::crypto_provider::default_provider().unwrap();
        std::sync::Arc::new(
            rtc_dtls::config::ConfigBuilder::default()
                .with_crypto_provider(provider)
                .with_insecure_skip_verify(true)
                .build(true, Some(server))
                .unwrap(),
        )
    }

    /// Handshakes with `server` from `sock` within `t`; Err says why not.
    pub fn connect(sock: UdpSocket, server: SocketAddr, t: Duration) -> Result<DtlsClient, String> {
        let local = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut c = DtlsClient {
            endpoint: rtc_dtls::endpoint::Endpoint::new(
                local,
                rtc_shared::TransportProtocol::UDP,
                None,
            ),
            sock,
            server,
        };
        c.endpoint
            .connect(Instant::now(), server, Self::config(server), None)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            c.flush();
            for ev in c.read_once()? {
                if matches!(ev, rtc_dtls::endpoint::EndpointEvent::HandshakeComplete) {
                    c.flush();
                    return Ok(c);
                }
            }
        }
        Err(format!("no DTLS handshake with {server} within {t:?}"))
    }

    fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.sock.send_to(&t.message, self.server).unwrap();
        }
    }

    /// One datagram from the server (or a retransmission timer) fed to the endpoint.
    fn read_once(&mut self) -> Result<Vec<rtc_dtls::endpoint::EndpointEvent>, String> {
        let mut b = [0u8; 65536];
        let events = match self.sock.recv_from(&mut b) {
            Ok((n, from)) if from == self.server => self
                .endpoint
                .read(Instant::now(), from, None, bytes::BytesMut::from(&b[..n]))
                .map_err(|e| format!("DTLS: {e}"))?,
            _ => Vec::new(),
        };
        let _ = self.endpoint.handle_timeout(self.server, Instant::now());
        self.flush();
        Ok(events)
    }

    pub fn send(&mut self, data: &[u8]) {
        self.endpoint
            .write(Instant::now(), self.server, data)
            .unwrap();
        self.flush();
    }

    /// The next decrypted datagram within `t`.
    pub fn recv(&mut self, t: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            for ev in self.read_once().ok()? {
                if let rtc_dtls::endpoint::EndpointEvent::ApplicationData(d) = ev {
                    return Some(d.to_vec());
                }
            }
        }
        None
    }
}

pub struct TurnProbe {
    pub conn: Conn,
    server: SocketAddr,
    user: String,
    key: [u8; 16],
    realm: String,
    nonce: Option<String>,
    next_tid: u64,
}

/// An answer: the error code (None for success) and the message bytes.
pub struct Answer {
    pub code: Option<u16>,
    pub raw: Vec<u8>,
}

impl Answer {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("a STUN answer")
    }
}

impl TurnProbe {
    /// Over UDP from 127.0.0.1 (or ::1 to an IPv6 server) with the harness's `test`/`test`
    /// user (realm example.org).
    pub fn udp(server: SocketAddr) -> TurnProbe {
        let s = UdpSocket::bind(if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        })
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self::new(Conn::Udp(s), server)
    }

    pub fn tcp(server: SocketAddr) -> TurnProbe {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self::new(Conn::Tcp { s, buf: Vec::new() }, server)
    }

    /// Over DTLS from `sock` (handshake within 5 s), with the harness's user.
    pub fn dtls(server: SocketAddr, sock: UdpSocket) -> Result<TurnProbe, String> {
        let c = DtlsClient::connect(sock, server, Duration::from_secs(5))?;
        Ok(Self::new(Conn::Dtls(Box::new(c)), server))
    }

    fn new(conn: Conn, server: SocketAddr) -> TurnProbe {
        TurnProbe {
            conn,
            server,
            user: "test".into(),
            key: long_term_key("test", "example.org", "test"),
            realm: "example.org".into(),
            nonce: None,
            next_tid: 1,
        }
    }

    /// Signs as `user` with `password` in `realm` instead of the harness's user.
    pub fn with_credentials(mut self, user: &str, realm: &str, password: &str) -> TurnProbe {
        self.user = user.into();
        self.realm = realm.into();
        self.key = long_term_key(user, realm, password);
        self
    }

    pub fn send(&mut self, b: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s) => {
                s.send_to(b, self.server).unwrap();
            }
            Conn::Tcp { s, .. } => s.write_all(b).unwrap(),
            Conn::Dtls(c) => c.send(b),
        }
    }

    /// The next datagram or stream frame within `t`; None on timeout or close.
    pub fn recv(&mut self, t: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + t;
        match &mut self.conn {
            Conn::Udp(s) => {
                let mut b = [0u8; 65536];
                while Instant::now() < deadline {
                    if let Ok((n, _)) = s.recv_from(&mut b) {
                        return Some(b[..n].to_vec());
                    }
                }
                None
            }
            Conn::Tcp { s, buf } => loop {
                if let Some(Some(n)) = tcp_frame_len(buf) {
                    if buf.len() >= n {
                        return Some(buf.drain(..n).collect());
                    }
                }
                if Instant::now() >= deadline {
                    return None;
                }
                let mut b = [0u8; 65536];
                match s.read(&mut b) {
                    Ok(0) => return None,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return None,
                }
            },
            Conn::Dtls(c) => c.recv(t),
        }
    }

    /// A signed request (after one 401/438 round for the nonce), answered within 2 s.
    pub fn request(&mut self, method: Method, f: &dyn Fn(&mut MessageWriter<'_>)) -> Answer {
        for _ in 0..3 {
            let tid: [u8; 12] = {
                self.next_tid += 1;
                let mut t = [0u8; 12];
                t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
                t
            };
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid);
            f(&mut w);
            if let Some(n) = &self.nonce {
                w.attr(attr::USERNAME, self.user.as_bytes())
                    .attr(attr::REALM, self.realm.as_bytes())
                    .attr(attr::NONCE, n.as_bytes())
                    .integrity(&self.key, false);
            }
            let raw = w.finish_with_fingerprint().to_vec();
            self.send(&raw);
            let deadline = Instant::now() + Duration::from_secs(2);
            let answer = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = self.recv(left).expect("an answer to the request");
                if Message::parse(&r).is_ok_and(|m| m.transaction_id == tid) {
                    break r;
                }
            };
            let m = Message::parse(&answer).unwrap();
            let code = m
                .get(attr::ERROR_CODE)
                .map(|v| attr::decode_error_code(v).unwrap().0);
            if matches!(code, Some(401) | Some(438)) {
                let fresh = m.text(attr::NONCE).map(|n| n.unwrap().to_string());
                if fresh.is_some() && fresh != self.nonce {
                    self.nonce = fresh;
                    continue;
                }
            }
            return Answer { code, raw: answer };
        }
        panic!("no answer after the nonce round");
    }

    /// Allocates (UDP relaying); the relayed address.
    pub fn allocate(&mut self, lifetime: Option<u32>) -> SocketAddr {
        let a = self.request(Method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, l);
            }
        });
        assert_eq!(a.code, None, "allocate failed");
        let m = a.msg();
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap()
    }

    /// An Allocate (UDP relaying) that may be refused: the error code, None on success.
    pub fn try_allocate(&mut self) -> Option<u16> {
        self.request(Method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
        .code
    }

    /// Refresh with lifetime 0 (deletes the allocation): the error code, None on success.
    pub fn release(&mut self) -> Option<u16> {
        self.request(Method::REFRESH, &|w| {
            w.u32(attr::LIFETIME, 0);
        })
        .code
    }

    /// CreatePermission for `peer`: the error code, None on success.
    pub fn permit(&mut self, peer: SocketAddr) -> Option<u16> {
        self.request(Method::CREATE_PERMISSION, &|w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .code
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        self.request(Method::CHANNEL_BIND, &|w| {
            w.attr(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .code
    }

    /// A Send indication carrying `data` to `peer` (never answered).
    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, rand::random());
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, data);
        let raw = w.finish().to_vec();
        self.send(&raw);
    }
}
