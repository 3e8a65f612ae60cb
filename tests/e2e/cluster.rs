//! Several `icebreaker` nodes sharing rooms through a real `redis-server`, behind a real
//! HAProxy (both Debian's, started here on free ports): rooms across nodes, 1000 signals
//! in order, webrtc-rs peers and Chromium pages on different nodes, a node killed with
//! SIGKILL (its peers resume on a survivor, exactly once `peer-left` for the rest), Redis
//! killed and restarted, and room capacity under concurrent joins on every node.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use icebreaker_tests::haproxy::Haproxy;
use icebreaker_tests::ws_client::WsClient;
use icebreaker_tests::{
    bin, browser_dir, free_tcp_port, http_get, metric, start_icebreaker, wait_for, Icebreaker,
    Proc, Redis,
};

/// A cluster node: `icebreaker --redis … --node-id …` without a bundled relay (peers use
/// host candidates on loopback).
fn node(redis: &Redis, id: &str, extra: &[&str]) -> Icebreaker {
    let url = redis.url();
    let mut args = vec![
        "--redis",
        &url,
        "--node-id",
        id,
        "--no-relay",
        "--join-rate",
        "1000",
    ];
    args.extend_from_slice(extra);
    start_icebreaker(&args)
}

/// The shared client, checking seqs strictly: across nodes and resumes no seq may be lost
/// or repeated.
struct Client;

impl Client {
    async fn connect(url: &str) -> WsClient {
        WsClient::connect(url).await.strict()
    }
}

/// The ids in a `joined`'s `peers`, sorted (a Redis hash keeps no join order).
fn peer_ids(joined: &Value) -> Vec<String> {
    let mut ids: Vec<String> = joined["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn peers_on(n: &Icebreaker) -> u64 {
    let (_, body) = http_get(n.http, "/healthz");
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("peers="))
        .and_then(|v| v.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no peers= in {body:?}"))
}

fn metrics_of(n: &Icebreaker) -> String {
    http_get(n.http, "/metrics").1
}

/// Three nodes behind HAProxy: three peers land on three nodes, see each other join, and
/// 1000 signals each way between nodes arrive complete and in order.
#[test]
fn peers_on_three_nodes_share_a_room_and_signal_in_order() {
    let redis = Redis::start(free_tcp_port());
    // 2000 signals from one connection at once: above the default per-connection rate.
    let fast = ["--rate-limit", "100000", "--rate-burst", "100000"];
    let nodes: Vec<Icebreaker> = (1..=3)
        .map(|i| node(&redis, &format!("n{i}"), &fast))
        .collect();
    let lb = Haproxy::start(&nodes.iter().collect::<Vec<_>>());
    rt().block_on(async {
        let mut a = Client::connect(&lb.ws()).await;
        assert!(a.join("three").await["peers"]
            .as_array()
            .unwrap()
            .is_empty());
        let mut b = Client::connect(&lb.ws()).await;
        let jb = b.join("three").await;
        assert_eq!(jb["peers"][0]["id"], a.id.as_str(), "{jb}");
        let pj = a.expect("peer-joined").await;
        assert_eq!(
            (pj["id"].as_str(), pj["polite"].as_bool()),
            (Some(&*b.id), Some(true))
        );
        let mut c = Client::connect(&lb.ws()).await;
        let jc = c.join("three").await;
        assert_eq!(peer_ids(&jc), sorted(&[&a.id, &b.id]), "{jc}");
        assert_eq!(a.expect("peer-joined").await["id"], c.id.as_str());
        assert_eq!(b.expect("peer-joined").await["id"], c.id.as_str());
        let placed: Vec<u64> = nodes.iter().map(peers_on).collect();
        assert_eq!(
            placed,
            vec![1, 1, 1],
            "round robin put one peer on each node"
        );

        let (bid, cid, aid) = (b.id.clone(), c.id.clone(), a.id.clone());
        let send = async {
            for i in 0..1000 {
                a.signal(&bid, i).await;
                a.signal(&cid, i).await;
            }
            a
        };
        let recv_b = async {
            b.expect_signals(&aid, 0, 1000).await;
            for i in 0..1000 {
                b.signal(&aid, i).await;
            }
            b
        };
        let recv_c = async {
            c.expect_signals(&aid, 0, 1000).await;
            c
        };
        let (mut a, mut b, _c) = tokio::join!(send, recv_b, recv_c);
        a.expect_signals(&bid, 0, 1000).await;
        // A signal to someone in another room (or nobody) is refused, as on one node.
        a.signal("nobody-here", 0).await;
        assert_eq!(a.expect("error").await["code"], "unknown-peer");
        b.send(json!({"type":"leave"})).await;
        let left = a.expect("peer-left").await;
        assert_eq!(
            (left["id"].as_str(), left["reason"].as_str()),
            (Some(&*bid), Some("left"))
        );
    });
    let crossed: f64 = nodes
        .iter()
        .map(|n| {
            metric(
                &metrics_of(n),
                "icebreaker_cross_node_latency_seconds_count",
                &[],
            )
        })
        .sum();
    assert!(
        crossed >= 3000.0,
        "messages through Redis counted: {crossed}"
    );
    for n in &nodes {
        assert_eq!(metric(&metrics_of(n), "icebreaker_redis_up", &[]), 1.0);
    }
}

/// `icebreaker-peer chat` in `room` on `url`: sends one line, expects one, then exits.
fn chat_peer(url: &str, room: &str, name: &str) -> Proc {
    let mut cmd = Command::new(bin("icebreaker-peer"));
    cmd.args(["--server", url, "--room", room, "--name", name])
        .args(["--bind", "127.0.0.1", "--json", "--timeout", "40s"])
        .args([
            "chat",
            "--send",
            &format!("hi from {name}"),
            "--expect",
            "1",
        ]);
    Proc::start(name, cmd)
}

/// Two headless webrtc-rs peers that land on different nodes open a data channel.
#[test]
fn webrtc_peers_on_two_nodes_open_a_data_channel() {
    let redis = Redis::start(free_tcp_port());
    let nodes: Vec<Icebreaker> = (1..=2)
        .map(|i| node(&redis, &format!("w{i}"), &[]))
        .collect();
    let lb = Haproxy::start(&nodes.iter().collect::<Vec<_>>());
    let peer = |name: &str| chat_peer(&lb.ws(), "dc", name);
    let mut a = peer("alice");
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("alice joined");
    let mut b = peer("bob");
    for p in [&mut a, &mut b] {
        let s = p.wait(Duration::from_secs(45)).expect("peer exits");
        assert!(s.success(), "{} failed:\n{}", p.name, p.output());
    }
    assert!(a.output().contains("hi from bob"), "{}", a.output());
    assert!(b.output().contains("hi from alice"), "{}", b.output());
    let placed: Vec<u64> = nodes
        .iter()
        .map(|n| {
            metric(
                &metrics_of(n),
                "icebreaker_messages_out_total",
                &["type=\"joined\""],
            ) as u64
        })
        .collect();
    assert_eq!(placed, vec![1, 1], "one peer joined on each node");
}

/// Two Chromium pages of the web client, each served by and signaling through a
/// different node, call each other (video decoded both ways, chat, pointers).
#[test]
fn browsers_on_two_nodes_call_each_other() {
    let dir = browser_dir();
    let redis = Redis::start(free_tcp_port());
    // The pages need a TURN-less call on loopback: host candidates suffice.
    let n1 = node(&redis, "b1", &[]);
    let n2 = node(&redis, "b2", &[]);
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["web-client.mjs", "--scenario", "two"])
        .args(["--base", &format!("http://{}", n1.http)])
        .args(["--base2", &format!("http://{}", n2.http)]);
    let mut p = Proc::start("web-client", cmd);
    let status = p
        .wait(Duration::from_secs(240))
        .expect("web-client.mjs finished");
    assert!(status.success(), "{}", p.output());
    assert!(p.output().contains("\"ok\":true"), "{}", p.output());
    for n in [&n1, &n2] {
        assert_eq!(
            metric(
                &metrics_of(n),
                "icebreaker_messages_out_total",
                &["type=\"joined\""]
            ),
            1.0,
            "one page joined on each node"
        );
    }
}

/// The web client refused with `unavailable` (its node lost Redis) keeps trying by itself
/// and gets in once Redis is back, then calls a page on the other node.
#[test]
fn browser_refused_while_redis_is_away_retries_and_gets_in() {
    let dir = browser_dir();
    let port = free_tcp_port();
    let mut redis = Redis::start(port);
    let n1 = node(&redis, "u1", &[]);
    let n2 = node(&redis, "u2", &[]);
    redis.kill();
    wait_for("n1 degraded", Duration::from_secs(5), || {
        http_get(n1.http, "/healthz").0 == 503
    });
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["web-client.mjs", "--scenario", "unavailable"])
        .args(["--base", &format!("http://{}", n1.http)])
        .args(["--base2", &format!("http://{}", n2.http)]);
    let mut p = Proc::start("web-client", cmd);
    p.wait_line("redis-may-return", Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the page was not refused twice:\n{}", p.output()));
    let refused = metric(
        &metrics_of(&n1),
        "icebreaker_errors_total",
        &["code=\"unavailable\""],
    );
    assert!(refused >= 2.0, "n1 answered unavailable {refused} times");
    let mut redis = Redis::start(port);
    let status = p
        .wait(Duration::from_secs(180))
        .expect("web-client.mjs finished");
    assert!(status.success(), "{}", p.output());
    assert!(p.output().contains("\"ok\":true"), "{}", p.output());
    assert_eq!(
        metric(
            &metrics_of(&n1),
            "icebreaker_messages_out_total",
            &["type=\"joined\""]
        ),
        1.0,
        "the page joined n1 once, after being refused"
    );
    redis.kill();
}

/// A right token whose resume another node cannot serve (here `last_seq` is ahead of what
/// was sent): `resume-failed`, and the room hears `peer-left` at once, as on the peer's own
/// node, not after the grace; its old node forgets it.
#[test]
fn unservable_resume_on_another_node_leaves_at_once() {
    let redis = Redis::start(free_tcp_port());
    let n1 = node(&redis, "f1", &["--resume-grace", "30s"]);
    let n2 = node(&redis, "f2", &["--resume-grace", "30s"]);
    let w1 = format!("ws://{}/ws", n1.http);
    let w2 = format!("ws://{}/ws", n2.http);
    rt().block_on(async {
        let mut a = Client::connect(&w1).await;
        a.join("unservable").await;
        let mut b = Client::connect(&w2).await;
        b.join("unservable").await;
        a.expect("peer-joined").await;
        let (aid, token) = (a.id.clone(), a.token.clone());
        drop(a);
        let mut a2 = Client::connect(&w2).await;
        a2.send(json!({"type":"resume","id": aid,"token": token,"last_seq": 999}))
            .await;
        let e = a2.expect("error").await;
        assert_eq!(e["code"], "resume-failed", "{e}");
        let v = b
            .try_recv(Duration::from_secs(3))
            .await
            .expect("peer-left well before the 30 s grace");
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str(), v["reason"].as_str()),
            (Some("peer-left"), Some(aid.as_str()), Some("timeout")),
            "{v}"
        );
        wait_for("n1 forgot a", Duration::from_secs(3), || peers_on(&n1) == 0);
    });
}

/// A node killed with SIGKILL: its peer that reconnects (through HAProxy, to the
/// survivor) resumes with exactly what it missed, none twice; the one that never comes
/// back is announced `peer-left` (timeout) once, after liveness expiry plus the grace.
#[test]
fn killed_node_peers_resume_on_a_survivor_and_the_rest_leave_once() {
    let redis = Redis::start(free_tcp_port());
    let mut nodes: Vec<Icebreaker> = (1..=2)
        .map(|i| node(&redis, &format!("k{i}"), &["--resume-grace", "3s"]))
        .collect();
    let lb = Haproxy::start(&nodes.iter().collect::<Vec<_>>());
    rt().block_on(async {
        // Round robin: a → first node, b → second, d → first again.
        let mut a = Client::connect(&lb.ws()).await;
        a.join("kill").await;
        let mut b = Client::connect(&lb.ws()).await;
        b.join("kill").await;
        a.expect("peer-joined").await;
        let mut d = Client::connect(&lb.ws()).await;
        d.join("kill").await;
        a.expect("peer-joined").await;
        b.expect("peer-joined").await;
        let placed: Vec<u64> = nodes.iter().map(peers_on).collect();
        let doomed = placed
            .iter()
            .position(|&n| n == 2)
            .expect("two peers on one node");
        let survivor = 1 - doomed;
        // Round robin alternates, so the first and third connection share a node.
        let (aid, bid, did) = (a.id.clone(), b.id.clone(), d.id.clone());
        for i in 0..10 {
            b.signal(&aid, i).await;
        }
        a.expect_signals(&bid, 0, 10).await;
        a.send(json!({"type":"ping","last_seq": a.last_seq})).await;
        a.expect("pong").await;

        unsafe { libc::kill(nodes[doomed].proc.pid() as i32, libc::SIGKILL) };
        nodes[doomed].proc.wait(Duration::from_secs(5));
        assert!(
            a.try_recv(Duration::from_secs(5)).await.is_none(),
            "a's socket closed"
        );
        drop(d);
        // While a is away its messages wait in Redis.
        for i in 10..30 {
            b.signal(&aid, i).await;
        }
        // HAProxy has marked the dead node down (or redispatches): a lands on the survivor.
        let mut a2 = Client::connect(&lb.ws()).await;
        a2.last_seq = a.last_seq;
        a2.send(json!({"type":"resume","id": aid,"token": a.token,"last_seq": a.last_seq}))
            .await;
        let r = a2.expect("resumed").await;
        assert_eq!(r["id"], aid.as_str(), "{r}");
        a2.expect_signals(&bid, 10, 20).await;
        for i in 30..35 {
            b.signal(&aid, i).await;
        }
        a2.expect_signals(&bid, 30, 5).await;
        assert_eq!(peers_on(&nodes[survivor]), 2, "a is now on the survivor");

        // d never comes back: peer-left once, for d only, on both remaining peers.
        for c in [&mut b, &mut a2] {
            let v = c
                .try_recv(Duration::from_secs(15))
                .await
                .expect("peer-left for the peer that did not come back");
            assert_eq!(
                (v["type"].as_str(), v["id"].as_str(), v["reason"].as_str()),
                (Some("peer-left"), Some(&*did), Some("timeout")),
                "{v}"
            );
        }
        for c in [&mut b, &mut a2] {
            if let Some(v) = c.try_recv(Duration::from_secs(3)).await {
                panic!("nothing more expected, got {v}");
            }
        }
        // a and b still talk (across nothing now: both on the survivor).
        a2.signal(&bid, 99).await;
        b.expect_signals(&aid, 99, 1).await;
    });
}

/// Redis killed mid-call and restarted empty: rooms keep working on each node, `/healthz`
/// says degraded and joins are refused meanwhile; afterwards the nodes re-register their
/// peers by themselves, joins work and see everyone, and signals cross nodes again.
#[test]
fn redis_outage_keeps_local_rooms_and_recovers_by_itself() {
    let port = free_tcp_port();
    let mut redis = Redis::start(port);
    let n1 = node(&redis, "r1", &[]);
    let n2 = node(&redis, "r2", &[]);
    let w1 = format!("ws://{}/ws", n1.http);
    let w2 = format!("ws://{}/ws", n2.http);
    rt().block_on(async {
        let mut a1 = Client::connect(&w1).await;
        a1.join("outage").await;
        let mut a2 = Client::connect(&w1).await;
        a2.join("outage").await;
        a1.expect("peer-joined").await;
        let mut b = Client::connect(&w2).await;
        b.join("outage").await;
        a1.expect("peer-joined").await;
        a2.expect("peer-joined").await;

        redis.kill();
        wait_for("n1 degraded", Duration::from_secs(5), || {
            http_get(n1.http, "/healthz").0 == 503
        });
        let (_, body) = http_get(n1.http, "/healthz");
        assert!(body.starts_with("degraded"), "{body}");
        assert_eq!(metric(&metrics_of(&n1), "icebreaker_redis_up", &[]), 0.0);

        // Same node: still delivered, in order.
        let a2id = a2.id.clone();
        for i in 0..5 {
            a1.signal(&a2id, i).await;
        }
        a2.expect_signals(&a1.id.clone(), 0, 5).await;
        // Another node: refused with a clear error.
        a1.signal(&b.id.clone(), 0).await;
        let e = a1.expect("error").await;
        assert_eq!(e["code"], "unavailable", "{e}");
        let mut late = Client::connect(&w1).await;
        late.send(json!({"type":"join","room":"outage"})).await;
        assert_eq!(late.expect("error").await["code"], "unavailable");
        // A headless peer that joins now is refused too, and tries again by itself.
        let mut cli1 = chat_peer(&w1, "outage-cli", "early");
        cli1.wait_line("unavailable", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("peer told unavailable:\n{}", cli1.output()));

        let mut redis = Redis::start(port);
        // /healthz turns 200 only once a node has written its peers back, so a join right
        // after sees all of them.
        wait_for("both nodes whole again", Duration::from_secs(10), || {
            http_get(n1.http, "/healthz").0 == 200 && http_get(n2.http, "/healthz").0 == 200
        });
        let mut c = Client::connect(&w2).await;
        let jc = c.join("outage").await;
        assert_eq!(
            peer_ids(&jc),
            sorted(&[&a1.id, &a2.id, &b.id]),
            "every peer re-registered: {jc}"
        );
        for p in [&mut a1, &mut a2, &mut b] {
            assert_eq!(p.expect("peer-joined").await["id"], c.id.as_str());
        }
        let bid = b.id.clone();
        a1.signal(&bid, 7).await;
        b.expect_signals(&a1.id.clone(), 7, 1).await;
        b.signal(&a2id, 8).await;
        a2.expect_signals(&bid, 8, 1).await;
        // The peer that was refused got in once Redis was back: it calls one on the other node.
        let mut cli2 = chat_peer(&w2, "outage-cli", "late");
        for p in [&mut cli1, &mut cli2] {
            let st = p.wait(Duration::from_secs(45)).expect("peer exits");
            assert!(st.success(), "{} failed:\n{}", p.name, p.output());
        }
        assert!(cli1.output().contains("hi from late"), "{}", cli1.output());
        redis.kill();
    });
    assert!(metric(&metrics_of(&n1), "icebreaker_redis_reconnects_total", &[]) >= 1.0);
}

/// Room capacity holds across nodes: 12 clients spread over three nodes join a room of
/// four at the same moment; exactly four get in.
#[test]
fn room_capacity_holds_across_nodes_under_concurrent_joins() {
    let redis = Redis::start(free_tcp_port());
    let nodes: Vec<Icebreaker> = (1..=3)
        .map(|i| node(&redis, &format!("c{i}"), &["--room-capacity", "4"]))
        .collect();
    let lb = Haproxy::start(&nodes.iter().collect::<Vec<_>>());
    rt().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..12 {
            clients.push(Client::connect(&lb.ws()).await);
        }
        let results = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
            c.send(json!({"type":"join","room":"small"})).await;
            loop {
                let v = c.recv().await;
                match v["type"].as_str() {
                    Some("joined") => return "joined".to_string(),
                    Some("error") => return v["code"].as_str().unwrap().to_string(),
                    _ => continue,
                }
            }
        }))
        .await;
        let joined = results.iter().filter(|r| *r == "joined").count();
        let full = results.iter().filter(|r| *r == "room-full").count();
        assert_eq!((joined, full), (4, 8), "{results:?}");
    });
    let on_nodes: u64 = nodes.iter().map(peers_on).sum();
    assert_eq!(on_nodes, 4);
}

/// Redis at `maxmemory` with `noeviction` answers OOM to every write: the node says
/// degraded on `/healthz` naming the OOM (not "unreachable"), a join gets `unavailable`,
/// and once Redis takes writes again the node is whole and joins work.
#[test]
fn redis_refusing_writes_with_oom_is_named_and_recovered_from() {
    icebreaker_tests::require("redis-cli", "redis-tools");
    let port = free_tcp_port();
    let redis = Redis::start(port);
    let n = node(&redis, "oom", &[]);
    let cli = |args: &[&str]| {
        redis_cli(port, args);
    };
    assert_eq!(http_get(n.http, "/healthz").0, 200);
    cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    cli(&["CONFIG", "SET", "maxmemory", "1"]);
    wait_for("healthz degraded", Duration::from_secs(10), || {
        http_get(n.http, "/healthz").0 == 503
    });
    let (_, body) = http_get(n.http, "/healthz");
    assert!(body.contains("OOM"), "{body}");
    rt().block_on(async {
        let mut c = Client::connect(&n.ws_url()).await;
        c.send(json!({"type": "join", "room": "oom"})).await;
        assert_eq!(c.expect("error").await["code"], "unavailable");
    });
    cli(&["CONFIG", "SET", "maxmemory", "0"]);
    wait_for("healthz whole again", Duration::from_secs(15), || {
        http_get(n.http, "/healthz").0 == 200
    });
    rt().block_on(async {
        let mut c = Client::connect(&n.ws_url()).await;
        c.join("oom").await;
    });
    assert!(
        metric(
            &metrics_of(&n),
            "icebreaker_redis_publish_errors_total",
            &[]
        ) >= 1.0
    );
}

/// `redis-cli -p PORT ARGS…`'s output, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A peer's outbox in Redis holds what it has not acknowledged, nothing more: a ping's
/// `last_seq` trims it to the entries after it (what a resume still needs), and a resume
/// on another node after such a partial ack replays exactly the rest, in order.
#[test]
fn acknowledged_messages_leave_redis_and_a_resume_elsewhere_replays_the_rest() {
    icebreaker_tests::require("redis-cli", "redis-tools");
    let port = free_tcp_port();
    let redis = Redis::start(port);
    let n1 = node(&redis, "q1", &[]);
    let n2 = node(&redis, "q2", &[]);
    let len = |id: &str| -> u64 {
        redis_cli(port, &["LLEN", &format!("ib:peer:{id}:q")])
            .parse()
            .unwrap()
    };
    let bytes = |id: &str| -> u64 {
        redis_cli(port, &["HGET", &format!("ib:peer:{id}"), "bytes"])
            .parse()
            .unwrap()
    };
    rt().block_on(async {
        let mut a = Client::connect(&n1.ws_url()).await;
        a.join("acks").await;
        let mut b = Client::connect(&n2.ws_url()).await;
        b.join("acks").await;
        a.expect("peer-joined").await;
        // From the first ping with `last_seq` on, only such pings acknowledge.
        b.send(json!({"type":"ping","last_seq": b.last_seq})).await;
        let base = b.expect("pong").await["seq"].as_u64().unwrap();
        let bid = b.id.clone();
        for i in 0..40 {
            a.signal(&bid, i).await;
        }
        b.expect_signals(&a.id, 0, 40).await;
        // The pong and 40 signals, each a (seq, message) pair.
        assert_eq!(len(&bid), 2 * 41);
        // It expires if nobody acks it any more (set when the list was made, pushed back
        // by acks).
        let pttl = |id: &str| -> i64 {
            redis_cli(port, &["PTTL", &format!("ib:peer:{id}:q")])
                .parse()
                .unwrap()
        };
        assert!(pttl(&bid) > 60_000, "outbox TTL: {}", pttl(&bid));
        assert!(bytes(&bid) > 40 * 30, "outbox bytes: {}", bytes(&bid));

        b.send(json!({"type":"ping","last_seq": base + 20})).await;
        let last = b.expect("pong").await["seq"].as_u64().unwrap();
        assert_eq!(last, base + 41);
        wait_for(
            "acknowledged entries trimmed",
            Duration::from_secs(5),
            || len(&bid) == 2 * (last - base - 20),
        );
        assert!(
            pttl(&bid) > 60_000,
            "outbox TTL after an ack: {}",
            pttl(&bid)
        );

        // Gone from its node without a word; back on the other one with last_seq in the
        // middle of what Redis still holds.
        let token = b.token.clone();
        drop(b);
        let mut b2 = Client::connect(&n1.ws_url()).await;
        b2.last_seq = base + 30;
        b2.send(json!({"type":"resume","id": bid,"token": token,"last_seq": base + 30}))
            .await;
        b2.expect("resumed").await;
        b2.expect_signals(&a.id, 30, 10).await;
        assert_eq!(b2.expect("pong").await["seq"], last);
        b2.send(json!({"type":"ping","last_seq": last})).await;
        let pong = b2.expect("pong").await;
        // Only the newest pong is left unacknowledged.
        wait_for(
            "all but the newest pong trimmed",
            Duration::from_secs(5),
            || len(&bid) == 2,
        );
        assert_eq!(bytes(&bid), pong.to_string().len() as u64, "{pong}");
        assert!(
            b2.try_recv(Duration::from_millis(300)).await.is_none(),
            "nothing replayed twice"
        );
    });
}
