//! TCP relaying (RFC 6062) end to end against `icebreaker-relay`: coturn's
//! `turnutils_uclient -T` (Connect, ConnectionAttempt and ConnectionBind between its own
//! TCP allocations) with no loss, and our probe against a plain TCP peer: a peer that
//! connects without a permission is closed, one with a permission is announced and
//! bound, Connect reaches a TCP echo server, bytes flow as they are both ways, and data
//! connections close with their allocation. Several shards, so data connections that
//! the kernel hashes to another shard than their peer's are moved there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use icebreaker_relay::codec::{attr, Message, Method};
use icebreaker_tests::turn_probe::{Conn, TurnProbe};
use icebreaker_tests::{assert_all_echoed, http_get, metric, start_relay, uclient, wait_for};

#[test]
fn turnutils_uclient_tcp_relay_loses_nothing() {
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--threads", "4"]);
    // -T: TCP allocations that Connect to each other (uclient's client-to-client mode; the
    // echo peer is not used).
    let u = uclient(
        relay.addr.port(),
        9,
        &[
            "-T", "-u", "test", "-w", "test", "-m", "10", "-n", "100", "-l", "200",
        ],
    );
    assert_all_echoed(&u, "tcp relay", 1000);
    let m = relay.metrics.expect("metrics address");
    let text = http_get(m, "/metrics").1;
    let ev = |e: &str| metric(&text, "icebreaker_relay_tcp_peer_connections_total", &[e]);
    assert!(ev("connected") >= 5.0 && ev("accepted") >= 5.0, "{text}");
    assert!(ev("bound") >= 10.0, "{text}");
    assert!(
        metric(
            &text,
            "icebreaker_relay_requests_total",
            &["connection_bind", "0"]
        ) >= 10.0,
        "{text}"
    );
    // uclient is gone: every allocation and data connection with it.
    wait_for(
        "no allocation or data connection left",
        Duration::from_secs(10),
        || {
            let t = http_get(m, "/metrics").1;
            metric(&t, "icebreaker_relay_tcp_data_connections", &[]) == 0.0
                && metric(&t, "icebreaker_relay_allocations", &[]) == 0.0
        },
    );
}

/// A TCP echo server on 127.0.0.1: every connection gets its bytes back.
fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn allocate_tcp(p: &mut TurnProbe) -> SocketAddr {
    let a = p.request(Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(a.code, None, "TCP allocate");
    a.msg()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap()
}

fn connection_id(m: &Message<'_>) -> u32 {
    attr::decode_u32(m.get(attr::CONNECTION_ID).expect("CONNECTION-ID")).unwrap()
}

/// A data connection bound to `conn`: the raw stream and what already came after the answer.
fn bind(server: SocketAddr, conn: u32) -> (TcpStream, Vec<u8>) {
    let mut d = TurnProbe::tcp(server);
    let a = d.request(Method::CONNECTION_BIND, &move |w| {
        w.u32(attr::CONNECTION_ID, conn);
    });
    assert_eq!(a.code, None, "ConnectionBind");
    match d.conn {
        Conn::Tcp { s, buf } => (s, buf),
        Conn::Udp(_) | Conn::Dtls(_) => unreachable!(),
    }
}

/// Reads exactly `n` bytes (after `already`) within a few seconds.
fn read_n(s: &mut TcpStream, mut already: Vec<u8>, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 65536];
    while already.len() < n {
        let k = s.read(&mut b).expect("bytes within 5 s");
        assert!(k > 0, "closed after {} of {n} bytes", already.len());
        already.extend_from_slice(&b[..k]);
    }
    already
}

/// True when the other side closes within 5 s (EOF or reset).
fn closes(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn tcp_allocation_with_a_plain_tcp_peer_both_ways() {
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--threads", "3"]);
    // Over UDP, TCP relaying is refused (data connections are TCP).
    let mut udp = TurnProbe::udp(relay.addr);
    let a = udp.request(Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(a.code, Some(400));

    let mut control = TurnProbe::tcp(relay.addr);
    let relayed = allocate_tcp(&mut control);

    // A peer without a permission is closed and the client hears nothing.
    let mut stranger = TcpStream::connect(relayed).expect("the relayed address listens");
    assert!(closes(&mut stranger), "unpermitted peer closed");

    // With a permission: ConnectionAttempt, then a bound data connection, bytes both ways.
    assert_eq!(control.permit("127.0.0.1:1".parse().unwrap()), None);
    let mut peer = TcpStream::connect(relayed).unwrap();
    let attempt = control
        .recv(Duration::from_secs(5))
        .expect("ConnectionAttempt");
    let m = Message::parse(&attempt).unwrap();
    assert_eq!(m.method, Method::CONNECTION_ATTEMPT);
    assert_eq!(
        m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        peer.local_addr().unwrap()
    );
    let (mut data, early) = bind(relay.addr, connection_id(&m));
    peer.write_all(b"from the peer").unwrap();
    assert_eq!(read_n(&mut data, early, 13), b"from the peer");
    data.write_all(b"from the client").unwrap();
    assert_eq!(read_n(&mut peer, Vec::new(), 15), b"from the client");
    // The client closes its data connection: the peer's closes with it.
    drop(data);
    assert!(
        closes(&mut peer),
        "peer connection closed with the data connection"
    );
    drop(peer);

    // Connect to a TCP echo server; 200 KB through it and back, byte for byte.
    let echo = tcp_echo();
    let c = control.request(Method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, echo);
    });
    assert_eq!(c.code, None, "Connect");
    let conn = connection_id(&c.msg());
    let again = control.request(Method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, echo);
    });
    assert_eq!(again.code, Some(446), "one connection per peer");
    // Nothing listens here: 447.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failed = control.request(Method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, closed);
    });
    assert_eq!(failed.code, Some(447));
    let (mut data, early) = bind(relay.addr, conn);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut w = data.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || w.write_all(&p).unwrap())
    };
    assert_eq!(read_n(&mut data, early, payload.len()), payload);
    writer.join().unwrap();

    // The allocation ends: its data connection is closed.
    assert_eq!(control.release(), None);
    assert!(
        closes(&mut data),
        "data connection closed with its allocation"
    );

    let m = relay.metrics.expect("metrics address");
    let text = http_get(m, "/metrics").1;
    let ev = |e: &str| metric(&text, "icebreaker_relay_tcp_peer_connections_total", &[e]);
    assert_eq!(ev("refused"), 1.0, "{text}");
    assert_eq!(ev("accepted"), 1.0, "{text}");
    assert_eq!(ev("connected"), 1.0, "{text}");
    assert_eq!(ev("connect_failed"), 1.0, "{text}");
    assert_eq!(ev("bound"), 2.0, "{text}");
    assert!(
        metric(&text, "icebreaker_relay_bytes_total", &["to_client"]) >= 200_013.0,
        "{text}"
    );
    wait_for("no data connection left", Duration::from_secs(5), || {
        let t = http_get(m, "/metrics").1;
        metric(&t, "icebreaker_relay_tcp_data_connections", &[]) == 0.0
    });
}

/// `--max-bps` holds TCP allocations too: a data connection is paced to the cap (both
/// directions count), nothing is lost on the way, and the waits are counted.
#[test]
fn tcp_data_connection_is_paced_to_max_bps() {
    // 800 kbit/s = 100 kB/s, with a one-second burst.
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--max-bps", "800000"]);
    let mut control = TurnProbe::tcp(relay.addr);
    allocate_tcp(&mut control);
    let echo = tcp_echo();
    let c = control.request(Method::CONNECT, &move |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, echo);
    });
    assert_eq!(c.code, None, "Connect");
    let (mut data, early) = bind(relay.addr, connection_id(&c.msg()));
    // 150 kB out and the same back: 300 kB against 100 kB/s after the 100 kB burst, so at
    // least ~2 s; unpaced it takes milliseconds on loopback.
    let payload: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let started = std::time::Instant::now();
    let writer = {
        let mut w = data.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || w.write_all(&p).unwrap())
    };
    data.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = early;
    let mut b = [0u8; 65536];
    while got.len() < payload.len() {
        let k = data.read(&mut b).expect("paced, not stalled");
        assert!(k > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&b[..k]);
    }
    let took = started.elapsed();
    writer.join().unwrap();
    assert_eq!(got, payload, "every byte, in order");
    assert!(took >= Duration::from_millis(1500), "not paced: {took:?}");
    let text = http_get(relay.metrics.expect("metrics address"), "/metrics").1;
    assert!(
        metric(&text, "icebreaker_relay_tcp_bandwidth_waits_total", &[]) > 0.0,
        "{text}"
    );
}

/// A relayed TCP port another program listens on with SO_REUSEPORT (a second relay of the
/// same user, say) is busy: the allocation gets the other port of its two-port range, a
/// second allocation gets none, and peers' connections reach this relay, not the other
/// program's listener.
#[test]
fn a_relayed_tcp_port_held_with_so_reuseport_elsewhere_is_not_shared() {
    use socket2::{Domain, Protocol, Socket, Type};
    // Two free neighbouring ports; the first held by a SO_REUSEPORT listener of ours.
    let (held, port) = (20_000..60_000u16)
        .step_by(7)
        .find_map(|p| {
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !(free(p) && free(p + 1)) {
                return None;
            }
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
            s.set_reuse_address(true).ok()?;
            s.set_reuse_port(true).ok()?;
            let addr: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
            s.bind(&addr.into()).ok()?;
            s.listen(8).ok()?;
            Some((s, p))
        })
        .expect("two free ports");
    let range = format!("{port}-{}", port + 1);
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--relay-ports", &range]);
    let mut control = TurnProbe::tcp(relay.addr);
    let relayed = allocate_tcp(&mut control);
    assert_eq!(relayed.port(), port + 1, "the held port is skipped");
    // And the held port is never handed out: a second allocation finds no port.
    let mut second = TurnProbe::tcp(relay.addr);
    let refused = second.request(Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(refused.code, Some(508), "no other port is free");
    // Every peer connection reaches the relay's listener (it closes unpermitted ones);
    // none is queued at ours.
    held.set_nonblocking(true).unwrap();
    for _ in 0..20 {
        let mut s = TcpStream::connect(relayed).unwrap();
        assert!(closes(&mut s), "unpermitted peer closed by the relay");
    }
    assert!(held.accept().is_err(), "a peer reached the other listener");
    let text = http_get(relay.metrics.unwrap(), "/metrics").1;
    assert_eq!(
        metric(
            &text,
            "icebreaker_relay_tcp_peer_connections_total",
            &["refused"]
        ),
        20.0,
        "{text}"
    );
}

/// TURN over TCP behind Debian's HAProxy in TCP mode with the PROXY protocol
/// (`send-proxy-v2` from 127.0.0.5, the relay started with `--proxy-protocol
/// --trusted-proxy 127.0.0.5/32`): the relay answers a Binding with the client's own
/// address (not the balancer's), coturn's client relays through the balancer without
/// loss, and a connection from the balancer's address without a header is closed.
#[test]
fn behind_haproxy_the_relay_sees_each_client_through_the_proxy_protocol() {
    use icebreaker_tests::haproxy::Haproxy;
    use icebreaker_tests::{echo_peer, require};
    require("haproxy", "haproxy");
    let lb_side = "127.0.0.5";
    let relay = start_relay(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--proxy-protocol",
        "--trusted-proxy",
        &format!("{lb_side}/32"),
    ]);
    let m = relay.metrics.expect("metrics address");
    // Health checks go to the metrics port's /healthz (no PROXY header there).
    let lb = Haproxy::start_servers(
        &[format!("{} port {}", relay.addr, m.port())],
        &format!("send-proxy-v2 source {lb_side}"),
    );

    let mut probe = TurnProbe::tcp(lb.addr);
    let mine = match &probe.conn {
        Conn::Tcp { s, .. } => s.local_addr().unwrap(),
        Conn::Udp(_) | Conn::Dtls(_) => unreachable!(),
    };
    let a = probe.request(Method::BINDING, &|_| {});
    assert_eq!(a.code, None);
    let seen = a
        .msg()
        .xor_address(attr::XOR_MAPPED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(
        seen, mine,
        "the relay sees the client, not HAProxy's {lb_side}"
    );

    let (_peer, peer_port) = echo_peer();
    let u = uclient(
        lb.addr.port(),
        peer_port,
        &[
            "-t", "-u", "test", "-w", "test", "-m", "5", "-n", "100", "-l", "120",
        ],
    );
    assert_all_echoed(&u, "TURN over TCP through HAProxy", 500);

    // From the balancer's address without a header: closed, nothing answered.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{lb_side}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&relay.addr.into()).unwrap();
    let mut bare: TcpStream = sock.into();
    bare.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bare.write_all(&[
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .unwrap();
    let mut out = [0u8; 64];
    let r = bare.read(&mut out);
    assert!(
        matches!(&r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a Binding without a PROXY header is closed unanswered: {r:?}"
    );

    let text = http_get(m, "/metrics").1;
    let headers = |r: &str| {
        metric(
            &text,
            "icebreaker_relay_proxy_headers_total",
            &[&format!("result=\"{r}\"")],
        )
    };
    assert!(headers("client") >= 6.0, "{text}");
    assert!(headers("invalid") >= 1.0, "{text}");
}
