//! The session driver end to end, in-process: each client is one end of a Unix socket pair
//! whose other end runs [`super::run`] against a real [`MemoryBus`]. No ports, no HTTP, and
//! tokio's paused clock for heartbeats, so nothing here sleeps for real.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::socket::WsSocket;
use crate::bus::memory::MemoryBus;
use crate::config::SignalingArgs;
use crate::http::AppState;
use crate::limits::PerIp;
use crate::metrics::Metrics;

fn state(tweak: impl FnOnce(&mut crate::config::SignalingConfig)) -> Arc<AppState> {
    let mut cfg = SignalingArgs {
        no_relay: true,
        ..Default::default()
    }
    .resolve()
    .expect("default config");
    tweak(&mut cfg);
    let metrics = Metrics::default();
    Arc::new(AppState {
        bus: Arc::new(MemoryBus::new(cfg.hub(), 4, metrics.clone())),
        per_ip: PerIp::new(cfg.join_rate, cfg.join_burst),
        cfg: arc_swap::ArcSwap::from_pointee(cfg),
        metrics,
        registry: Default::default(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        tls: None,
        relay: None,
    })
}

/// A server frame as the client reads it.
#[derive(Debug, PartialEq)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
}

struct Client {
    io: UnixStream,
    buf: Vec<u8>,
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn connect(st: &Arc<AppState>) -> Client {
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let hold = st
        .per_ip
        .acquire(IP, st.cfg().max_connections_per_ip)
        .map(|h| h as crate::room::Hold);
    let sock = Arc::new(WsSocket::new(theirs, st.cfg().outbox_limit, 4 << 20, hold));
    tokio::spawn(super::run(sock, bytes::Bytes::new(), st.clone(), IP, None));
    Client {
        io: ours,
        buf: Vec::new(),
    }
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    crate::ws::frame::client_frame(fin, opcode, payload, [9, 8, 7, 6])
}

impl Client {
    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    async fn text(&mut self, s: &str) {
        self.write(&frame(true, 1, s.as_bytes())).await;
    }

    /// The next frame; `None` at EOF.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = parse_server(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut b = [0u8; 8192];
            let n = self.io.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// The next protocol message, answering and skipping the server's pings.
    async fn json(&mut self) -> Value {
        loop {
            match self.frame().await {
                Some(Frame::Text(t)) => return serde_json::from_str(&t).expect("JSON"),
                Some(Frame::Ping(p)) => self.write(&frame(true, 0xA, &p)).await,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    async fn join(&mut self, room: &str) -> Value {
        self.text(&format!(r#"{{"type":"join","room":"{room}"}}"#))
            .await;
        let j = self.json().await;
        assert_eq!(j["type"], "joined", "{j}");
        j
    }
}

fn parse_server(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
    assert_ne!(b[0] & 0x80, 0, "server frames are final");
    let (len, at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let p = b.get(at..at + len)?.to_vec();
    let f = match b[0] & 0x0f {
        1 => Frame::Text(String::from_utf8(p).expect("UTF-8 from the server")),
        2 => Frame::Binary(p),
        8 => Frame::Close(
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8(p[2..].to_vec()).expect("UTF-8 reason"),
        ),
        9 => Frame::Ping(p),
        0xA => Frame::Pong(p),
        op => panic!("opcode {op}"),
    };
    Some((f, at + len))
}

#[tokio::test(start_paused = true)]
async fn signals_in_one_write_arrive_in_order_with_increasing_seq() {
    let st = state(|_| {});
    let mut a = connect(&st);
    let mut b = connect(&st);
    let ja = a.join("r").await;
    let jb = b.join("r").await;
    assert_eq!(jb["peers"][0]["id"], ja["id"]);
    let pj = a.json().await;
    assert_eq!(
        (pj["type"].as_str(), &pj["id"]),
        (Some("peer-joined"), &jb["id"])
    );
    let to = ja["id"].as_str().unwrap();
    let mut burst = Vec::new();
    for n in 0..20 {
        let s = format!(r#"{{"type":"signal","to":"{to}","data":{{"n":{n},"s":"é\"x"}}}}"#);
        burst.extend(frame(true, 1, s.as_bytes()));
    }
    b.write(&burst).await;
    let mut last = pj["seq"].as_u64().unwrap();
    for n in 0..20 {
        let m = a.json().await;
        assert_eq!(m["type"], "signal");
        assert_eq!(m["from"], jb["id"]);
        assert_eq!(m["data"], serde_json::json!({"n": n, "s": "é\"x"}));
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1);
        last = seq;
    }
}

#[tokio::test(start_paused = true)]
async fn a_fragmented_message_with_a_ping_inside_is_assembled() {
    let st = state(|_| {});
    let mut a = connect(&st);
    let mut b = connect(&st);
    let ja = a.join("r").await;
    b.join("r").await;
    a.json().await; // peer-joined
    let to = ja["id"].as_str().unwrap();
    let msg = format!(r#"{{"type":"signal","to":"{to}","data":{{"sdp":"v=0"}}}}"#);
    let (x, y) = msg.as_bytes().split_at(10);
    let mut bytes = frame(false, 1, x);
    bytes.extend(frame(true, 9, b"hi"));
    bytes.extend(frame(true, 0, y));
    b.write(&bytes).await;
    assert_eq!(b.frame().await, Some(Frame::Pong(b"hi".to_vec())));
    let m = a.json().await;
    assert_eq!(m["data"]["sdp"], "v=0");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_answered_and_framing_errors_close_with_their_code() {
    let st = state(|_| {});
    let mut a = connect(&st);
    a.write(&frame(true, 2, &[1, 2, 3])).await;
    let e = a.json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad-message"))
    );
    a.text(r#"{"type":"dance"}"#).await;
    let e = a.json().await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown message type"),
        "{e}"
    );
    a.text(r#"{"type":"signal","to":"x","data":1}"#).await;
    assert_eq!(a.json().await["code"], "not-joined");
    // Not UTF-8: 1007, then the server closes its side.
    a.write(&frame(true, 1, &[0xc3, 0x28])).await;
    assert_eq!(
        a.frame().await,
        Some(Frame::Close(1007, "text frames must be UTF-8".into()))
    );

    let mut big = connect(&st);
    let max = st.cfg().max_message_bytes;
    big.write(&frame(true, 1, &vec![b' '; max + 1])).await;
    assert_eq!(big.json().await["code"], "too-large");
    assert!(matches!(big.frame().await, Some(Frame::Close(1009, _))));
}

#[tokio::test(start_paused = true)]
async fn a_client_close_is_echoed_and_the_room_hears_it_left() {
    let st = state(|_| {});
    let mut a = connect(&st);
    let mut b = connect(&st);
    a.join("r").await;
    let jb = b.join("r").await;
    a.json().await; // peer-joined
    b.write(&frame(true, 8, &[0x0f, 0xa0])).await; // 4000
    assert_eq!(b.frame().await, Some(Frame::Close(4000, String::new())));
    assert_eq!(b.frame().await, None, "then FIN");
    let left = a.json().await;
    assert_eq!(left["type"], "peer-left");
    assert_eq!(
        (&left["id"], left["reason"].as_str()),
        (&jb["id"], Some("left"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_pings_is_dropped_but_may_resume() {
    let st = state(|c| c.heartbeat_interval = Duration::from_secs(5));
    let mut a = connect(&st);
    let mut b = connect(&st);
    let ja = a.join("r").await;
    b.join("r").await;
    a.json().await;
    // `a` reads nothing more: its pings go unanswered, and after two intervals of
    // silence (virtual time) the server drops the connection without a close frame.
    let mut frames = 0;
    while let Some(f) = a.frame().await {
        assert!(matches!(f, Frame::Ping(_)), "{f:?}");
        frames += 1;
    }
    assert!(frames >= 2, "pinged before giving up");
    // Kept for the grace: `b` hears nothing, and `a` comes back with its token.
    let mut a2 = connect(&st);
    a2.text(&format!(
        r#"{{"type":"resume","id":{},"token":{},"last_seq":{}}}"#,
        ja["id"], ja["resume_token"], 2
    ))
    .await;
    assert_eq!(a2.json().await["type"], "resumed");
}

/// A live socket that is abandoned (the client stopped processing, the connection stays
/// and still answers pings): its pongs must not count as processed once the client has
/// said what it processed with `ping` `last_seq`. A resume on a new socket gets exactly the
/// rest, each once, and the old socket is closed with 1008.
#[tokio::test(start_paused = true)]
async fn resume_from_an_abandoned_live_socket_replays_exactly_what_was_not_processed() {
    let st = state(|c| c.heartbeat_interval = Duration::from_secs(1));
    let mut a = connect(&st);
    let mut b = connect(&st);
    let ja = a.join("r").await;
    b.join("r").await;
    a.json().await; // peer-joined
    let to = ja["id"].as_str().unwrap().to_string();
    let send = |n: u32| format!(r#"{{"type":"signal","to":"{to}","data":{{"n":{n}}}}}"#);
    for n in 0..5 {
        b.text(&send(n)).await;
    }
    let mut processed = 0;
    for _ in 0..3 {
        processed = a.json().await["seq"].as_u64().unwrap();
    }
    a.text(&format!(r#"{{"type":"ping","last_seq":{processed}}}"#))
        .await;
    for n in 5..7 {
        b.text(&send(n)).await;
    }
    // Abandoned: the client reads and answers every ping for a few (virtual) seconds,
    // but processes nothing.
    let mut pongs = 0;
    let _ = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(f) = a.frame().await {
            if let Frame::Ping(p) = f {
                a.write(&frame(true, 0xA, &p)).await;
                pongs += 1;
            }
        }
    })
    .await;
    assert!(pongs >= 2, "the server pinged the live socket");
    let mut a2 = connect(&st);
    a2.text(&format!(
        r#"{{"type":"resume","id":{},"token":{},"last_seq":{processed}}}"#,
        ja["id"], ja["resume_token"]
    ))
    .await;
    let r = a2.json().await;
    assert_eq!(
        (r["type"].as_str(), r["seq"].as_u64()),
        (Some("resumed"), Some(processed))
    );
    let mut got = Vec::new();
    let mut last = processed;
    while got.len() < 4 {
        let m = a2.json().await;
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last, "in order, none twice: {m}");
        last = seq;
        if m["type"] == "signal" {
            got.push(m["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, [3, 4, 5, 6]);
    // The abandoned socket is told why it was cut off.
    let closed = loop {
        match a.frame().await {
            Some(Frame::Close(c, r)) => break (c, r),
            Some(_) => continue,
            None => panic!("closed without a close frame"),
        }
    };
    assert_eq!(closed, (1008, "detached: resumed elsewhere".to_string()));
}
