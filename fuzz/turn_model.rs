//! A TURN shard ([`Server`]) driven through sequences of operations from several clients
//! and peers, with a fake clock and fake relayed sockets, checking invariants after every
//! step.
//!
//! One model, two drivers: `fuzz/fuzz_targets/turn_server.rs` (libFuzzer, operations from
//! `arbitrary`) and `relay/tests/prop_server.rs` (proptest, CI-sized) both include this
//! file with `#[path]`, so they run the same operations and check the same invariants. It
//! uses only the relay crate's public API and std (no `arbitrary`, no `proptest`).
//!
//! Invariants, after every operation:
//! - the core never panics (nor does the fake socket layer: no double bind, no close of a
//!   socket it never opened);
//! - every `Transmit::Client` goes to one of the known client 5-tuples; an answer to a
//!   client's packet goes back to that client; what a peer sends reaches the owner of
//!   the relayed socket it arrived on, as ChannelData or a Data indication carrying
//!   exactly the peer's bytes;
//! - every `Transmit::Peer` leaves from a relayed address that is open in the fake sockets
//!   and belongs to the sending client's allocation, towards a peer that has a permission
//!   and is not the relay's listen address;
//! - a well-formed request is always answered, with a STUN message of the same method and
//!   transaction that parses, has a valid FINGERPRINT and, when it is a success to an
//!   authenticated request, verifies with the client's key;
//! - `allocation_count()` equals the number of open fake sockets, every open socket is the
//!   relayed address of some client's allocation, and the shared quota counts exactly the
//!   live allocations;
//! - a packet to a relayed socket that was closed never reaches anyone;
//! - and at the end, `shutdown()` leaves no open socket, no allocation and no quota held.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use icebreaker_relay::auth::{long_term_key, mint_rest_credentials, Key};
use icebreaker_relay::codec::{
    self, attr, Class, Message, MessageWriter, Method, PacketKind, CHANNEL_MAX, CHANNEL_MIN,
};
use icebreaker_relay::server::{AllocationId, RelaySockets, Server, Shared, Transmit};
use icebreaker_relay::{FiveTuple, RelayArgs, Transport};

/// Clients; each has a UDP and a TCP 5-tuple, so `conn` indices are `0..2 * CLIENTS`.
pub const CLIENTS: usize = 4;
pub const CONNS: usize = 2 * CLIENTS;
const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "example.org";
const LISTEN: &str = "127.0.0.1:3478";
const REST_SECRET: &str = "rest-secret";

/// Peer addresses: allowed ones (IPv4, IPv6, IPv4-mapped IPv6), the relay's own listen
/// address in two spellings (always refused), and one the default policy refuses. An index
/// past the end names the relayed address of an open allocation instead (relay to relay).
pub const PEERS: [&str; 8] = [
    "127.0.0.2:7000",
    "127.0.0.2:7001",
    "127.0.0.3:9",
    "[fd00::2]:7000",
    "[::ffff:127.0.0.2]:7000",
    "127.0.0.1:3478",
    "[::ffff:127.0.0.1]:3478",
    "10.0.0.1:9",
];

/// Server configurations worth exploring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Defaults, 16 relayed ports, IPv4 and IPv6 relaying.
    Roomy,
    /// Six ports (one busy), quotas, a bandwidth cap, short lifetimes and nonces, at most
    /// three permissions: every limit within reach of a short sequence.
    Tight,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// Arbitrary bytes from 5-tuple `conn`.
    Raw { conn: u8, data: Vec<u8> },
    /// A well-formed request from `conn`, signed with the right key and the latest nonce
    /// (retried once with the new nonce after a 401 or 438, as clients do). `corrupt`
    /// XORs one byte of the finished message (position modulo its length) and sends it
    /// once: the signed message the fuzzer could never forge, slightly broken.
    Request {
        conn: u8,
        req: Req,
        sha256: bool,
        fingerprint: bool,
        corrupt: Option<(u16, u8)>,
    },
    /// Bytes from peer `from` (see [`PEERS`]) to relayed socket `relay`: an index into the
    /// open sockets, then into recently closed ones.
    Peer { relay: u8, from: u8, data: Vec<u8> },
    /// The clock moves on by `millis`, then `handle_timeout` runs.
    Advance { millis: u32 },
    /// The client's transport connection closes.
    Close { conn: u8 },
}

#[derive(Debug, Clone)]
pub enum Req {
    Binding,
    Allocate {
        lifetime: Option<u32>,
        /// 0: no REQUESTED-ADDRESS-FAMILY, 1: IPv4, 2: IPv6, other: that (bad) family.
        family: u8,
        /// EVEN-PORT, with the R (reserve) bit when true.
        even_port: Option<bool>,
        /// RESERVATION-TOKEN: one the server handed out (index), or garbage when none.
        token: Option<u8>,
        dont_fragment: bool,
        /// REQUESTED-TRANSPORT UDP (17); otherwise TCP (6), which is refused.
        udp: bool,
        /// Reuse the transaction id of this 5-tuple's last Allocate (a retransmission).
        retransmit: bool,
    },
    Refresh {
        lifetime: Option<u32>,
    },
    CreatePermission {
        peers: Vec<u8>,
    },
    ChannelBind {
        channel: u16,
        peer: u8,
    },
    /// Send indication (not signed: indications carry no integrity).
    Send {
        peer: u8,
        data: Vec<u8>,
    },
    /// ChannelData, padded to 4 bytes when `pad`.
    ChannelData {
        channel: u16,
        data: Vec<u8>,
        pad: bool,
    },
}

/// Relayed sockets, in the order they were opened (so an operation's `relay` index means
/// the same socket from run to run, whatever random port the pool picked).
#[derive(Default)]
struct FakeSockets {
    open: Vec<(SocketAddr, AllocationId)>,
    /// Recently closed, for packets arriving on a socket that is gone.
    closed: Vec<(SocketAddr, AllocationId)>,
    busy: Vec<u16>,
    ended: Vec<FiveTuple>,
}

impl FakeSockets {
    fn id(&self, addr: SocketAddr) -> Option<AllocationId> {
        self.open
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, id)| *id)
    }
}

impl RelaySockets for FakeSockets {
    fn open(&mut self, addr: SocketAddr, id: AllocationId, _df: bool) -> std::io::Result<()> {
        if self.busy.contains(&addr.port()) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        assert!(self.id(addr).is_none(), "double bind of {addr}");
        assert!(
            self.open.iter().all(|(_, i)| *i != id),
            "allocation id {id:?} handed out twice"
        );
        self.open.push((addr, id));
        Ok(())
    }

    fn close(&mut self, addr: SocketAddr) {
        let i = self
            .open
            .iter()
            .position(|(a, _)| *a == addr)
            .unwrap_or_else(|| panic!("close of unknown {addr}"));
        let s = self.open.remove(i);
        if self.closed.len() == 8 {
            self.closed.remove(0);
        }
        self.closed.push(s);
    }

    fn allocation_ended(&mut self, five_tuple: &FiveTuple) {
        self.ended.push(*five_tuple);
    }
}

/// One client 5-tuple and what its client knows.
struct Conn {
    ft: FiveTuple,
    user: String,
    key: Key,
    nonce: Option<String>,
    seq: u32,
    allocate_tid: Option<[u8; 12]>,
}

/// A packet the core asked to send, copied out of its buffer.
#[derive(Debug)]
enum Out {
    Client {
        to: FiveTuple,
        data: Vec<u8>,
    },
    Peer {
        relay: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

impl From<Transmit<'_>> for Out {
    fn from(t: Transmit<'_>) -> Self {
        match t {
            Transmit::Client { to, data } => Out::Client {
                to,
                data: data.to_vec(),
            },
            Transmit::Peer { relay, to, data } => Out::Peer {
                relay,
                to,
                data: data.to_vec(),
            },
        }
    }
}

/// What a run got to do, to tell a model that reaches deep states from one that is stuck
/// at authentication.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub allocations: usize,
    pub permissions: usize,
    pub channels: usize,
    pub to_peer: usize,
    pub from_peer: usize,
    pub relay_to_relay: usize,
}

pub struct World {
    pub stats: Stats,
    shared: Arc<Shared>,
    server: Server,
    sockets: FakeSockets,
    conns: Vec<Conn>,
    tokens: Vec<[u8; 8]>,
    ports: (u16, u16),
    now: Instant,
    buf: Vec<u8>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

impl World {
    pub fn new(setup: Setup) -> World {
        let mut args = RelayArgs {
            users: vec!["alice:pw".into(), "bob:pw".into()],
            auth_secrets: vec![REST_SECRET.into()],
            realm: Some(REALM.into()),
            listen: vec![addr(LISTEN)],
            relay_ip: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            allow_peer: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            relay_ports: Some("50000-50015".into()),
            ..Default::default()
        };
        let mut busy = Vec::new();
        if setup == Setup::Tight {
            args.relay_ports = Some("50000-50005".into());
            args.user_quota = Some(2);
            args.max_allocations = Some(3);
            args.max_bps = Some(8_000);
            args.nonce_lifetime = Some(30);
            args.default_lifetime = Some(60);
            args.max_lifetime = Some(120);
            args.permission_lifetime = Some(20);
            args.channel_lifetime = Some(40);
            busy.push(50001);
        }
        let mut config = args.resolve().expect("valid configuration");
        if setup == Setup::Tight {
            config.turn.max_permissions = 3;
        }
        let ports = config.turn.relay_ports;
        let t0 = Instant::now();
        let shared = Shared::with_clock(config.turn, &config.listen, t0, UNIX0);
        let server = Server::new(Arc::clone(&shared), ());
        // alice twice (her quota), bob over IPv6, and carol with TURN REST credentials
        // that expire five minutes in.
        let (rest_user, rest_pass) =
            mint_rest_credentials(REST_SECRET.as_bytes(), UNIX0 + 300, "carol");
        let clients = [
            ("192.0.2.1:40000", "alice".to_string(), "pw".to_string()),
            ("192.0.2.2:40001", "alice".to_string(), "pw".to_string()),
            ("[2001:db8::3]:40002", "bob".to_string(), "pw".to_string()),
            ("192.0.2.4:40003", rest_user, rest_pass),
        ];
        let mut conns = Vec::new();
        for (a, user, pass) in clients {
            for transport in [Transport::Udp, Transport::Tcp] {
                conns.push(Conn {
                    ft: FiveTuple {
                        client: addr(a),
                        server: addr(LISTEN),
                        transport,
                    },
                    key: long_term_key(&user, REALM, &pass),
                    user: user.clone(),
                    nonce: None,
                    seq: 0,
                    allocate_tid: None,
                });
            }
        }
        World {
            stats: Stats::default(),
            shared,
            server,
            sockets: FakeSockets {
                busy,
                ..Default::default()
            },
            conns,
            tokens: Vec::new(),
            ports,
            now: t0,
            buf: Vec::new(),
        }
    }

    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Raw { conn, data } => {
                let ft = self.conns[*conn as usize % CONNS].ft;
                let _ = self.client_sends(ft, data);
            }
            Op::Request {
                conn,
                req,
                sha256,
                fingerprint,
                corrupt,
            } => self.request(*conn as usize % CONNS, req, *sha256, *fingerprint, *corrupt),
            Op::Peer { relay, from, data } => self.peer_sends(*relay as usize, *from, data),
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(*millis));
                self.server.handle_timeout(self.now, &mut self.sockets);
            }
            Op::Close { conn } => {
                let ft = self.conns[*conn as usize % CONNS].ft;
                self.server.close_client(&ft, &mut self.sockets);
                assert!(self.server.allocation(&ft).is_none());
            }
        }
        self.check();
    }

    /// Deletes everything; nothing may be left behind.
    pub fn finish(mut self) {
        self.server.shutdown(&mut self.sockets);
        assert!(
            self.sockets.open.is_empty(),
            "open after shutdown: {:?}",
            self.sockets.open
        );
        assert_eq!(self.server.allocation_count(), 0);
        assert_eq!(self.shared.quota.total(), 0, "quota held after shutdown");
    }

    fn check(&self) {
        let s = &self.sockets;
        assert_eq!(
            self.server.allocation_count(),
            s.open.len(),
            "allocations and open sockets disagree: {:?}",
            s.open
        );
        let mut owned = 0;
        for c in &self.conns {
            if let Some(a) = self.server.allocation(&c.ft) {
                owned += 1;
                assert_eq!(a.five_tuple, c.ft);
                assert!(s.id(a.relay).is_some(), "{} is not open", a.relay);
                assert!((self.ports.0..=self.ports.1).contains(&a.relay.port()));
                assert!(!s.busy.contains(&a.relay.port()));
            }
        }
        assert_eq!(owned, s.open.len(), "an open socket has no known owner");
        assert_eq!(
            self.shared.quota.total() as usize,
            owned,
            "quota out of step with the allocations"
        );
        if owned > 0 {
            assert!(self.server.poll_timeout().is_some());
        }
        for ft in &s.ended {
            assert!(
                self.conns.iter().any(|c| c.ft == *ft),
                "ended unknown {ft:?}"
            );
        }
    }

    fn is_known(&self, ft: &FiveTuple) -> bool {
        self.conns.iter().any(|c| c.ft == *ft)
    }

    /// A packet from `ft`; returns the answer to the client, if any. Packets to peers are
    /// checked, and one addressed to a relayed socket of ours is delivered to it.
    fn client_sends(&mut self, ft: FiveTuple, data: &[u8]) -> Option<Vec<u8>> {
        let out = self
            .server
            .handle_client(self.now, ft, data, &mut self.sockets)
            .map(Out::from)?;
        match out {
            Out::Client { to, data: answer } => {
                assert_eq!(to, ft, "an answer goes back to the client that asked");
                if Message::parse(&answer).is_err() {
                    // Only the RFC 3489 answer lacks the magic cookie.
                    assert_eq!(&answer[0..2], &[0x01, 0x01], "unparsable answer");
                    assert_eq!(&answer[4..20], &data[4..20]);
                }
                Some(answer)
            }
            Out::Peer { relay, to, data } => {
                self.check_to_peer(&ft, relay, to);
                self.stats.to_peer += 1;
                // Relay to relay: the packet arrives on the other allocation's socket.
                if let Some(id) = self.sockets.id(to) {
                    let back = self.server.handle_peer(self.now, id, relay, &data);
                    let back = back.map(Out::from);
                    self.stats.relay_to_relay += usize::from(back.is_some());
                    self.check_from_peer(to, relay, &data, back);
                }
                None
            }
        }
    }

    fn check_to_peer(&self, ft: &FiveTuple, relay: SocketAddr, to: SocketAddr) {
        assert!(
            self.sockets.id(relay).is_some(),
            "sent from {relay}, which is not open"
        );
        let a = self
            .server
            .allocation(ft)
            .expect("only a client with an allocation sends to peers");
        assert_eq!(a.relay, relay, "sent from another client's relayed address");
        assert!(a.is_permitted(to.ip(), self.now), "{to} has no permission");
        assert!(
            !self.shared.own.contains(to),
            "relayed to our own address {to}"
        );
        assert_eq!(
            to.ip(),
            to.ip().to_canonical(),
            "peer address not canonical"
        );
    }

    /// What a peer's packet to relayed socket `relay` produced.
    fn check_from_peer(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        sent: &[u8],
        out: Option<Out>,
    ) {
        let Some(out) = out else { return };
        self.stats.from_peer += 1;
        let Out::Client { to, data } = out else {
            panic!("a peer's packet goes to a client, not to {out:?}");
        };
        assert!(self.is_known(&to), "to unknown 5-tuple {to:?}");
        let a = self
            .server
            .allocation(&to)
            .expect("to a client with an allocation");
        assert_eq!(a.relay, relay, "delivered to the wrong allocation's client");
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        assert!(a.is_permitted(peer.ip(), self.now));
        match codec::classify(&data) {
            PacketKind::ChannelData => {
                let (ch, payload) = codec::parse_channel_data(&data).expect("ChannelData");
                assert!((CHANNEL_MIN..=CHANNEL_MAX).contains(&ch));
                assert_eq!(payload, sent);
                if to.transport == Transport::Tcp {
                    assert_eq!(data.len() % 4, 0, "TCP ChannelData is padded");
                }
            }
            PacketKind::Stun => {
                let m = Message::parse(&data).expect("Data indication parses");
                assert_eq!((m.method, m.class), (Method::DATA, Class::Indication));
                assert_eq!(m.get(attr::DATA), Some(sent));
                assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(peer)));
            }
            PacketKind::Other => panic!("neither ChannelData nor STUN to the client"),
        }
    }

    fn peer_sends(&mut self, relay: usize, from: u8, data: &[u8]) {
        let s = &self.sockets;
        let n = s.open.len() + s.closed.len();
        if n == 0 {
            return;
        }
        let i = relay % n;
        let (relay, id, is_open) = if i < s.open.len() {
            (s.open[i].0, s.open[i].1, true)
        } else {
            let (a, id) = s.closed[i - s.open.len()];
            (a, id, s.id(a) == Some(id))
        };
        let peer = self.peer(from);
        let out = self
            .server
            .handle_peer(self.now, id, peer, data)
            .map(Out::from);
        if !is_open {
            assert!(out.is_none(), "a closed socket's packet went out: {out:?}");
        }
        self.check_from_peer(relay, peer, data, out);
    }

    fn peer(&self, i: u8) -> SocketAddr {
        let i = i as usize;
        if i >= PEERS.len() && !self.sockets.open.is_empty() {
            return self.sockets.open[(i - PEERS.len()) % self.sockets.open.len()].0;
        }
        addr(PEERS[i % PEERS.len()])
    }

    fn next_tid(&mut self, c: usize) -> [u8; 12] {
        let conn = &mut self.conns[c];
        conn.seq += 1;
        let mut tid = [0u8; 12];
        tid[0] = c as u8;
        tid[8..].copy_from_slice(&conn.seq.to_be_bytes());
        tid
    }

    fn request(
        &mut self,
        c: usize,
        req: &Req,
        sha256: bool,
        fingerprint: bool,
        corrupt: Option<(u16, u8)>,
    ) {
        let ft = self.conns[c].ft;
        let (method, signed) = match req {
            Req::Binding => (Method::BINDING, false),
            Req::Allocate { .. } => (Method::ALLOCATE, true),
            Req::Refresh { .. } => (Method::REFRESH, true),
            Req::CreatePermission { .. } => (Method::CREATE_PERMISSION, true),
            Req::ChannelBind { .. } => (Method::CHANNEL_BIND, true),
            Req::Send { peer, data } => {
                let peer = self.peer(*peer);
                let tid = self.next_tid(c);
                let mut w = MessageWriter::new(&mut self.buf, Method::SEND, Class::Indication, tid);
                w.xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, data);
                let mut raw = if fingerprint {
                    w.finish_with_fingerprint().to_vec()
                } else {
                    w.finish().to_vec()
                };
                flip(&mut raw, corrupt);
                let answer = self.client_sends(ft, &raw);
                assert!(
                    answer.is_none() || corrupt.is_some(),
                    "an indication is never answered"
                );
                return;
            }
            Req::ChannelData { channel, data, pad } => {
                let data = &data[..data.len().min(u16::MAX as usize)];
                let mut raw = Vec::new();
                codec::write_channel_data(&mut raw, *channel, data, *pad);
                flip(&mut raw, corrupt);
                let answer = self.client_sends(ft, &raw);
                // Outside the channel range the bytes may well read as STUN.
                let channel_data = (CHANNEL_MIN..=CHANNEL_MAX).contains(channel);
                assert!(
                    answer.is_none() || corrupt.is_some() || !channel_data,
                    "ChannelData is never answered"
                );
                return;
            }
        };
        for _ in 0..2 {
            let tid = match req {
                Req::Allocate {
                    retransmit: true, ..
                } if self.conns[c].allocate_tid.is_some() => self.conns[c].allocate_tid.unwrap(),
                _ => self.next_tid(c),
            };
            if method == Method::ALLOCATE {
                self.conns[c].allocate_tid = Some(tid);
            }
            let mut raw = self.build(c, req, method, tid, signed, sha256, fingerprint);
            flip(&mut raw, corrupt);
            let answer = self.client_sends(ft, &raw);
            if corrupt.is_some() {
                // Whatever came back was checked in `client_sends`; nothing more is promised.
                return;
            }
            let answer = answer.expect("a well-formed request is answered");
            let m = Message::parse(&answer).expect("the answer parses");
            assert_eq!(m.transaction_id, tid);
            assert_eq!(m.method, method);
            assert!(matches!(m.class, Class::Success | Class::Error));
            assert!(m.verify_fingerprint());
            assert_eq!(m.has_fingerprint(), fingerprint || m.has_integrity());
            let code = m
                .get(attr::ERROR_CODE)
                .map(|v| attr::decode_error_code(v).expect("ERROR-CODE parses").0);
            assert_eq!(code.is_some(), m.class == Class::Error);
            if let Some(code) = code {
                assert!((300..700).contains(&code), "error code {code}");
            }
            let nonce = m
                .text(attr::NONCE)
                .map(|n| n.expect("NONCE is UTF-8").to_string());
            if matches!(code, Some(401 | 438)) {
                assert!(nonce.is_some(), "{code:?} without a NONCE");
                assert_eq!(m.text(attr::REALM).map(|r| r.unwrap()), Some(REALM));
            }
            let key = self.conns[c].key;
            if signed && m.class == Class::Success {
                assert!(m.verify_integrity(&key), "a success answer is signed");
            }
            if m.has_integrity() {
                assert!(m.verify_integrity(&key), "signed with another key");
            }
            if m.class == Class::Success {
                self.on_success(c, method, &m);
            }
            if matches!(code, Some(401 | 438)) && nonce != self.conns[c].nonce {
                self.conns[c].nonce = nonce;
                continue;
            }
            return;
        }
    }

    fn on_success(&mut self, c: usize, method: Method, m: &Message<'_>) {
        let ft = self.conns[c].ft;
        match method {
            Method::BINDING => {
                assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(ft.client)));
            }
            Method::ALLOCATE => {
                let relayed = m
                    .xor_address(attr::XOR_RELAYED_ADDRESS)
                    .expect("XOR-RELAYED-ADDRESS")
                    .expect("parses");
                assert!(self.sockets.id(relayed).is_some(), "{relayed} is not open");
                let a = self.server.allocation(&ft).expect("allocated");
                assert_eq!(a.advertised, relayed);
                assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(Ok(ft.client)));
                assert!(m.has(attr::LIFETIME));
                self.stats.allocations += 1;
                if let Some(t) = m.get(attr::RESERVATION_TOKEN) {
                    let t: [u8; 8] = t.try_into().expect("8-byte token");
                    self.tokens.push(t);
                }
            }
            Method::REFRESH => {
                let life = attr::decode_u32(m.get(attr::LIFETIME).expect("LIFETIME")).unwrap();
                assert_eq!(life == 0, self.server.allocation(&ft).is_none());
            }
            Method::CREATE_PERMISSION => {
                assert!(self.server.allocation(&ft).is_some());
                self.stats.permissions += 1;
            }
            _ => {
                assert!(self.server.allocation(&ft).is_some());
                self.stats.channels += 1;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        c: usize,
        req: &Req,
        method: Method,
        tid: [u8; 12],
        signed: bool,
        sha256: bool,
        fingerprint: bool,
    ) -> Vec<u8> {
        let peers: Vec<SocketAddr> = match req {
            // At most eight, so the message stays within the parser's MAX_ATTRIBUTES.
            Req::CreatePermission { peers } => {
                peers.iter().take(8).map(|p| self.peer(*p)).collect()
            }
            Req::ChannelBind { peer, .. } => vec![self.peer(*peer)],
            _ => Vec::new(),
        };
        let token = match req {
            Req::Allocate { token: Some(i), .. } => Some(if self.tokens.is_empty() {
                [*i; 8]
            } else {
                self.tokens[*i as usize % self.tokens.len()]
            }),
            _ => None,
        };
        let conn = &self.conns[c];
        let mut w = MessageWriter::new(&mut self.buf, method, Class::Request, tid);
        match req {
            Req::Allocate {
                lifetime,
                family,
                even_port,
                dont_fragment,
                udp,
                ..
            } => {
                w.attr(
                    attr::REQUESTED_TRANSPORT,
                    &[if *udp { 17 } else { 6 }, 0, 0, 0],
                );
                if let Some(l) = lifetime {
                    w.u32(attr::LIFETIME, *l);
                }
                if *family != 0 {
                    w.attr(attr::REQUESTED_ADDRESS_FAMILY, &[*family, 0, 0, 0]);
                }
                if let Some(r) = even_port {
                    w.attr(attr::EVEN_PORT, &[if *r { 0x80 } else { 0 }]);
                }
                if let Some(t) = token {
                    w.attr(attr::RESERVATION_TOKEN, &t);
                }
                if *dont_fragment {
                    w.attr(attr::DONT_FRAGMENT, &[]);
                }
            }
            Req::Refresh { lifetime } => {
                if let Some(l) = lifetime {
                    w.u32(attr::LIFETIME, *l);
                }
            }
            Req::CreatePermission { .. } => {
                for p in &peers {
                    w.xor_address(attr::XOR_PEER_ADDRESS, *p);
                }
            }
            Req::ChannelBind { channel, .. } => {
                w.attr(
                    attr::CHANNEL_NUMBER,
                    &[(channel >> 8) as u8, *channel as u8, 0, 0],
                );
                for p in &peers {
                    w.xor_address(attr::XOR_PEER_ADDRESS, *p);
                }
            }
            Req::Binding | Req::Send { .. } | Req::ChannelData { .. } => {}
        }
        if signed {
            if let Some(n) = &conn.nonce {
                w.attr(attr::USERNAME, conn.user.as_bytes())
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(attr::NONCE, n.as_bytes())
                    .integrity(&conn.key, sha256);
            }
        }
        if fingerprint {
            w.finish_with_fingerprint().to_vec()
        } else {
            w.finish().to_vec()
        }
    }
}

fn flip(raw: &mut [u8], corrupt: Option<(u16, u8)>) {
    if let Some((pos, x)) = corrupt {
        if !raw.is_empty() {
            let n = raw.len();
            raw[pos as usize % n] ^= x.max(1);
        }
    }
}

/// Runs a whole sequence in a fresh world, then shuts it down.
pub fn run(setup: Setup, ops: &[Op]) -> Stats {
    let mut w = World::new(setup);
    for op in ops {
        w.step(op);
    }
    let stats = w.stats;
    w.finish();
    stats
}
