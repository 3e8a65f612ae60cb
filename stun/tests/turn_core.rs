//! The sans-IO TURN core driven with a fake clock and fake sockets: no ports, no sleeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use icebreaker_stun::auth::{long_term_key, mint_rest_credentials, Key};
use icebreaker_stun::codec::{attr, Class, Message, MessageWriter, Method};
use icebreaker_stun::turn::server::{
    AllocationId, ConnectionId, RelaySockets, Server, Shared, Transmit,
};
use icebreaker_stun::turn::{Config, FiveTuple, Transport};

/// The relay's client-facing address in these tests (never a valid peer).
const LISTEN: &str = "127.0.0.1:3478";

/// The configuration most tests use: two long-term users, a REST secret, loopback peers
/// allowed, 20 relayed ports.
fn config() -> Config {
    Config {
        users: vec![("alice".into(), "pw".into()), ("bob".into(), "pw".into())],
        auth_secrets: vec!["rest-secret".into()],
        realm: "example.org".into(),
        allow_peer: vec!["127.0.0.0/8".parse().unwrap()],
        relay_ports: (50000, 50019),
        ..Default::default()
    }
}

#[derive(Default)]
struct FakeSockets {
    open: HashMap<SocketAddr, AllocationId>,
    dont_fragment: Vec<SocketAddr>,
    /// Ports "taken by another program".
    busy: Vec<u16>,
    /// TCP listeners of TCP allocations (RFC 6062).
    tcp: HashMap<SocketAddr, AllocationId>,
    /// Outgoing connections asked for: (relayed address, peer, connection).
    connects: Vec<(SocketAddr, SocketAddr, ConnectionId)>,
    /// Peer data connections the core closed.
    closed: Vec<ConnectionId>,
    /// Client data connections joined to peer connections.
    bound: Vec<(ConnectionId, FiveTuple)>,
    /// ConnectionBinds sent on to another shard.
    handed: Vec<(FiveTuple, usize)>,
}

impl RelaySockets for FakeSockets {
    fn open(&mut self, addr: SocketAddr, id: AllocationId, df: bool) -> std::io::Result<()> {
        if df {
            self.dont_fragment.push(addr);
        }
        if self.busy.contains(&addr.port()) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        assert!(
            self.open.insert(addr, id).is_none(),
            "double bind of {addr}"
        );
        Ok(())
    }
    fn close(&mut self, addr: SocketAddr) {
        assert!(
            self.open.remove(&addr).is_some() || self.tcp.remove(&addr).is_some(),
            "close of unknown {addr}"
        );
    }
    fn open_tcp(&mut self, addr: SocketAddr, id: AllocationId) -> std::io::Result<()> {
        assert!(self.tcp.insert(addr, id).is_none(), "double bind of {addr}");
        Ok(())
    }
    fn connect(&mut self, relay: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
        self.connects.push((relay, peer, conn));
    }
    fn close_connection(&mut self, conn: ConnectionId) {
        self.closed.push(conn);
    }
    fn bind_connection(&mut self, conn: ConnectionId, data: &FiveTuple) {
        self.bound.push((conn, *data));
    }
    fn hand_over(&mut self, data: &FiveTuple, shard: usize) {
        self.handed.push((*data, shard));
    }
}

const UNIX0: u64 = 1_700_000_000;

struct World {
    shared: Arc<Shared>,
    server: Server,
    sockets: FakeSockets,
    t0: Instant,
    now: Instant,
}

fn world(extra: impl FnOnce(&mut Config)) -> World {
    let mut cfg = config();
    extra(&mut cfg);
    let t0 = Instant::now();
    let shared = Shared::with_clock(cfg, &[LISTEN.parse().unwrap()], t0, UNIX0);
    World {
        server: Server::new(Arc::clone(&shared), ()),
        shared,
        sockets: FakeSockets::default(),
        t0,
        now: t0,
    }
}

struct Client {
    ft: FiveTuple,
    user: String,
    key: Key,
    nonce: Option<String>,
    seq: u8,
}

fn client(port: u16, user: &str, pass: &str) -> Client {
    Client {
        ft: FiveTuple {
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            server: "127.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        },
        user: user.into(),
        key: long_term_key(user, "example.org", pass),
        nonce: None,
        seq: 0,
    }
}

#[derive(Debug)]
struct Reply {
    class: Class,
    code: Option<u16>,
    raw: Vec<u8>,
}

impl Reply {
    fn msg(&self) -> Message<'_> {
        Message::parse(&self.raw).unwrap()
    }
    fn ok(&self) -> bool {
        self.class == Class::Success
    }
}

impl World {
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now, &mut self.sockets);
    }

    fn send_raw(&mut self, ft: FiveTuple, b: &[u8]) -> Option<Vec<u8>> {
        match self
            .server
            .handle_client(self.now, ft, b, &mut self.sockets)?
        {
            Transmit::Client { to, data } => {
                assert_eq!(to, ft);
                Some(data.to_vec())
            }
            Transmit::Peer { .. } => panic!("a request must not go to a peer"),
        }
    }

    /// Sends a request signed with the client's key and current nonce; on 401/438
    /// with a new nonce, retries once (what every real client does).
    fn request(
        &mut self,
        c: &mut Client,
        method: Method,
        f: &dyn Fn(&mut MessageWriter<'_>),
    ) -> Reply {
        for _ in 0..2 {
            c.seq += 1;
            let tid = [c.seq; 12];
            let mut buf = Vec::new();
            let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid);
            f(&mut w);
            if let Some(n) = &c.nonce {
                w.attr(attr::USERNAME, c.user.as_bytes())
                    .attr(attr::REALM, b"example.org")
                    .attr(attr::NONCE, n.as_bytes())
                    .integrity(&c.key, false);
            }
            let raw = w.finish_with_fingerprint().to_vec();
            let out = self.send_raw(c.ft, &raw).expect("requests are answered");
            let m = Message::parse(&out).unwrap();
            assert_eq!(m.transaction_id, tid);
            assert!(m.verify_fingerprint());
            let code = m
                .get(attr::ERROR_CODE)
                .map(|v| attr::decode_error_code(v).unwrap().0);
            let class = m.class;
            if matches!(code, Some(401) | Some(438))
                && c.nonce.as_deref() != m.text(attr::NONCE).map(|n| n.unwrap())
            {
                c.nonce = m.text(attr::NONCE).map(|n| n.unwrap().to_string());
                continue;
            }
            if code != Some(401) && code != Some(400) && code != Some(438) && c.nonce.is_some() {
                assert!(
                    m.verify_integrity(&c.key),
                    "responses after auth are signed"
                );
            }
            return Reply {
                class,
                code,
                raw: out,
            };
        }
        panic!("no answer after retry");
    }

    fn allocate(&mut self, c: &mut Client, lifetime: Option<u32>) -> Reply {
        self.request(c, Method::ALLOCATE, &move |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, l);
            }
        })
    }

    fn relayed(&self, r: &Reply) -> SocketAddr {
        r.msg()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
    }

    fn permit(&mut self, c: &mut Client, peers: &[SocketAddr]) -> Reply {
        let peers = peers.to_vec();
        self.request(c, Method::CREATE_PERMISSION, &move |w| {
            for p in &peers {
                w.xor_address(attr::XOR_PEER_ADDRESS, *p);
            }
        })
    }

    fn bind(&mut self, c: &mut Client, ch: u16, peer: SocketAddr) -> Reply {
        self.request(c, Method::CHANNEL_BIND, &move |w| {
            w.attr(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn refresh(&mut self, c: &mut Client, lifetime: u32) -> Reply {
        self.request(c, Method::REFRESH, &move |w| {
            w.u32(attr::LIFETIME, lifetime);
        })
    }

    fn id_of(&self, relay: SocketAddr) -> AllocationId {
        self.sockets.open[&relay]
    }

    /// A peer's datagram to `relay`: what reaches the client, if anything.
    fn peer_sends(&mut self, relay: SocketAddr, peer: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let id = self.id_of(relay);
        match self.server.handle_peer(self.now, id, peer, data)? {
            Transmit::Client { data, .. } => Some(data.to_vec()),
            Transmit::Peer { .. } => panic!("peer data goes to the client"),
        }
    }

    fn channel_data(
        &mut self,
        c: &Client,
        ch: u16,
        data: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut b = vec![(ch >> 8) as u8, ch as u8, 0, data.len() as u8];
        b.extend_from_slice(data);
        match self
            .server
            .handle_client(self.now, c.ft, &b, &mut self.sockets)?
        {
            Transmit::Peer { relay, to, data } => Some((relay, to, data.to_vec())),
            Transmit::Client { .. } => panic!("ChannelData goes to a peer"),
        }
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], port))
}

#[test]
fn binding_answers_mapped_address() {
    let mut w = world(|_| {});
    let c = client(40000, "alice", "pw");
    let mut buf = Vec::new();
    let raw = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, [9; 12])
        .finish_with_fingerprint()
        .to_vec();
    let out = w.send_raw(c.ft, &raw).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        c.ft.client
    );
    // Unauthenticated: no SOFTWARE (amplification), FINGERPRINT because the request had one.
    assert!(!m.has(attr::SOFTWARE) && m.has_fingerprint() && m.verify_fingerprint());
}

#[test]
fn allocate_challenge_then_success_and_data_both_ways() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.allocate(&mut c, None);
    assert!(r.ok(), "{r:?}");
    let relay = w.relayed(&r);
    assert!((50000..=50019).contains(&relay.port()));
    let m = r.msg();
    assert_eq!(
        attr::decode_u32(m.get(attr::LIFETIME).unwrap()).unwrap(),
        600
    );
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        c.ft.client
    );

    // No permission yet: peer data is dropped both ways.
    assert!(w.peer_sends(relay, peer(7000), b"x").is_none());
    assert!(w.permit(&mut c, &[peer(7000), peer(7001)]).ok());
    // Permission is per IP (RFC 8656 §9): any port of 127.0.0.2 may now send.
    let d = w.peer_sends(relay, peer(7999), b"hello").unwrap();
    let m = Message::parse(&d).unwrap();
    assert_eq!((m.method, m.class), (Method::DATA, Class::Indication));
    assert_eq!(m.get(attr::DATA).unwrap(), b"hello");
    assert_eq!(
        m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        peer(7999)
    );

    // Send indication reaches the peer from the relayed address.
    let mut buf = Vec::new();
    let mut mw = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, [1; 12]);
    mw.xor_address(attr::XOR_PEER_ADDRESS, peer(7000))
        .attr(attr::DATA, b"via send");
    let raw = mw.finish().to_vec();
    match w
        .server
        .handle_client(w.now, c.ft, &raw, &mut w.sockets)
        .unwrap()
    {
        Transmit::Peer {
            relay: r2,
            to,
            data,
        } => {
            assert_eq!((r2, to, data), (relay, peer(7000), &b"via send"[..]))
        }
        other => panic!("{other:?}"),
    }

    // Channel: ChannelData both ways.
    assert!(w.bind(&mut c, 0x4001, peer(7000)).ok());
    assert_eq!(
        w.channel_data(&c, 0x4001, b"abc"),
        Some((relay, peer(7000), b"abc".to_vec()))
    );
    assert_eq!(
        w.peer_sends(relay, peer(7000), b"xyz").unwrap(),
        vec![0x40, 0x01, 0, 3, b'x', b'y', b'z']
    );
    // Unbound channel numbers are dropped.
    assert_eq!(w.channel_data(&c, 0x4002, b"abc"), None);
}

#[test]
fn tcp_channel_data_is_padded() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    c.ft.transport = Transport::Tcp;
    let relay = {
        let r = w.allocate(&mut c, None);
        w.relayed(&r)
    };
    assert!(w.bind(&mut c, 0x4000, peer(1)).ok());
    assert_eq!(
        w.peer_sends(relay, peer(1), b"ab").unwrap(),
        vec![0x40, 0, 0, 2, b'a', b'b', 0, 0]
    );
    // The client's TCP connection closing deletes the allocation and closes the socket.
    w.server.close_client(&c.ft, &mut w.sockets);
    assert!(w.sockets.open.is_empty());
    assert_eq!(w.server.allocation_count(), 0);
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "wrong");
    let r = w.allocate(&mut c, None);
    assert_eq!(r.code, Some(401));
    let m = r.msg();
    assert!(m.has(attr::REALM) && m.has(attr::NONCE));
    let mut c = client(40001, "mallory", "pw");
    assert_eq!(w.allocate(&mut c, None).code, Some(401));
    assert!(w.sockets.open.is_empty());
}

#[test]
fn rest_credentials_work_until_they_expire() {
    let mut w = world(|_| {});
    let (u, p) = mint_rest_credentials(b"rest-secret", UNIX0 + 60, "carol");
    let mut c = client(40000, &u, &p);
    assert!(w.allocate(&mut c, None).ok());
    w.advance(Duration::from_secs(61));
    // Expired credentials: refreshing the allocation is refused.
    let r = w.refresh(&mut c, 600);
    assert_eq!(r.code, Some(401));
    let (u, p) = mint_rest_credentials(b"other-secret", UNIX0 + 6000, "eve");
    let mut c = client(40001, &u, &p);
    assert_eq!(w.allocate(&mut c, None).code, Some(401));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_one() {
    let mut w = world(|a| a.nonce_lifetime = Duration::from_secs(60));
    let mut c = client(40000, "alice", "pw");
    assert!(w.allocate(&mut c, Some(3600)).ok());
    let old = c.nonce.clone().unwrap();
    w.advance(Duration::from_secs(61));
    // The helper retries on 438 with the new nonce, as clients do; check both steps.
    let r = w.permit(&mut c, &[peer(1)]);
    assert!(r.ok());
    assert_ne!(
        c.nonce.as_deref(),
        Some(old.as_str()),
        "a new nonce was issued"
    );
    // Directly: the old nonce is answered with 438.
    c.nonce = Some(old);
    let mut buf = Vec::new();
    let mut mw = MessageWriter::new(&mut buf, Method::REFRESH, Class::Request, [77; 12]);
    mw.attr(attr::USERNAME, b"alice")
        .attr(attr::REALM, b"example.org")
        .attr(attr::NONCE, c.nonce.as_ref().unwrap().as_bytes())
        .integrity(&c.key, false);
    let raw = mw.finish_with_fingerprint().to_vec();
    let out = w.send_raw(c.ft, &raw).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(
        attr::decode_error_code(m.get(attr::ERROR_CODE).unwrap())
            .unwrap()
            .0,
        438
    );
    assert!(m.has(attr::NONCE) && m.has(attr::REALM));
}

#[test]
fn lifetimes_refresh_and_expiry() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    // Requests below the default get the default, above the max get the max.
    let r = w.allocate(&mut c, Some(10));
    assert_eq!(
        attr::decode_u32(r.msg().get(attr::LIFETIME).unwrap()).unwrap(),
        600
    );
    let relay = w.relayed(&r);
    let r = w.refresh(&mut c, 99_999);
    assert_eq!(
        attr::decode_u32(r.msg().get(attr::LIFETIME).unwrap()).unwrap(),
        3600
    );
    w.advance(Duration::from_secs(3599));
    assert_eq!(w.server.allocation_count(), 1);
    w.advance(Duration::from_secs(2));
    assert_eq!(w.server.allocation_count(), 0, "expired after its lifetime");
    assert!(!w.sockets.open.contains_key(&relay), "socket closed");
    // Refresh on a deleted allocation: 437.
    assert_eq!(w.refresh(&mut c, 600).code, Some(437));
    // Refresh with LIFETIME 0 deletes at once.
    assert!(w.allocate(&mut c, None).ok());
    assert!(w.refresh(&mut c, 0).ok());
    assert_eq!(w.server.allocation_count(), 0);
    assert!(w.sockets.open.is_empty());
}

#[test]
fn permissions_and_channels_expire() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.allocate(&mut c, Some(3600));
    let relay = w.relayed(&r);
    assert!(w.permit(&mut c, &[peer(1)]).ok());
    w.advance(Duration::from_secs(299));
    assert!(w.peer_sends(relay, peer(1), b"a").is_some());
    w.advance(Duration::from_secs(2));
    assert!(
        w.peer_sends(relay, peer(1), b"a").is_none(),
        "permission lasts 300 s"
    );

    assert!(w.bind(&mut c, 0x4000, peer(2)).ok());
    // The channel refreshes the permission for 300 s; refresh only the permission later.
    w.advance(Duration::from_secs(290));
    assert!(w.permit(&mut c, &[peer(2)]).ok());
    w.advance(Duration::from_secs(290));
    assert!(
        w.channel_data(&c, 0x4000, b"x").is_some(),
        "channel lives 600 s"
    );
    w.advance(Duration::from_secs(21));
    assert!(
        w.channel_data(&c, 0x4000, b"x").is_none(),
        "channel expired after 600 s"
    );
    // After expiry the number may be bound to another peer.
    assert!(w.bind(&mut c, 0x4000, peer(3)).ok());
}

#[test]
fn channel_bind_rules() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    assert!(w.allocate(&mut c, None).ok());
    assert!(w.bind(&mut c, 0x4000, peer(1)).ok());
    assert!(
        w.bind(&mut c, 0x4000, peer(1)).ok(),
        "rebinding the same pair refreshes"
    );
    assert_eq!(
        w.bind(&mut c, 0x4000, peer(2)).code,
        Some(400),
        "number taken by another peer"
    );
    assert_eq!(
        w.bind(&mut c, 0x4001, peer(1)).code,
        Some(400),
        "peer taken by another number"
    );
    assert_eq!(
        w.bind(&mut c, 0x3FFF, peer(3)).code,
        Some(400),
        "below the range"
    );
    assert_eq!(
        w.bind(&mut c, 0x8000, peer(3)).code,
        Some(400),
        "above the range"
    );
    let r = w.request(&mut c, Method::CHANNEL_BIND, &|w| {
        w.attr(attr::CHANNEL_NUMBER, &[0x40, 0x05, 0, 0]);
    });
    assert_eq!(r.code, Some(400), "no peer");
}

#[test]
fn five_tuple_mismatch_and_retransmission() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let first = w.allocate(&mut c, None);
    assert!(first.ok());
    // The same transaction again (a retransmission) gets the same relayed address.
    let again = w.send_raw_same(&c, &first);
    assert_eq!(w.relayed(&again), w.relayed(&first));
    // A new Allocate on the same 5-tuple: 437.
    assert_eq!(w.allocate(&mut c, None).code, Some(437));
    // Requests for an allocation from another 5-tuple: 437.
    let mut other = client(40001, "alice", "pw");
    assert_eq!(w.permit(&mut other, &[peer(1)]).code, Some(437));
    assert_eq!(w.refresh(&mut other, 600).code, Some(437));
    // Another user on the same 5-tuple: 441.
    let mut bob = client(40000, "bob", "pw");
    assert_eq!(w.refresh(&mut bob, 600).code, Some(441));
}

impl World {
    /// Replays the Allocate that produced `first` (same transaction id).
    fn send_raw_same(&mut self, c: &Client, first: &Reply) -> Reply {
        let tid = first.msg().transaction_id;
        let mut buf = Vec::new();
        let mut mw = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid);
        mw.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::USERNAME, c.user.as_bytes())
            .attr(attr::REALM, b"example.org")
            .attr(attr::NONCE, c.nonce.as_ref().unwrap().as_bytes())
            .integrity(&c.key, false);
        let raw = mw.finish_with_fingerprint().to_vec();
        let out = self.send_raw(c.ft, &raw).unwrap();
        let class = Message::parse(&out).unwrap().class;
        Reply {
            class,
            code: None,
            raw: out,
        }
    }
}

#[test]
fn quotas_give_486_and_508() {
    let mut w = world(|a| {
        a.user_quota = 2;
        a.max_allocations = 3;
    });
    let mut clients: Vec<Client> = (0..4).map(|i| client(41000 + i, "alice", "pw")).collect();
    assert!(w.allocate(&mut clients[0], None).ok());
    assert!(w.allocate(&mut clients[1], None).ok());
    assert_eq!(w.allocate(&mut clients[2], None).code, Some(486));
    let mut b1 = client(42000, "bob", "pw");
    assert!(w.allocate(&mut b1, None).ok());
    let mut b2 = client(42001, "bob", "pw");
    assert_eq!(w.allocate(&mut b2, None).code, Some(508));
    // Deleting one frees the quota.
    assert!(w.refresh(&mut clients[0], 0).ok());
    assert!(w.allocate(&mut clients[3], None).ok());
}

#[test]
fn port_exhaustion_gives_508_and_busy_ports_are_skipped() {
    let mut w = world(|a| a.relay_ports = (50000, 50003));
    w.sockets.busy = vec![50001];
    let mut ok = 0;
    for i in 0..4 {
        let mut c = client(43000 + i, "alice", "pw");
        let r = w.allocate(&mut c, None);
        if r.ok() {
            ok += 1;
            assert_ne!(w.relayed(&r).port(), 50001);
        } else {
            assert_eq!(r.code, Some(508));
        }
    }
    assert_eq!(ok, 3);
}

#[test]
fn policy_refuses_loopback_by_default_with_403() {
    let mut w = world(|a| a.allow_peer.clear());
    let mut c = client(40000, "alice", "pw");
    assert!(w.allocate(&mut c, None).ok());
    for bad in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "192.168.1.1:9",
        "169.254.0.1:9",
    ] {
        let r = w.permit(&mut c, &[bad.parse().unwrap()]);
        assert_eq!(r.code, Some(403), "{bad}");
        assert_eq!(w.bind(&mut c, 0x4000, bad.parse().unwrap()).code, Some(403));
    }
    // All or nothing: one bad peer fails the whole request.
    let r = w.permit(
        &mut c,
        &[
            "198.51.100.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(403));
    assert!(w.permit(&mut c, &["198.51.100.1:9".parse().unwrap()]).ok());
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(0x0077, b"huh?");
    });
    assert_eq!(r.code, Some(420));
    assert_eq!(
        r.msg().get(attr::UNKNOWN_ATTRIBUTES).unwrap(),
        &[0x00, 0x77]
    );
    // Unknown comprehension-optional attributes are ignored.
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(0x8077, b"fine");
    });
    assert!(r.ok());
}

#[test]
fn allocate_errors() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.request(&mut c, Method::ALLOCATE, &|_| {});
    assert_eq!(r.code, Some(400), "no REQUESTED-TRANSPORT");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(r.code, Some(400), "TCP relaying over UDP");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    assert_eq!(r.code, Some(442), "SCTP relaying not offered");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code, Some(440), "no IPv6 relay configured");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80])
            .attr(attr::RESERVATION_TOKEN, &[0; 8]);
    });
    assert_eq!(r.code, Some(400), "EVEN-PORT with RESERVATION-TOKEN");
    assert!(w.sockets.open.is_empty());
}

#[test]
fn dont_fragment_reaches_the_socket() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::DONT_FRAGMENT, &[]);
    });
    assert!(r.ok());
    assert_eq!(w.sockets.dont_fragment, vec![w.relayed(&r)]);
}

#[test]
fn even_port_with_reservation() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    assert!(r.ok());
    let relay = w.relayed(&r);
    assert_eq!(relay.port() % 2, 0);
    let token = r.msg().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    let again = token.clone();
    let mut c2 = client(40001, "alice", "pw");
    let r2 = w.request(&mut c2, Method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &token);
    });
    assert!(r2.ok());
    assert_eq!(w.relayed(&r2).port(), relay.port() + 1);
    // A token is good once.
    let mut c3 = client(40002, "alice", "pw");
    let r3 = w.request(&mut c3, Method::ALLOCATE, &move |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &again);
    });
    assert_eq!(r3.code, Some(508), "a used reservation token");
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut w = world(|a| a.max_bps = 8_000); // 1000 bytes/s
    let mut c = client(40000, "alice", "pw");
    assert!(w.allocate(&mut c, None).ok());
    assert!(w.bind(&mut c, 0x4000, peer(1)).ok());
    let payload = [0u8; 200];
    let sent = (0..10)
        .filter(|_| w.channel_data(&c, 0x4000, &payload).is_some())
        .count();
    assert_eq!(sent, 5, "one second's worth passes, the rest is dropped");
    w.now += Duration::from_millis(500);
    let sent = (0..10)
        .filter(|_| w.channel_data(&c, 0x4000, &payload).is_some())
        .count();
    assert_eq!(sent, 2, "half a second refills half");
}

#[test]
fn garbage_changes_nothing() {
    let mut w = world(|_| {});
    let mut c = client(40000, "alice", "pw");
    assert!(w.allocate(&mut c, None).ok());
    let before = w.server.allocation_count();
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x01\x00\x00",
        b"\xff\xff\xff\xff",
        b"\x40\x00\xff\xff",
        &[0u8; 20][..],
    ] {
        assert!(w
            .server
            .handle_client(w.now, c.ft, junk, &mut w.sockets)
            .is_none());
    }
    assert_eq!(w.server.allocation_count(), before);
    // An RFC 3489 Binding (no magic cookie) still gets an answer with MAPPED-ADDRESS.
    let mut legacy = vec![0, 1, 0, 0];
    legacy.extend_from_slice(&[0xAB; 16]);
    let out = w.send_raw(c.ft, &legacy).unwrap();
    assert_eq!(&out[0..2], &[0x01, 0x01]);
    assert_eq!(&out[4..20], &[0xAB; 16]);
    let _ = w.t0;
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes from a client with an allocation and from a peer never panic the
        /// core, and never create or destroy state.
        #[test]
        fn core_survives_any_input(
            from_client in proptest::collection::vec(any::<u8>(), 0..120),
            from_peer in proptest::collection::vec(any::<u8>(), 0..120),
            head in prop_oneof![Just(0x00u8), Just(0x01), Just(0x40), any::<u8>()],
        ) {
            thread_local! {
                static W: std::cell::RefCell<Option<(World, Client, SocketAddr)>> = const { std::cell::RefCell::new(None) };
            }
            W.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    let mut w = world(|_| {});
                    let mut c = client(40000, "alice", "pw");
                    let relay = { let r = w.allocate(&mut c, Some(3600)); w.relayed(&r) };
                    assert!(w.bind(&mut c, 0x4000, peer(1)).ok());
                    *slot = Some((w, c, relay));
                }
                let (w, c, relay) = slot.as_mut().unwrap();
                let mut b = from_client.clone();
                if let Some(x) = b.first_mut() { *x = head; }
                if b.len() >= 8 && head == 0x01 { b[4..8].copy_from_slice(&0x2112A442u32.to_be_bytes()); }
                let _ = w.server.handle_client(w.now, c.ft, &b, &mut w.sockets);
                let id = w.id_of(*relay);
                let _ = w.server.handle_peer(w.now, id, peer(1), &from_peer);
                assert_eq!(w.server.allocation_count(), 1);
            });
        }
    }
}

/// The relay never relays to itself, whatever `--allow-peer` says: not to its client-facing
/// port in any spelling (a request served "from itself", the start of every relay loop).
/// Two allocations pointed at each other are fine: a packet between them reaches a real
/// client once, and goes no further.
#[test]
fn own_addresses_are_refused_even_when_allowed() {
    let mut w = world(|a| {
        a.allow_peer = vec!["0.0.0.0/0".parse().unwrap(), "127.0.0.0/8".parse().unwrap()]
    });
    let mut a = client(40000, "alice", "pw");
    let mut b = client(40001, "bob", "pw");
    let ra = w.allocate(&mut a, None);
    let rb = w.allocate(&mut b, None);
    let (relay_a, relay_b) = (w.relayed(&ra), w.relayed(&rb));
    for own in ["127.0.0.1:3478", "0.0.0.0:3478"] {
        let own: SocketAddr = own.parse().unwrap();
        assert_eq!(w.permit(&mut a, &[own]).code, Some(403), "{own}");
        assert_eq!(w.bind(&mut a, 0x4001, own).code, Some(403), "{own}");
    }
    // A permission is per IP, so data to the listen port must be refused per packet too.
    assert!(w.permit(&mut a, &["127.0.0.1:9".parse().unwrap()]).ok());
    let listen: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let mut buf = Vec::new();
    let mut mw = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, [7; 12]);
    mw.xor_address(attr::XOR_PEER_ADDRESS, listen)
        .attr(attr::DATA, b"loop?");
    let raw = mw.finish().to_vec();
    assert!(
        w.server
            .handle_client(w.now, a.ft, &raw, &mut w.sockets)
            .is_none(),
        "a Send indication to the listen port is dropped"
    );
    // Whatever reaches a relayed socket from the listen port is dropped too.
    assert_eq!(w.peer_sends(relay_a, listen, b"loop?"), None);

    // A and B pointed at each other: ChannelData from A's client leaves A's relayed socket
    // for B's; B hands it to its own client, and that is the end of it.
    assert!(w.bind(&mut a, 0x4000, relay_b).ok());
    assert!(w.bind(&mut b, 0x4000, relay_a).ok());
    let (from, to, data) = w.channel_data(&a, 0x4000, b"once").unwrap();
    assert_eq!((from, to), (relay_a, relay_b));
    let id_b = w.id_of(relay_b);
    match w.server.handle_peer(w.now, id_b, from, &data).unwrap() {
        Transmit::Client { to, data } => {
            assert_eq!(to, b.ft, "to B's client, not to another relayed socket");
            assert_eq!(&data[4..8], b"once");
        }
        other => panic!("{other:?}"),
    }
}

/// Answers to requests nobody authenticated are as small as the RFC allows: such a
/// request can carry a spoofed source, and its answer goes to the victim. Prints the
/// factors that BENCHMARKS.md records.
#[test]
fn unauthenticated_answers_are_small() {
    let mut w = world(|_| {});
    let c = client(40000, "alice", "pw");
    let mut worst = 0.0f64;
    for (name, method) in [
        ("Binding", Method::BINDING),
        ("Allocate", Method::ALLOCATE),
        ("Refresh", Method::REFRESH),
        ("CreatePermission", Method::CREATE_PERMISSION),
        ("ChannelBind", Method::CHANNEL_BIND),
    ] {
        for fingerprint in [false, true] {
            let mut buf = Vec::new();
            let mw = MessageWriter::new(&mut buf, method, Class::Request, [3; 12]);
            let raw = if fingerprint {
                mw.finish_with_fingerprint().to_vec()
            } else {
                mw.finish().to_vec()
            };
            let out = w.send_raw(c.ft, &raw).expect("answered");
            let m = Message::parse(&out).unwrap();
            assert!(!m.has(attr::SOFTWARE), "{name}: no SOFTWARE to strangers");
            assert_eq!(
                m.has_fingerprint(),
                fingerprint,
                "{name}: FINGERPRINT as asked"
            );
            let factor = out.len() as f64 / raw.len() as f64;
            println!(
                "amplification {name:<16} fingerprint={fingerprint:<5} {} -> {} bytes = {factor:.2}x",
                raw.len(),
                out.len()
            );
            worst = worst.max(factor);
        }
    }
    // 401 with ERROR-CODE "Unauthorized", REALM "example.org" and a 24-byte NONCE: 84
    // bytes for 20 (it was 148 bytes, 7.4x, with SOFTWARE, FINGERPRINT and a 40-byte nonce).
    assert!(worst <= 4.2, "worst amplification {worst:.2}x");
}

/// One port pool for every shard: a shard whose share would be used up borrows the rest of
/// the range (it used to answer 508 while the other shard had ports free).
#[test]
fn shards_share_one_port_pool() {
    let cfg = Config {
        users: vec![("alice".into(), "pw".into())],
        auth_secrets: Vec::new(),
        relay_ports: (50000, 50003),
        ..config()
    };
    let t0 = Instant::now();
    let shared = Shared::with_clock(cfg, &[LISTEN.parse().unwrap()], t0, UNIX0);
    let mut w = World {
        server: Server::new(Arc::clone(&shared), ()),
        shared: Arc::clone(&shared),
        sockets: FakeSockets::default(),
        t0,
        now: t0,
    };
    let mut other = Server::new(Arc::clone(&shared), ());
    let mut ports = Vec::new();
    for i in 0..4 {
        let mut c = client(41000 + i, "alice", "pw");
        let r = w.allocate(&mut c, None);
        assert!(r.ok(), "allocation {i} of 4 in one shard: {r:?}");
        ports.push(w.relayed(&r).port());
    }
    ports.sort();
    assert_eq!(ports, vec![50000, 50001, 50002, 50003]);
    // The range is used up now, for the other shard too: 508 there.
    std::mem::swap(&mut w.server, &mut other);
    let mut c = client(42000, "alice", "pw");
    assert_eq!(w.allocate(&mut c, None).code, Some(508));
}

/// A deleted allocation's port cools down for a sweep or two before it is handed out
/// again: the driver closes its socket asynchronously, and late packets for the old
/// allocation must not reach a new owner.
#[test]
fn a_released_port_cools_down_before_reuse() {
    let mut w = world(|a| a.relay_ports = (50000, 50000));
    let mut a = client(40000, "alice", "pw");
    assert!(w.allocate(&mut a, None).ok());
    assert!(w.refresh(&mut a, 0).ok());
    let mut b = client(40001, "bob", "pw");
    assert_eq!(w.allocate(&mut b, None).code, Some(508), "still cooling");
    assert!(w.server.poll_timeout().is_some(), "a timer to release it");
    w.advance(Duration::from_millis(1100));
    w.advance(Duration::from_millis(1100));
    let r = w.allocate(&mut b, None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(w.relayed(&r).port(), 50000);
}

#[test]
fn reload_takes_new_credentials_policy_and_quotas_and_keeps_nonces_and_ports() {
    let mut w = world(|_| {});
    let mut a = client(44000, "alice", "pw");
    assert!(w.allocate(&mut a, None).ok());
    assert!(w.permit(&mut a, &[peer(9)]).ok(), "loopback allowed before");
    let mut cfg = config();
    cfg.users = vec![("alice".into(), "new".into()), ("bob".into(), "pw".into())];
    cfg.allow_peer.clear();
    cfg.user_quota = 1;
    cfg.relay_ports = (51000, 51019);
    assert_eq!(w.shared.reload(cfg), vec!["relay-ports"]);
    // The old password no longer signs anything.
    assert_eq!(w.permit(&mut a, &[peer(10)]).code, Some(401));
    // A nonce handed out before the reload still works: one request, no 438 round.
    let mut b = client(44001, "bob", "pw");
    b.nonce = a.nonce.clone();
    let r = w.allocate(&mut b, None);
    assert!(r.ok(), "{r:?}");
    assert_eq!(b.seq, 1, "no nonce round after the reload");
    // The port range stays what the sockets were bound from.
    assert!((50000..=50019).contains(&w.relayed(&r).port()));
    // The new policy refuses loopback; the new quota counts what is already held.
    assert_eq!(w.permit(&mut b, &[peer(9)]).code, Some(403));
    let mut b2 = client(44002, "bob", "pw");
    assert_eq!(w.allocate(&mut b2, None).code, Some(486));
    let mut a2 = client(44003, "alice", "new");
    assert_eq!(
        w.allocate(&mut a2, None).code,
        Some(486),
        "alice's first allocation still counts"
    );
}

/// A world whose relay has an IPv6 address too (::1), IPv6 loopback peers allowed.
fn dual_world() -> World {
    world(|c| {
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        c.relay_v6 = Some((v6, v6));
        c.allow_peer.push("::1/128".parse().unwrap());
    })
}

fn allocate_dual(w: &mut World, c: &mut Client, family: u8) -> Reply {
    w.request(c, Method::ALLOCATE, &move |m| {
        m.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family, 0, 0, 0]);
    })
}

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2): one Allocate gets an IPv4 and an IPv6
/// relayed address; a permission request may name peers of both families; each peer is
/// reached from the socket of its family and answers through it; the allocation's end
/// closes both sockets.
#[test]
fn dual_allocation_relays_both_families_and_releases_both() {
    use icebreaker_stun::codec::Attributes;
    let mut w = dual_world();
    let mut c = client(40000, "alice", "pw");
    let r = allocate_dual(&mut w, &mut c, attr::FAMILY_IPV6);
    assert!(r.ok(), "{r:?}");
    let (v4, v6) = {
        let m = r.msg();
        let a = Attributes::parse(&m).unwrap();
        assert!(a.address_error_code.is_none());
        (
            a.xor_relayed_address.unwrap(),
            a.xor_relayed_address_2.unwrap(),
        )
    };
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{v4} {v6}");
    assert_eq!(w.sockets.open.len(), 2);
    assert_eq!(w.id_of(v4), w.id_of(v6), "one allocation, two sockets");
    // A retransmission gets the same two addresses.
    let again = w.send_raw_same(&c, &r);
    let m = again.msg();
    let a = Attributes::parse(&m).unwrap();
    assert_eq!(
        (a.xor_relayed_address, a.xor_relayed_address_2),
        (Some(v4), Some(v6))
    );

    let p4 = peer(7000);
    let p6: SocketAddr = "[::1]:7001".parse().unwrap();
    assert!(
        w.permit(&mut c, &[p4, p6]).ok(),
        "both families in one request"
    );
    assert!(w.bind(&mut c, 0x4000, p6).ok());
    assert!(w.bind(&mut c, 0x4001, p4).ok());
    let (relay, to, data) = w.channel_data(&c, 0x4000, b"to v6").unwrap();
    assert_eq!((relay, to, data.as_slice()), (v6, p6, &b"to v6"[..]));
    let (relay, to, _) = w.channel_data(&c, 0x4001, b"to v4").unwrap();
    assert_eq!((relay, to), (v4, p4));
    let back = w
        .peer_sends(v6, p6, b"from v6")
        .expect("the v6 peer reaches the client");
    assert_eq!(&back[..4], &[0x40, 0x00, 0, 7]);
    assert!(w.peer_sends(v4, p4, b"from v4").is_some());

    assert!(w.refresh(&mut c, 0).ok());
    assert!(w.sockets.open.is_empty(), "both sockets closed");
}

/// Only IPv6 may be additional, not beside REQUESTED-ADDRESS-FAMILY nor with a port
/// reservation (400); a relay without an IPv6 address still allocates IPv4 and says why
/// in ADDRESS-ERROR-CODE; an IPv4-only allocation refuses IPv6 peers with 443.
#[test]
fn dual_allocation_rules_and_a_relay_without_ipv6() {
    use icebreaker_stun::codec::Attributes;
    let mut w = dual_world();
    let mut c = client(40001, "alice", "pw");
    assert_eq!(
        allocate_dual(&mut w, &mut c, attr::FAMILY_IPV4).code,
        Some(400)
    );
    let r = w.request(&mut c, Method::ALLOCATE, &|m| {
        m.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code, Some(400));
    let r = w.request(&mut c, Method::ALLOCATE, &|m| {
        m.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80])
            .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code, Some(400));
    assert!(w.sockets.open.is_empty(), "refusals bind nothing");

    let mut w = world(|_| {});
    let mut c = client(40002, "alice", "pw");
    let r = allocate_dual(&mut w, &mut c, attr::FAMILY_IPV6);
    assert!(r.ok(), "{r:?}");
    let m = r.msg();
    let a = Attributes::parse(&m).unwrap();
    assert!(a.xor_relayed_address.unwrap().is_ipv4());
    assert_eq!(a.xor_relayed_address_2, None);
    let (family, code, _) = a.address_error_code.expect("ADDRESS-ERROR-CODE");
    assert_eq!((family, code), (attr::FAMILY_IPV6, 440));
    let p6: SocketAddr = "[::1]:7001".parse().unwrap();
    assert_eq!(w.permit(&mut c, &[p6]).code, Some(443));
}

// ---- TCP allocations (RFC 6062) ----

fn tcp_client(port: u16, user: &str) -> Client {
    let mut c = client(port, user, "pw");
    c.ft.transport = Transport::Tcp;
    c
}

impl World {
    fn allocate_tcp(&mut self, c: &mut Client) -> Reply {
        self.request(c, Method::ALLOCATE, &|w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    }

    /// A request signed with the client's current nonce, sent; whatever comes back now.
    fn signed(
        &mut self,
        c: &mut Client,
        method: Method,
        f: &dyn Fn(&mut MessageWriter<'_>),
    ) -> ([u8; 12], Option<Vec<u8>>) {
        c.seq += 1;
        let tid = [c.seq; 12];
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, tid);
        f(&mut w);
        w.attr(attr::USERNAME, c.user.as_bytes())
            .attr(attr::REALM, b"example.org")
            .attr(attr::NONCE, c.nonce.as_deref().unwrap().as_bytes())
            .integrity(&c.key, false);
        let raw = w.finish_with_fingerprint().to_vec();
        (tid, self.send_raw(c.ft, &raw))
    }

    /// Connect to `peer`: answered later, so the core asks for a connection and says nothing.
    fn connect(&mut self, c: &mut Client, peer: SocketAddr) -> ([u8; 12], Option<Vec<u8>>) {
        self.signed(c, Method::CONNECT, &move |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// The driver reports the connection: the Connect's answer, to the control connection.
    fn connect_result(&mut self, conn: ConnectionId, ok: bool) -> Option<(FiveTuple, Vec<u8>)> {
        match self.server.connect_result(self.now, conn, ok)? {
            Transmit::Client { to, data } => Some((to, data.to_vec())),
            Transmit::Peer { .. } => panic!("answers go to the client"),
        }
    }

    fn connection_bind(&mut self, c: &mut Client, conn: u32) -> Option<Vec<u8>> {
        if c.nonce.is_none() {
            // A new data connection: its first request is challenged like any.
            let r = self.request(c, Method::CONNECTION_BIND, &move |w| {
                w.u32(attr::CONNECTION_ID, conn);
            });
            return Some(r.raw);
        }
        self.signed(c, Method::CONNECTION_BIND, &move |w| {
            w.u32(attr::CONNECTION_ID, conn);
        })
        .1
    }
}

fn code_of(raw: &[u8]) -> Option<u16> {
    Message::parse(raw)
        .unwrap()
        .get(attr::ERROR_CODE)
        .map(|v| attr::decode_error_code(v).unwrap().0)
}

fn connection_id_of(raw: &[u8]) -> u32 {
    let m = Message::parse(raw).unwrap();
    attr::decode_u32(m.get(attr::CONNECTION_ID).expect("CONNECTION-ID")).unwrap()
}

#[test]
fn tcp_allocation_connect_and_connection_bind() {
    let mut w = world(|_| {});
    // Over UDP, TCP relaying is refused: data connections need a stream to the server.
    let mut u = client(40001, "alice", "pw");
    assert_eq!(w.allocate_tcp(&mut u).code, Some(400));
    let mut c = tcp_client(40002, "alice");
    let r = w.request(&mut c, Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(r.code, Some(400), "EVEN-PORT is for UDP relaying");
    let r = w.allocate_tcp(&mut c);
    assert!(r.ok(), "{:?}", r.code);
    let relayed = w.relayed(&r);
    assert!(
        w.sockets.tcp.contains_key(&relayed),
        "a TCP listener, not a UDP socket"
    );
    assert!(w.sockets.open.is_empty());

    // Connect: nothing answered until the connection is up.
    let p = peer(7000);
    let (tid, now) = w.connect(&mut c, p);
    assert!(now.is_none(), "Connect is answered once connected");
    let (relay, to, conn) = w.sockets.connects[0];
    assert_eq!((relay, to), (relayed, p));
    let (dst, ans) = w.connect_result(conn, true).expect("answered");
    assert_eq!(dst, c.ft);
    let m = Message::parse(&ans).unwrap();
    assert_eq!(
        (m.method, m.class, m.transaction_id),
        (Method::CONNECT, Class::Success, tid)
    );
    assert!(m.verify_integrity(&c.key) && m.verify_fingerprint());
    assert_eq!(connection_id_of(&ans), conn.0);
    // The same peer again while that connection lives: 446.
    let (_, again) = w.connect(&mut c, p);
    assert_eq!(code_of(&again.unwrap()), Some(446));
    // A peer the policy refuses: 403, and no connection is tried.
    let (_, refused) = w.connect(&mut c, "10.1.2.3:80".parse().unwrap());
    assert_eq!(code_of(&refused.unwrap()), Some(403));
    assert_eq!(w.sockets.connects.len(), 1);

    // The data connection: a wrong CONNECTION-ID is 400, the right one binds.
    let mut d = tcp_client(40003, "alice");
    let bad = w.connection_bind(&mut d, conn.0 ^ 1).unwrap();
    assert_eq!(code_of(&bad), Some(400));
    assert!(w.sockets.bound.is_empty());
    let ok = w.connection_bind(&mut d, conn.0).unwrap();
    let m = Message::parse(&ok).unwrap();
    assert_eq!(
        (m.method, m.class),
        (Method::CONNECTION_BIND, Class::Success)
    );
    assert_eq!(w.sockets.bound, vec![(conn, d.ft)]);
    // Bound once: a second bind of it is refused.
    let mut d2 = tcp_client(40004, "alice");
    assert_eq!(
        code_of(&w.connection_bind(&mut d2, conn.0).unwrap()),
        Some(400)
    );
    // A ConnectionBind on the control connection itself is refused.
    assert_eq!(
        code_of(&w.connection_bind(&mut c, conn.0).unwrap()),
        Some(400)
    );

    // A failed connect answers 447 and frees the peer for another try.
    let q = peer(7001);
    w.connect(&mut c, q);
    let conn2 = w.sockets.connects[1].2;
    let (_, ans) = w.connect_result(conn2, false).unwrap();
    assert_eq!(code_of(&ans), Some(447));
    assert!(Message::parse(&ans).unwrap().verify_integrity(&c.key));
    let (_, retry) = w.connect(&mut c, q);
    assert!(retry.is_none(), "the peer can be connected again");

    // The bound connection ends (a side closed): the peer can be connected again.
    w.server.connection_closed(conn);
    let (_, re) = w.connect(&mut c, p);
    assert!(re.is_none());

    // The allocation ends: every connection it holds is closed with it.
    assert!(w.refresh(&mut c, 0).ok());
    let mut closed = w.sockets.closed.clone();
    closed.sort_by_key(|c| c.0);
    let mut want: Vec<ConnectionId> = w.sockets.connects[2..].iter().map(|c| c.2).collect();
    want.sort_by_key(|c| c.0);
    assert_eq!(closed, want);
    assert!(w.sockets.tcp.is_empty(), "the listener is closed");
    assert_eq!(w.server.connection_count(), 0);
    // A late report of a connect for a deleted allocation answers nothing.
    assert!(w.connect_result(want[0], true).is_none());
}

/// RFC 6062 data connections are held to the allocation's `max-bps` by pacing: what they
/// carried is charged to the same bucket as its UDP data, and over the cap the driver is
/// told how long to wait (nothing is dropped: TCP's flow control slows the sender).
#[test]
fn tcp_data_connections_are_paced_by_the_bandwidth_cap() {
    let mut w = world(|a| a.max_bps = 8_000); // 1000 bytes/s
    let mut c = tcp_client(40020, "alice");
    assert!(w.allocate_tcp(&mut c).ok());
    w.connect(&mut c, peer(7000));
    let conn = w.sockets.connects[0].2;
    w.connect_result(conn, true).expect("answered");
    let mut d = tcp_client(40021, "alice");
    w.connection_bind(&mut d, conn.0).unwrap();
    let wait = |w: &mut World, n| w.server.connection_carried(conn, n, w.now);
    assert_eq!(
        wait(&mut w, 600),
        Duration::ZERO,
        "within one second's burst"
    );
    assert_eq!(wait(&mut w, 400), Duration::ZERO, "exactly the burst");
    assert_eq!(
        wait(&mut w, 500),
        Duration::from_millis(500),
        "500 bytes over: half a second at 1000 bytes/s"
    );
    w.now += Duration::from_millis(500);
    assert_eq!(wait(&mut w, 0), Duration::ZERO, "the debt is paid back");
    w.now += Duration::from_secs(10);
    assert_eq!(
        wait(&mut w, 1000),
        Duration::ZERO,
        "refilled to one second, no more"
    );
    assert_eq!(wait(&mut w, 100), Duration::from_millis(100));
    // A closed connection (or one never bound) costs nothing.
    w.server.connection_closed(conn);
    assert_eq!(wait(&mut w, 10_000), Duration::ZERO);
}

#[test]
fn tcp_allocation_peer_connection_attempt_and_bind_timeout() {
    let mut w = world(|_| {});
    let mut c = tcp_client(40010, "alice");
    let r = w.allocate_tcp(&mut c);
    let relayed = w.relayed(&r);
    let id = w.sockets.tcp[&relayed];
    let p = peer(7100);
    // No permission for the peer: the driver closes it, the client hears nothing.
    assert!(w.server.peer_connected(w.now, id, p).is_none());
    assert!(w.permit(&mut c, &[p]).ok());
    let (conn, t) = w.server.peer_connected(w.now, id, p).expect("permitted");
    let Transmit::Client { to, data } = t else {
        panic!("to the client")
    };
    assert_eq!(to, c.ft);
    let m = Message::parse(data).unwrap();
    assert_eq!(
        (m.method, m.class),
        (Method::CONNECTION_ATTEMPT, Class::Indication)
    );
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), p);
    assert_eq!(connection_id_of(data), conn.0);
    // ChannelBind and Send have no place on a TCP allocation.
    assert_eq!(w.bind(&mut c, 0x4000, p).code, Some(400));
    // Another user cannot bind it (441); nobody binds within 30 s: closed.
    let mut bob = tcp_client(40011, "bob");
    assert_eq!(
        code_of(&w.connection_bind(&mut bob, conn.0).unwrap()),
        Some(441)
    );
    w.advance(Duration::from_secs(29));
    assert!(w.sockets.closed.is_empty());
    w.advance(Duration::from_secs(2));
    assert_eq!(w.sockets.closed, vec![conn]);
    let mut d = tcp_client(40012, "alice");
    assert_eq!(
        code_of(&w.connection_bind(&mut d, conn.0).unwrap()),
        Some(400)
    );
    assert!(w.sockets.bound.is_empty());
}

#[test]
fn connection_ids_name_their_shard_and_binds_find_it() {
    let t0 = Instant::now();
    let shared = Shared::with_clock(config(), &[LISTEN.parse().unwrap()], t0, UNIX0);
    let mut w = World {
        server: Server::with_shard(Arc::clone(&shared), (), 1, 3),
        shared,
        sockets: FakeSockets::default(),
        t0,
        now: t0,
    };
    let mut c = tcp_client(40020, "alice");
    assert!(w.allocate_tcp(&mut c).ok());
    for port in 0..20 {
        w.connect(&mut c, peer(7200 + port));
    }
    assert!(w.sockets.connects.iter().all(|(_, _, id)| id.0 % 3 == 1));
    // A bind for a connection of shard 2 goes there, unanswered here.
    let mut d = tcp_client(40021, "alice");
    // Nonces are per client IP: the data connection may reuse the control one's.
    d.nonce = c.nonce.clone();
    let (_, here) = w.signed(&mut d, Method::CONNECTION_BIND, &|w| {
        w.u32(attr::CONNECTION_ID, 3 * 77 + 2);
    });
    assert!(here.is_none());
    assert_eq!(w.sockets.handed, vec![(d.ft, 2)]);
}

#[test]
fn shrink_gives_back_free_slots_and_old_ids_stay_stale() {
    let mut w = world(|_| {});
    let mut clients: Vec<Client> = (0..8).map(|i| client(41000 + i, "alice", "pw")).collect();
    let mut old = Vec::new();
    for c in clients.iter_mut() {
        let r = w.allocate(c, None);
        assert!(r.ok(), "{r:?}");
        let relay = w.relayed(&r);
        assert!(w.permit(c, &[peer(7000)]).ok());
        old.push((relay, w.id_of(relay)));
    }
    // All but the first go; shrinking keeps the first (and its id) working.
    for c in clients.iter_mut().skip(1) {
        assert!(w.refresh(c, 0).ok());
    }
    w.server.shrink();
    let (first_relay, first_id) = old[0];
    assert!(w
        .server
        .handle_peer(w.now, first_id, peer(7000), b"kept")
        .is_some());
    assert_eq!(w.server.allocation_count(), 1);
    // A new allocation takes a slot an old one had: the old id never reaches it.
    let mut n = client(42000, "alice", "pw");
    let r = w.allocate(&mut n, None);
    assert!(r.ok(), "{r:?}");
    let relay = w.relayed(&r);
    assert!(w.permit(&mut n, &[peer(7000)]).ok());
    let new_id = w.id_of(relay);
    for (_, id) in &old[1..] {
        assert_ne!(*id, new_id);
        assert!(
            w.server
                .handle_peer(w.now, *id, peer(7000), b"stale")
                .is_none(),
            "a released allocation's id reached a new one"
        );
    }
    assert!(w.peer_sends(relay, peer(7000), b"new").is_some());
    assert!(w.peer_sends(first_relay, peer(7000), b"first").is_some());
}
