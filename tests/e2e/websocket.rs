//! `icebreaker`'s WebSocket layer (hand-written, see signaling/src/ws) against raw bytes on
//! a TCP socket: the handshake, fragmented messages, control frames, the close codes for
//! what RFC 6455 forbids, a client that stops reading, and the close on SIGTERM.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use icebreaker_tests::raw_ws::{In, Raw};
use icebreaker_tests::{http_get, metric, start_icebreaker};

#[test]
fn handshake_fragments_and_control_frames() {
    let ib = start_icebreaker(&["--no-relay"]);
    // Not a WebSocket request: 426 with a reason, and a wrong version names the right one.
    let (status, _) = http_get(ib.http, "/ws");
    assert_eq!(status, 426);
    let (status, head, _) = Raw::handshake(
        &ib,
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    assert_eq!(status, 426);
    assert!(
        head.to_lowercase().contains("sec-websocket-version: 13"),
        "{head}"
    );

    let mut c = Raw::connect(&ib);
    // A join split over three frames (text, continuation, final continuation), with a
    // ping between the fragments (control frames may interleave).
    let join = json!({"type": "join", "room": "frag"}).to_string();
    let (a, rest) = join.as_bytes().split_at(5);
    let (b, d) = rest.split_at(7);
    c.frame(false, 0x1, a, false);
    c.frame(true, 0x9, b"hello", false);
    c.frame(false, 0x0, b, false);
    c.frame(true, 0x0, d, false);
    assert_eq!(
        c.recv(),
        In::Pong(b"hello".to_vec()),
        "ping answered in place"
    );
    let joined = c.message();
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["room"], "frag");

    // Two messages in one TCP write, then an application ping: answered in order.
    let mut both = Vec::new();
    for v in [json!({"type": "ping"}), json!({"type": "nonsense"})] {
        let p = v.to_string();
        both.push(0x81);
        both.push(0x80 | p.len() as u8);
        both.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the bytes as they are
        both.extend_from_slice(p.as_bytes());
    }
    c.s.write_all(&both).unwrap();
    assert_eq!(c.message()["type"], "pong");
    let e = c.message();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad-message"))
    );

    // A heartbeat ping names the last seq written; its pong acknowledges it.
    let mut c2 = Raw::connect(&ib);
    c2.text(json!({"type": "join", "room": "frag"}));
    assert_eq!(c2.message()["type"], "joined");
    assert_eq!(c.message()["type"], "peer-joined");

    // The client closes: the server answers with the same code and ends the stream, and
    // the peer has left.
    c2.frame(true, 0x8, &[0x03, 0xE8], false);
    assert_eq!(c2.close_code(), 1000);
    let left = c.message();
    assert_eq!(
        (left["type"].as_str(), left["reason"].as_str()),
        (Some("peer-left"), Some("left"))
    );
}

#[test]
fn frames_rfc6455_forbids_close_the_connection_with_the_right_code() {
    let ib = start_icebreaker(&["--no-relay"]);
    // Unmasked client frame: protocol error.
    let mut c = Raw::connect(&ib);
    c.frame(true, 0x1, br#"{"type":"ping"}"#, true);
    assert_eq!(c.close_code(), 1002);
    // Text that is not UTF-8.
    let mut c = Raw::connect(&ib);
    c.frame(true, 0x1, &[b'"', 0xC3, 0x28, b'"'], false);
    assert_eq!(c.close_code(), 1007);
    // A continuation with nothing to continue.
    let mut c = Raw::connect(&ib);
    c.frame(true, 0x0, b"{}", false);
    assert_eq!(c.close_code(), 1002);
    // An oversized control frame.
    let mut c = Raw::connect(&ib);
    c.frame(true, 0x9, &[0u8; 126], false);
    assert_eq!(c.close_code(), 1002);
    // A frame header announcing more than 64 KiB: refused from the header alone, with the
    // protocol's `too-large` error first; the payload is never sent.
    let mut c = Raw::connect(&ib);
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 20).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    c.s.write_all(&head).unwrap();
    let e = c.message();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("too-large"))
    );
    assert_eq!(c.close_code(), 1009);
    // The same over 4 continuation frames of 20 KiB each.
    let mut c = Raw::connect(&ib);
    c.frame(false, 0x1, &[b' '; 20_000], false);
    for _ in 0..3 {
        c.frame(false, 0x0, &[b' '; 20_000], false);
    }
    assert_eq!(c.message()["code"], "too-large");
    assert_eq!(c.close_code(), 1009);

    // The server is still fine.
    let mut c = Raw::connect(&ib);
    c.text(json!({"type": "ping"}));
    assert_eq!(c.message()["type"], "pong");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_are_not_held_up() {
    let ib = start_icebreaker(&["--no-relay", "--rate-limit", "100000"]);
    let mut reader = Raw::connect(&ib);
    reader.text(json!({"type": "join", "room": "slow"}));
    let joined = reader.message();
    let slow_id = joined["id"].as_str().unwrap().to_string();
    let mut sender = Raw::connect(&ib);
    sender.text(json!({"type": "join", "room": "slow"}));
    assert_eq!(sender.message()["type"], "joined");
    assert_eq!(reader.message()["type"], "peer-joined");
    // `reader` stops reading. 60 KB signals fill the kernel's buffers, then the server's
    // bounded output (4 MiB): it is cut off, and the sender keeps being served.
    let big = "x".repeat(60_000);
    let t0 = Instant::now();
    let mut cut = false;
    for i in 0..2000 {
        sender.text(json!({"type": "signal", "to": slow_id, "data": {"pad": big}}));
        if i % 50 == 49 {
            let (_, m) = http_get(ib.http, "/metrics");
            if metric(&m, "icebreaker_slow_consumers_total", &[]) >= 1.0 {
                cut = true;
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "sending took too long"
        );
    }
    assert!(cut, "the reader was never cut off");
    sender.text(json!({"type": "ping"}));
    loop {
        match sender.message() {
            m if m["type"] == "pong" => break,
            m => assert_ne!(m["type"], "error", "{m}"),
        }
    }
    // What reached the reader is whole messages, then a close with 1008.
    let mut messages = 0;
    loop {
        match reader.recv() {
            In::Text(m) => {
                assert_eq!(m["type"], "signal");
                messages += 1;
            }
            In::Ping(_) => {}
            In::Close(code, reason) => {
                assert_eq!(code, 1008, "{reason}");
                break;
            }
            other => panic!("{other:?} after {messages} messages"),
        }
    }
    assert!(messages > 0);
}

#[test]
fn a_silent_client_is_dropped_without_a_close_frame() {
    let ib = start_icebreaker(&["--no-relay", "--heartbeat-interval", "200ms"]);
    let mut c = Raw::connect(&ib);
    c.text(json!({"type": "join", "room": "quiet"}));
    assert_eq!(c.message()["type"], "joined");
    // Never answer a ping: after two intervals the server ends the stream, with no close
    // frame (docs/protocol.md), so the client knows to resume rather than treat it as a
    // clean close.
    let mut pings = 0;
    loop {
        match c.recv() {
            In::Ping(_) => pings += 1,
            In::Eof => break,
            other => panic!("expected pings then the end of the stream, got {other:?}"),
        }
    }
    assert!(pings >= 1);
    let (_, m) = http_get(ib.http, "/metrics");
    assert_eq!(metric(&m, "icebreaker_heartbeat_timeouts_total", &[]), 1.0);
}

#[test]
fn sigterm_closes_websockets_with_going_away() {
    let mut ib = start_icebreaker(&["--no-relay"]);
    let mut c = Raw::connect(&ib);
    c.text(json!({"type": "join", "room": "bye"}));
    assert_eq!(c.message()["type"], "joined");
    let t = std::thread::spawn(move || {
        let s = ib.proc.terminate(Duration::from_secs(15));
        (s, ib)
    });
    assert_eq!(c.close_code(), 1001);
    let (status, _ib) = t.join().unwrap();
    assert!(status.expect("exits on SIGTERM").success());
}

/// Pairs sending as fast as the server takes them (several messages per read and per
/// write): every message arrives once, in order, with consecutive seqs.
#[test]
fn signals_under_load_arrive_complete_and_in_order() {
    let ib = start_icebreaker(&["--no-relay", "--rate-limit", "1000000"]);
    let out = std::process::Command::new(icebreaker_tests::bin("icebreaker-sigload"))
        .args(["throughput", "--target", "ours", "--url", &ib.ws_url()])
        .args(["--pairs", "20", "--rate", "0", "--inflight", "16"])
        .args(["--duration-s", "2", "--size", "300", "--quiet"])
        .output()
        .expect("icebreaker-sigload runs (cargo build --workspace builds it)");
    let line = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert!(r["sent"].as_u64().unwrap() > 1000, "{r}");
    assert_eq!(r["sent"], r["delivered"], "{r}");
    assert_eq!(
        (&r["lost"], &r["order_violations"], &r["gaps"]),
        (&json!(0), &json!(0), &json!(0)),
        "{r}"
    );
}

/// A client whose socket stays alive (it still answers pings) but which stopped processing
/// messages, reconnects and resumes from what it processed: it gets every message it had
/// not processed, none twice. Its own acknowledgement (`last_seq` in `ping`) is what the
/// server trusted, not the pongs its abandoned socket kept sending.
#[test]
fn abandoned_live_socket_then_resume_gets_every_unprocessed_message_once() {
    let ib = start_icebreaker(&["--no-relay"]);
    let mut a = Raw::connect(&ib);
    a.text(json!({"type": "join", "room": "frozen"}));
    let joined = a.message();
    let (id, token) = (joined["id"].clone(), joined["resume_token"].clone());
    let mut b = Raw::connect(&ib);
    b.text(json!({"type": "join", "room": "frozen"}));
    assert_eq!(b.message()["type"], "joined");
    let pj = a.message();
    assert_eq!(pj["type"], "peer-joined");
    let processed = pj["seq"].as_u64().unwrap();
    a.text(json!({"type": "ping", "last_seq": processed}));
    for i in 0..10 {
        b.text(json!({"type": "signal", "to": id, "data": {"i": i}}));
    }
    // A's socket reads everything and answers every ping (the heartbeat's payload names
    // the last seq written, i.e. all of it) for two seconds; A processes nothing more.
    a.s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut received, mut pongs) = (0, 0);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match a.recv() {
            In::Text(_) => received += 1,
            In::Ping(p) => {
                a.frame(true, 0xA, &p, false);
                pongs += 1;
            }
            In::Eof => {} // read timeout
            other => panic!("{other:?}"),
        }
    }
    assert!(
        received >= 11 && pongs >= 1,
        "{received} messages, {pongs} pongs"
    );
    // Reconnect and resume from what was processed.
    let mut r = Raw::connect(&ib);
    r.text(json!({"type": "resume", "id": id, "token": token, "last_seq": processed}));
    let m = r.message();
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("resumed"), Some(processed)),
        "{m}"
    );
    r.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut signals = Vec::new();
    let mut seqs = Vec::new();
    loop {
        match r.recv() {
            In::Text(v) => {
                seqs.push(v["seq"].as_u64().unwrap());
                if v["type"] == "signal" {
                    signals.push(v["data"]["i"].as_u64().unwrap());
                }
            }
            In::Ping(_) => {}
            In::Eof => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        signals,
        (0..10).collect::<Vec<u64>>(),
        "each unprocessed signal, once, in order"
    );
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted, seqs, "no seq twice");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gaps: {seqs:?}"
    );
    assert_eq!(seqs[0], processed + 1);
}
