//! The defects an outside probe found, each replayed as an attack on the real binaries:
//! memory stays bounded or the attempt is refused, and ordinary clients are served
//! meanwhile. (The probe's figures before the fixes are in the comments.)

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use icebreaker_relay::codec::{attr, Class, Message, MessageWriter, Method};
use icebreaker_tests::raw_ws::{client_frame, In, Raw};
use icebreaker_tests::turn_probe::TurnProbe;
use icebreaker_tests::{
    http_get, metric, rss_kib, start_icebreaker, start_relay, Icebreaker, RssWatch,
};

const MIB: u64 = 1024;

/// Two well-behaved peers in one room exchange `n` signals in order (the "others keep
/// being served" half of every test here). `from`: the source IP they connect from.
fn ordinary_pair(ib: &Icebreaker, room: &str, from: Option<IpAddr>, n: usize) {
    let mut a = Raw::connect_from(ib, from);
    a.text(json!({"type": "join", "room": room}));
    let ja = a.message();
    assert_eq!(ja["type"], "joined", "{ja}");
    let mut b = Raw::connect_from(ib, from);
    b.text(json!({"type": "join", "room": room}));
    let jb = b.message();
    assert_eq!(jb["type"], "joined", "{jb}");
    assert_eq!(a.message()["type"], "peer-joined");
    let to = ja["id"].as_str().unwrap().to_string();
    for i in 0..n {
        b.text(json!({"type": "signal", "to": to, "data": {"i": i}}));
    }
    for i in 0..n {
        let m = a.message();
        assert_eq!(
            (m["type"].as_str(), m["data"]["i"].as_u64()),
            (Some("signal"), Some(i as u64)),
            "{m}"
        );
    }
}

/// Writes `frame` `count` times (in large writes) until done or the server stops taking
/// them; true when the server cut the connection off.
fn flood(s: &mut TcpStream, frame: &[u8], count: usize) -> bool {
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let per_write = 4096;
    let chunk: Vec<u8> = frame.repeat(per_write);
    let mut sent = 0;
    while sent < count {
        if s.write_all(&chunk).is_err() {
            return true;
        }
        sent += per_write;
    }
    false
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(true, opcode, payload, false)
}

/// Before: one connection sending 200 000 pings without reading grew the server by 22 MB,
/// four sending 500 000 took it to a 398 MB peak, 2 000 000 binary frames before joining
/// 205 MB. Now every reply (pongs, errors) is bounded like sequenced output: the
/// connection is cut off (1008) and counted.
#[test]
fn ping_and_binary_floods_from_clients_that_never_read_stay_bounded() {
    // A rate limit this high takes the rate limit out of the way: the output bound is
    // what is under test here.
    let ib = start_icebreaker(&["--no-relay", "--rate-limit", "100000000"]);
    let pid = ib.proc.pid();
    ordinary_pair(&ib, "warmup", None, 10);
    let base = rss_kib(pid);
    let watch = RssWatch::start(pid);
    let mut floods = Vec::new();
    for kind in ["ping-joined", "ping", "binary", "binary-joined"] {
        let mut c = Raw::connect(&ib);
        if kind.ends_with("joined") {
            c.text(json!({"type": "join", "room": format!("flood-{kind}")}));
        }
        floods.push(std::thread::spawn(move || {
            let (frame, count) = if kind.starts_with("ping") {
                (masked(0x9, b"12345678"), 2_000_000)
            } else {
                (masked(0x2, b""), 2_000_000)
            };
            flood(&mut c.s, &frame, count)
        }));
    }
    // Meanwhile, and after, ordinary peers are served.
    ordinary_pair(&ib, "meanwhile", None, 200);
    let cut: Vec<bool> = floods.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(cut, vec![true; 4], "every flooder was cut off");
    ordinary_pair(&ib, "after", None, 200);
    let grown = watch.peak().saturating_sub(base);
    let (_, m) = http_get(ib.http, "/metrics");
    println!("peak growth {} KiB over {base} KiB", grown);
    assert!(
        grown < 32 * MIB,
        "server grew by {grown} KiB during the floods"
    );
    assert_eq!(
        metric(&m, "icebreaker_slow_consumers_total", &[]),
        4.0,
        "{m}"
    );
}

/// With the default rate limit pings count against it: a burst of 2000 gets at most the
/// bucket's worth of pongs, the rest is counted, and the connection stays usable.
#[test]
fn pings_and_binary_frames_count_against_the_rate_limit() {
    let ib = start_icebreaker(&["--no-relay", "--rate-limit", "10", "--rate-burst", "20"]);
    let mut c = Raw::connect(&ib);
    let burst: Vec<u8> = masked(0x9, b"p").repeat(2000);
    c.s.write_all(&burst).unwrap();
    let bin: Vec<u8> = masked(0x2, b"b").repeat(100);
    c.s.write_all(&bin).unwrap();
    c.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut pongs, mut errors) = (0, Vec::new());
    loop {
        match c.recv() {
            In::Pong(_) => pongs += 1,
            In::Text(v) => errors.push(v["code"].as_str().unwrap_or("").to_string()),
            In::Eof => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        pongs <= 25,
        "{pongs} pongs for 2000 pings with a bucket of 20"
    );
    assert!(errors.iter().all(|e| e == "rate-limited"), "{errors:?}");
    let (_, m) = http_get(ib.http, "/metrics");
    assert!(
        metric(&m, "icebreaker_rate_limited_total", &["type=\"ping\""]) >= 1900.0,
        "{m}"
    );
    assert!(
        metric(&m, "icebreaker_rate_limited_total", &["type=\"binary\""]) >= 90.0,
        "{m}"
    );
    // Still open: once the bucket refills, a join works.
    std::thread::sleep(Duration::from_millis(300));
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.text(json!({"type": "join", "room": "after"}));
    assert_eq!(c.message()["type"], "joined");
}

/// Before: 60 000 connect / join (900 bytes of meta) / reset rounds from one IP in 16 s
/// left 60 000 detached peers (RSS 15 → 132 MB) until their resume grace ended. Now a
/// detached peer holds its IP's slot until then, so one IP holds at most
/// `--max-connections-per-ip` peers, and joins per IP are rate-limited.
#[test]
fn connect_join_reset_rounds_from_one_ip_are_capped() {
    let ib = start_icebreaker(&[
        "--no-relay",
        "--resume-grace",
        "60s",
        "--max-connections-per-ip",
        "64",
    ]);
    let pid = ib.proc.pid();
    let base = rss_kib(pid);
    let watch = RssWatch::start(pid);
    let meta = "x".repeat(900);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ib.http
    );
    let (mut joined, mut refused) = (0, 0);
    let t0 = Instant::now();
    for round in 0..10_000 {
        let mut s = TcpStream::connect(ib.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = request.clone().into_bytes();
        // A new room each round, as the probe did (a room holds 16).
        let room = format!("churn-{round}");
        out.extend_from_slice(&masked_text(
            &json!({"type": "join", "room": room, "meta": {"pad": meta}}),
        ));
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 8192];
        // Until the status line, and for a 101 until the `joined` message.
        loop {
            let n = s.read(&mut b).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&b[..n]);
            let text = String::from_utf8_lossy(&buf);
            if text.starts_with("HTTP/1.1 429") {
                refused += 1;
                break;
            }
            if text.starts_with("HTTP/1.1 101") && text.contains("\"joined\"") {
                joined += 1;
                break;
            }
            assert!(!text.contains("\"error\""), "round {round}: {text}");
        }
        // Reset, not close: the peer is detached and kept for its grace.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        if round == 5000 {
            // Another client (another IP) is served while this one is at its cap.
            ordinary_pair(&ib, "other-ip", Some("127.0.0.2".parse().unwrap()), 50);
        }
    }
    println!("{joined} joined, {refused} refused in {:?}", t0.elapsed());
    assert!(
        joined <= 64,
        "{joined} peers joined from one IP with a cap of 64"
    );
    assert!(
        joined >= 60,
        "the cap, not something else, stopped them: {joined}"
    );
    assert_eq!(joined + refused, 10_000);
    let (_, m) = http_get(ib.http, "/metrics");
    // The detached peers are still there (grace 60 s), at most the cap's worth.
    assert!(metric(&m, "icebreaker_peers", &[]) <= 64.0 + 2.0, "{m}");
    assert!(
        metric(
            &m,
            "icebreaker_refused_connections_total",
            &["per-ip-limit"]
        ) >= 9900.0
    );
    let grown = watch.peak().saturating_sub(base);
    assert!(grown < 16 * MIB, "grew by {grown} KiB");
}

fn masked_text(v: &Value) -> Vec<u8> {
    client_frame(true, 0x1, v.to_string().as_bytes(), false)
}

/// Joins per IP per second: a client that joins and leaves in a loop is slowed down.
#[test]
fn joins_per_ip_are_rate_limited() {
    let ib = start_icebreaker(&["--no-relay", "--join-rate", "1", "--join-burst", "5"]);
    let mut c = Raw::connect(&ib);
    let mut results = Vec::new();
    for _ in 0..10 {
        c.text(json!({"type": "join", "room": "again"}));
        let m = c.message();
        results
            .push(m["type"].as_str().unwrap().to_string() + ":" + m["code"].as_str().unwrap_or(""));
        if m["type"] == "joined" {
            c.text(json!({"type": "leave"}));
        }
    }
    assert_eq!(
        results.iter().filter(|r| *r == "joined:").count(),
        5,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| *r == "error:rate-limited")
            .count(),
        5,
        "{results:?}"
    );
    let (_, m) = http_get(ib.http, "/metrics");
    assert_eq!(
        metric(&m, "icebreaker_rate_limited_total", &["type=\"join\""]),
        5.0
    );
}

/// Before: with loopback allowed, a client could send a Binding or an Allocate through
/// the relay to the relay's own port and get it served, and two allocations pointed at
/// each other relayed one 16-byte datagram 16 356 times (536 MB). Now the relay's own
/// client-facing addresses are refused whatever `--allow-peer` says, and a datagram
/// between two of its allocations is delivered once.
#[test]
fn relay_refuses_itself_and_two_allocations_pointed_at_each_other_do_not_loop() {
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--allow-peer", "0.0.0.0/8"]);
    let mut a = TurnProbe::udp(relay.addr);
    let ra = a.allocate(None);
    let mut b = TurnProbe::udp(relay.addr);
    let rb = b.allocate(None);
    let port = relay.addr.port();
    for own in [
        relay.addr,
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
    ] {
        assert_eq!(a.permit(own), Some(403), "{own}");
        assert_eq!(a.channel_bind(0x4000, own), Some(403), "{own}");
    }
    // A permission for the relay's IP (another port) does not open its listen port: an
    // Allocate smuggled in a Send indication is dropped, never answered.
    assert_eq!(a.permit("127.0.0.1:9".parse().unwrap()), None);
    let mut smuggled = Vec::new();
    let mut w = MessageWriter::new(&mut smuggled, Method::ALLOCATE, Class::Request, [5; 12]);
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let smuggled = w.finish().to_vec();
    let mut binding = Vec::new();
    let binding = MessageWriter::new(&mut binding, Method::BINDING, Class::Request, [6; 12])
        .finish()
        .to_vec();
    for target in [relay.addr, SocketAddr::from(([0, 0, 0, 0], port))] {
        a.send_indication(target, &smuggled);
        a.send_indication(target, &binding);
    }
    assert_eq!(
        a.recv(Duration::from_millis(500)),
        None,
        "nothing came back through the relay"
    );

    // Pointed at each other: one datagram from A to B arrives once, and that is all.
    assert_eq!(a.permit(rb), None);
    assert_eq!(b.permit(ra), None);
    a.send_indication(rb, b"once");
    let got = b.recv(Duration::from_secs(2)).expect("B gets the datagram");
    let m = Message::parse(&got).unwrap();
    assert_eq!(m.get(attr::DATA), Some(&b"once"[..]));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), ra);
    assert_eq!(b.recv(Duration::from_millis(800)), None, "delivered once");
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert_eq!(
        metric(&text, "icebreaker_relay_packets_total", &["to_peer"]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "icebreaker_relay_packets_total", &["to_client"]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "icebreaker_relay_dropped_total", &["own_address"]),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "icebreaker_relay_peer_refusals_total",
            &["own_address"]
        ),
        6.0,
        "{text}"
    );
}

/// Before: 2000 TCP connections each holding 65 020 bytes of a 65 552-byte frame took the
/// relay from 6 to 139 MB, and one byte every 28 s kept a connection open for ever. Now a
/// frame over `--max-tcp-frame` closes the connection at its header, unfinished frames
/// count against `--tcp-buffer-limit`, and a frame must be whole within 10 s.
#[test]
fn relay_tcp_partial_frames_are_bounded_in_size_total_and_time() {
    let relay = start_relay(&["--threads", "1", "--tcp-buffer-limit", "2097152"]);
    let pid = relay.proc.pid();
    let base = rss_kib(pid);
    let watch = RssWatch::start(pid);
    // A STUN header announcing `len` bytes of attributes, then `send` bytes of them.
    let partial = |len: u16, send: usize| {
        let mut f = vec![0x00, 0x01];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        f.extend_from_slice(&[7; 12]);
        f.extend(std::iter::repeat_n(0u8, send));
        f
    };
    let mut huge = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(relay.addr).unwrap();
        let _ = s.write_all(&partial(65532, 65000));
        huge.push(s);
    }
    // Under the frame limit: 15 000 of 16 000 bytes each, 400 of them = 6 MB > 2 MiB.
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.write_all(&partial(15980, 15000)).unwrap();
        held.push(s);
    }
    // One byte a second: never a whole frame.
    let mut trickle = TcpStream::connect(relay.addr).unwrap();
    trickle.write_all(&partial(60, 0)[..1]).unwrap();
    let trickle_started = Instant::now();
    // Meanwhile an ordinary TCP client allocates and relays.
    let mut ok = TurnProbe::tcp(relay.addr);
    ok.allocate(None);
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 64];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    for s in &mut huge {
        assert!(closed(s), "an oversized frame closes its connection");
    }
    let mut trickle_closed = None;
    for i in 0..14 {
        std::thread::sleep(Duration::from_secs(1));
        if trickle.write_all(&partial(60, 0)[1 + i..2 + i]).is_err() || {
            trickle
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            let mut b = [0u8; 8];
            matches!(trickle.read(&mut b), Ok(0))
        } {
            trickle_closed = Some(trickle_started.elapsed());
            break;
        }
    }
    let t = trickle_closed.expect("a frame trickling in byte by byte is cut off");
    assert!(
        t >= Duration::from_secs(9) && t <= Duration::from_secs(13),
        "{t:?}"
    );
    for s in &mut held {
        assert!(closed(s), "no unfinished frame outlives the frame deadline");
    }
    let grown = watch.peak().saturating_sub(base);
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    println!("peak growth {grown} KiB over {base} KiB");
    assert!(grown < 24 * MIB, "relay grew by {grown} KiB");
    assert_eq!(
        metric(
            &text,
            "icebreaker_relay_dropped_total",
            &["tcp_frame_too_large"]
        ),
        2000.0,
        "{text}"
    );
    let over_budget = metric(
        &text,
        "icebreaker_relay_dropped_total",
        &["tcp_buffer_limit"],
    );
    let timed_out = metric(
        &text,
        "icebreaker_relay_dropped_total",
        &["tcp_frame_timeout"],
    );
    assert!(
        over_budget >= 250.0,
        "2 MiB holds ~140 of 400 frames: {over_budget} cut\n{text}"
    );
    assert_eq!(over_budget + timed_out, 401.0, "{text}");
    // The ordinary client was served throughout, and still is.
    assert_eq!(ok.permit("127.0.0.1:9".parse().unwrap()), Some(403));
}

/// Before: a silent TCP client was still connected 50 s after its 5 s allocation ended.
/// Now the connection closes with its allocation (expiry or Refresh 0, whose answer is
/// written first).
#[test]
fn relay_tcp_connection_closes_with_its_allocation() {
    let relay = start_relay(&["--default-lifetime", "2", "--max-lifetime", "2"]);
    let mut silent = TurnProbe::tcp(relay.addr);
    silent.allocate(None);
    let t0 = Instant::now();
    assert_eq!(silent.recv(Duration::from_secs(8)), None);
    let t = t0.elapsed();
    assert!(
        t < Duration::from_secs(5),
        "closed {t:?} after a 2 s allocation"
    );
    let mut leaving = TurnProbe::tcp(relay.addr);
    leaving.allocate(None);
    assert_eq!(
        leaving.release(),
        None,
        "Refresh 0 is answered before the close"
    );
    let t0 = Instant::now();
    assert_eq!(leaving.recv(Duration::from_secs(5)), None);
    assert!(t0.elapsed() < Duration::from_secs(2));
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert_eq!(
        metric(&text, "icebreaker_relay_tcp_connections", &[]),
        0.0,
        "{text}"
    );
}
