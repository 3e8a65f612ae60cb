//! A soak: mixed load on both binaries for `SOAK_SECS` (60 in CI; BENCHMARKS.md has the
//! 10-minute run) with their memory sampled every second. Signaling: peers join rooms,
//! signal, and leave, drop (kept for the resume grace) or drop and resume. Relay:
//! allocations over UDP and TCP churn, relaying to an echo peer. Memory must stay flat
//! after warm-up, and everything must be released at the end (the metrics say so).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use icebreaker_relay::codec::{attr, Message};
use icebreaker_tests::raw_ws::{In, Raw};
use icebreaker_tests::turn_probe::TurnProbe;
use icebreaker_tests::{
    assert_rss_flat, http_get, metric, rss_kib, start_icebreaker, start_relay, Icebreaker,
};

#[derive(Default)]
struct Counts {
    joins: AtomicU64,
    signals: AtomicU64,
    resumes: AtomicU64,
    allocations: AtomicU64,
    echoes: AtomicU64,
}

/// Reads what arrives until the connection is quiet for `quiet`.
fn drain(c: &mut Raw, quiet: Duration) -> Vec<serde_json::Value> {
    c.s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    loop {
        match c.recv() {
            In::Text(v) => out.push(v),
            In::Ping(_) | In::Pong(_) => {}
            In::Close(..) | In::Eof => return out,
        }
    }
}

fn reset(c: Raw) {
    socket2::SockRef::from(&c.s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// One signaling client's life, over and over until `stop`.
fn signaling_worker(ib: &Icebreaker, seed: u64, stop: &AtomicBool, n: &Counts) {
    let mut round = seed;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let room = format!("soak-{}", round % 7);
        let mut c = Raw::connect(ib);
        c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.text(json!({"type": "join", "room": room, "meta": {"name": format!("w{seed}")}}));
        let j = c.message();
        if j["type"] != "joined" {
            // room-full is fine under churn; anything else is not
            assert_eq!(j["code"], "room-full", "{j}");
            continue;
        }
        n.joins.fetch_add(1, Ordering::Relaxed);
        let (id, token) = (j["id"].clone(), j["resume_token"].clone());
        let mut last_seq = j["seq"].as_u64().unwrap();
        let others: Vec<String> = j["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect();
        for (i, to) in others.iter().cycle().take(30).enumerate() {
            c.text(json!({"type": "signal", "to": to, "data": {"sdp": "x".repeat(200), "i": i}}));
            n.signals.fetch_add(1, Ordering::Relaxed);
        }
        for m in drain(&mut c, Duration::from_millis(30)) {
            if let Some(s) = m["seq"].as_u64() {
                last_seq = last_seq.max(s);
            }
            // A peer may leave between our reading its id and signalling it.
            if m["type"] == "error" {
                assert_eq!(m["code"], "unknown-peer", "{m}");
            }
        }
        match round % 4 {
            0 | 1 => c.text(json!({"type": "leave"})),
            2 => reset(c), // kept for the resume grace, then peer-left
            _ => {
                reset(c);
                let mut r = Raw::connect(ib);
                r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                r.text(json!({"type": "resume", "id": id, "token": token, "last_seq": last_seq}));
                let m = r.message();
                assert_eq!(m["type"], "resumed", "{m}");
                n.resumes.fetch_add(1, Ordering::Relaxed);
                r.text(json!({"type": "leave"}));
                drain(&mut r, Duration::from_millis(10));
            }
        }
    }
}

/// Allocations churning over UDP and TCP, each relaying a few datagrams to the echo peer.
fn relay_worker(relay: SocketAddr, echo: SocketAddr, seed: u64, stop: &AtomicBool, n: &Counts) {
    let mut round = seed;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // A steady churn, not a flood: a port cools down for a second or two after its
        // allocation ends, and the harness's range has 400.
        std::thread::sleep(Duration::from_millis(40));
        let mut c = if round.is_multiple_of(5) {
            TurnProbe::tcp(relay)
        } else {
            TurnProbe::udp(relay)
        };
        c.allocate(None);
        n.allocations.fetch_add(1, Ordering::Relaxed);
        assert_eq!(c.permit(echo), None);
        for i in 0..10u8 {
            c.send_indication(echo, &[i; 100]);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = 0;
        while got < 10 && Instant::now() < deadline {
            if let Some(d) = c.recv(Duration::from_millis(100)) {
                if Message::parse(&d).is_ok_and(|m| m.get(attr::DATA).is_some()) {
                    got += 1;
                }
            }
        }
        n.echoes.fetch_add(got, Ordering::Relaxed);
        if round.is_multiple_of(3) {
            // Dropped without a Refresh: UDP expires with the lifetime, TCP closes now.
            continue;
        }
        let code = c.release();
        // 437: the 3 s allocation already expired (a round can take that long when the
        // machine is busy); gone either way, which is what the end of the soak checks.
        assert!(matches!(code, None | Some(437)), "{code:?}");
    }
}

#[test]
fn mixed_load_keeps_memory_flat_and_releases_everything() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // One IP plays every client here: its join rate is not what is under test.
    let ib = start_icebreaker(&[
        "--no-relay",
        "--resume-grace",
        "2s",
        "--room-capacity",
        "8",
        "--join-rate",
        "1000000",
    ]);
    let relay = start_relay(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--default-lifetime",
        "3",
        "--max-lifetime",
        "3",
    ]);
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(Counts::default());
    let (sig_pid, relay_pid) = (ib.proc.pid(), relay.proc.pid());
    let samples = std::thread::scope(|s| {
        s.spawn(|| {
            let mut b = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((k, from)) = echo.recv_from(&mut b) {
                    let _ = echo.send_to(&b[..k], from);
                }
            }
        });
        for w in 0..6u64 {
            let (ib, stop, n) = (&ib, &stop, &n);
            s.spawn(move || signaling_worker(ib, w * 1000, stop, n));
        }
        for w in 0..2u64 {
            let (stop, n) = (&stop, &n);
            s.spawn(move || relay_worker(relay.addr, echo_addr, w * 1000, stop, n));
        }
        let mut samples = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_secs(1));
            samples.push((rss_kib(sig_pid), rss_kib(relay_pid)));
        }
        stop.store(true, Ordering::Relaxed);
        samples
    });
    println!(
        "soak {secs} s: {} joins, {} signals, {} resumes, {} allocations, {} echoes",
        n.joins.load(Ordering::Relaxed),
        n.signals.load(Ordering::Relaxed),
        n.resumes.load(Ordering::Relaxed),
        n.allocations.load(Ordering::Relaxed),
        n.echoes.load(Ordering::Relaxed)
    );
    assert!(n.joins.load(Ordering::Relaxed) > secs * 10, "the load ran");
    assert!(
        n.allocations.load(Ordering::Relaxed) > secs * 5,
        "the load ran"
    );
    for (name, pick) in [("icebreaker", 0usize), ("icebreaker-relay", 1)] {
        let col: Vec<u64> = samples
            .iter()
            .map(|s| if pick == 0 { s.0 } else { s.1 })
            .collect();
        assert_rss_flat(name, &col);
    }
    // Everything is released: peers dropped without a resume leave after the 2 s grace,
    // UDP allocations left behind expire after their 3 s lifetime.
    std::thread::sleep(Duration::from_secs(5));
    let (_, m) = http_get(ib.http, "/metrics");
    for g in [
        "icebreaker_connections",
        "icebreaker_peers",
        "icebreaker_rooms",
    ] {
        assert_eq!(metric(&m, g, &[]), 0.0, "{g}\n{m}");
    }
    let (_, r) = http_get(relay.metrics.unwrap(), "/metrics");
    for g in [
        "icebreaker_relay_allocations",
        "icebreaker_relay_tcp_connections",
    ] {
        assert_eq!(metric(&r, g, &[]), 0.0, "{g}\n{r}");
    }
}
