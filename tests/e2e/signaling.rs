//! `icebreaker` end to end over real WebSockets (tokio-tungstenite clients), plus a TURN
//! client using the credentials it hands out.

use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use icebreaker_tests::ws_client::WsClient;
use icebreaker_tests::{
    free_udp_port, http_get, metric, require, start_icebreaker, Icebreaker, Proc,
};

/// The shared client, with this suite's connect-to-a-server shorthands.
struct Client;

impl Client {
    async fn connect(ib: &Icebreaker) -> WsClient {
        WsClient::connect(&ib.ws_url()).await
    }

    async fn connect_with(ib: &Icebreaker, origin: Option<&str>) -> Result<WsClient, String> {
        WsClient::connect_with(&ib.ws_url(), origin).await
    }
}

/// The TURN username and credential a `joined` hands out (its `ice_servers` entry that
/// has them).
fn turn_credentials(joined: &Value) -> (String, String) {
    let s = joined["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["username"].is_string())
        .expect("a TURN entry with credentials");
    (
        s["username"].as_str().unwrap().to_string(),
        s["credential"].as_str().unwrap().to_string(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn join_peers_polite_signal_routing_and_leave() {
    let ib = start_icebreaker(&[]);
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        let ja = a.join("room-1").await;
        let a_id = ja["id"].as_str().unwrap().to_string();
        assert_eq!(ja["peers"], json!([]));
        assert_eq!(ja["room"], "room-1");
        assert!(ja["resume_token"].as_str().unwrap().len() >= 16);
        let servers = ja["ice_servers"].as_array().unwrap();
        let urls: Vec<&str> = servers.iter().flat_map(|s| s["urls"].as_array().unwrap()).filter_map(|u| u.as_str()).collect();
        let relay = ib.relay.unwrap();
        assert!(urls.contains(&format!("stun:127.0.0.1:{}", relay.port()).as_str()), "{urls:?}");
        assert!(urls.contains(&format!("turn:127.0.0.1:{}?transport=udp", relay.port()).as_str()), "{urls:?}");
        assert!(urls.contains(&format!("turn:127.0.0.1:{}?transport=tcp", relay.port()).as_str()), "{urls:?}");

        let mut b = Client::connect(&ib).await;
        b.send(json!({"type":"join","room":"room-1","meta":{"name":"Bob"}})).await;
        let jb = b.expect("joined").await;
        let b_id = jb["id"].as_str().unwrap().to_string();
        // B is the newcomer: A is listed, and B is not the polite side towards A.
        assert_eq!(jb["peers"], json!([{"id": a_id, "polite": false}]));
        let pj = a.expect("peer-joined").await;
        assert_eq!(pj["id"], b_id.as_str());
        assert_eq!(pj["meta"], json!({"name":"Bob"}));
        assert_eq!(pj["polite"], true, "the peer already in the room is polite");

        let mut c = Client::connect(&ib).await;
        let jc = c.join("room-1").await;
        let c_id = jc["id"].as_str().unwrap().to_string();
        assert_eq!(jc["peers"].as_array().unwrap().len(), 2);
        a.expect("peer-joined").await;
        b.expect("peer-joined").await;

        // Signals go exactly to the addressee, with the sender named and data untouched.
        let offer = json!({"sdp": {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}});
        c.send(json!({"type":"signal","to": a_id,"data": offer})).await;
        let s = a.expect("signal").await;
        assert_eq!((s["from"].as_str(), &s["data"]), (Some(c_id.as_str()), &offer));
        let cand = json!({"candidate": {"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"u"}});
        a.send(json!({"type":"signal","to": b_id,"data": cand})).await;
        let s = b.expect("signal").await;
        assert_eq!((s["from"].as_str(), &s["data"]), (Some(a_id.as_str()), &cand));
        b.send(json!({"type":"signal","to": c_id,"data": {"candidate": null}})).await;
        let s = c.expect("signal").await;
        assert_eq!(s["data"], json!({"candidate": null}));
        assert!(a.try_recv(Duration::from_millis(200)).await.is_none(), "A got nothing else");

        // leave → peer-left reason left; socket close (with close frame) → left too.
        b.send(json!({"type":"leave"})).await;
        for x in [&mut a, &mut c] {
            let m = x.expect("peer-left").await;
            assert_eq!((m["id"].as_str(), m["reason"].as_str()), (Some(b_id.as_str()), Some("left")));
        }
        c.ws.close(None).await.unwrap();
        let m = a.expect("peer-left").await;
        assert_eq!((m["id"].as_str(), m["reason"].as_str()), (Some(c_id.as_str()), Some("left")));
        // Pings are answered in sequence.
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;
    });
    let (_, m) = http_get(ib.http, "/metrics");
    assert!(
        metric(&m, "icebreaker_messages_in_total", &["type=\"signal\""]) >= 3.0,
        "{m}"
    );
    assert!(
        metric(&m, "icebreaker_messages_out_total", &["type=\"peer-left\""]) >= 3.0,
        "{m}"
    );
    assert!(
        metric(&m, "icebreaker_forward_latency_seconds_count", &[]) >= 3.0,
        "{m}"
    );
    assert_eq!(http_get(ib.http, "/healthz").0, 200);
}

#[test]
fn a_thousand_signals_arrive_in_order() {
    let ib = start_icebreaker(&["--rate-limit", "100000"]);
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        a.join("order").await;
        let mut b = Client::connect(&ib).await;
        let jb = b.join("order").await;
        let a_id = jb["peers"][0]["id"].as_str().unwrap().to_string();
        a.expect("peer-joined").await;
        for n in 0..1000 {
            b.send(json!({"type":"signal","to": a_id,"data":{"n": n}}))
                .await;
        }
        for n in 0..1000 {
            let s = a.expect("signal").await;
            assert_eq!(s["data"]["n"], n);
        }
    });
}

#[test]
fn heartbeat_timeout_then_peer_left_after_grace() {
    let ib = start_icebreaker(&["--heartbeat-interval", "200ms", "--resume-grace", "600ms"]);
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        a.join("hb").await;
        let mut silent = Client::connect(&ib).await;
        let js = silent.join("hb").await;
        let sid = js["id"].as_str().unwrap().to_string();
        a.expect("peer-joined").await;
        // `silent` is never polled again: it answers no ping. A keeps reading (and so
        // answering pings), so A stays connected.
        let t0 = std::time::Instant::now();
        let m = a.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["id"].as_str(), m["reason"].as_str()),
            (Some("peer-left"), Some(sid.as_str()), Some("timeout"))
        );
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(600),
            "not before the grace: {waited:?}"
        );
        assert!(waited < Duration::from_secs(4), "{waited:?}");
        drop(silent);
    });
    let (_, m) = http_get(ib.http, "/metrics");
    assert!(
        metric(&m, "icebreaker_heartbeat_timeouts_total", &[]) >= 1.0,
        "{m}"
    );
}

#[test]
fn resume_replays_exactly_what_was_missed() {
    let ib = start_icebreaker(&["--resume-grace", "10s"]);
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        let ja = a.join("res").await;
        let (a_id, token) = (
            ja["id"].as_str().unwrap().to_string(),
            ja["resume_token"].as_str().unwrap().to_string(),
        );
        let mut b = Client::connect(&ib).await;
        b.join("res").await;
        a.expect("peer-joined").await;
        b.send(json!({"type":"signal","to": a_id,"data":{"n": 0}}))
            .await;
        assert_eq!(a.expect("signal").await["data"]["n"], 0);
        let seen = a.last_seq;
        // Kill A's TCP connection without a close frame (a network drop).
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for n in 1..=5 {
            b.send(json!({"type":"signal","to": a_id,"data":{"n": n}}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A wrong token fails and changes nothing.
        let mut bad = Client::connect(&ib).await;
        bad.send(json!({"type":"resume","id": a_id,"token":"nope","last_seq": seen}))
            .await;
        assert_eq!(bad.error_code().await, "resume-failed");
        let mut a2 = Client::connect(&ib).await;
        a2.last_seq = seen;
        a2.send(json!({"type":"resume","id": a_id,"token": token,"last_seq": seen}))
            .await;
        let r = a2.expect("resumed").await;
        assert_eq!(r["id"], a_id.as_str());
        assert_eq!(r["peers"].as_array().unwrap().len(), 1);
        for n in 1..=5 {
            let s = a2.expect("signal").await;
            assert_eq!(s["data"]["n"], n, "{s}");
        }
        assert_eq!(
            a2.last_seq,
            seen + 5,
            "exactly the five missed, with consecutive seqs"
        );
        assert!(
            a2.try_recv(Duration::from_millis(300)).await.is_none(),
            "nothing replayed twice"
        );
        // B never saw A leave, and A keeps its id for new messages.
        assert!(b.try_recv(Duration::from_millis(100)).await.is_none());
        b.send(json!({"type":"signal","to": a_id,"data":{"n": 6}}))
            .await;
        assert_eq!(a2.expect("signal").await["data"]["n"], 6);
    });
    let (_, m) = http_get(ib.http, "/metrics");
    assert_eq!(
        metric(&m, "icebreaker_resumes_total", &["result=\"ok\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "icebreaker_resumes_total", &["result=\"failed\""]),
        1.0,
        "{m}"
    );
}

#[test]
fn every_error_code_and_the_connection_stays_usable() {
    let ib = start_icebreaker(&[
        "--room-capacity",
        "2",
        "--rate-limit",
        "5",
        "--rate-burst",
        "10",
    ]);
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        // bad-message: malformed JSON, unknown type, missing fields, binary frames.
        for bad in [
            "{",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":"bad room!"}"#,
        ] {
            a.ws.send(Message::Text(bad.into())).await.unwrap();
            assert_eq!(a.error_code().await, "bad-message", "{bad}");
        }
        a.ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        assert_eq!(a.error_code().await, "bad-message");
        // not-joined
        a.send(json!({"type":"signal","to":"x","data":{}})).await;
        assert_eq!(a.error_code().await, "not-joined");
        // Still usable: join works.
        a.join("cap").await;
        // unknown-peer
        a.send(json!({"type":"signal","to":"nobody","data":{}}))
            .await;
        assert_eq!(a.error_code().await, "unknown-peer");
        // room-full (capacity 2)
        let mut b = Client::connect(&ib).await;
        b.join("cap").await;
        a.expect("peer-joined").await;
        let mut c = Client::connect(&ib).await;
        c.send(json!({"type":"join","room":"cap"})).await;
        assert_eq!(c.error_code().await, "room-full");
        // resume-failed
        c.send(json!({"type":"resume","id":"ghost","token":"t","last_seq":0}))
            .await;
        assert_eq!(c.error_code().await, "resume-failed");
        // rate-limited: a burst of 30 with 10 allowed.
        let mut d = Client::connect(&ib).await;
        for _ in 0..30 {
            d.send(json!({"type":"ping"})).await;
        }
        let mut codes = Vec::new();
        while let Some(v) = d.try_recv(Duration::from_millis(500)).await {
            codes.push(
                v["type"].as_str().unwrap().to_string() + ":" + v["code"].as_str().unwrap_or(""),
            );
        }
        let pongs = codes.iter().filter(|c| c.starts_with("pong")).count();
        let limited = codes.iter().filter(|c| *c == "error:rate-limited").count();
        assert!(
            (10..=12).contains(&pongs) && pongs + limited == 30,
            "{codes:?}"
        );
        // too-large: refused with an error and close code 1009.
        let mut e = Client::connect(&ib).await;
        e.ws.send(Message::Text("x".repeat(70 * 1024).into()))
            .await
            .unwrap();
        assert_eq!(e.error_code().await, "too-large");
        let close = tokio::time::timeout(Duration::from_secs(5), e.ws.next())
            .await
            .unwrap();
        match close {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Size),
            other => panic!("expected close 1009, got {other:?}"),
        }
        // The others are unaffected.
        a.send(json!({"type":"ping"})).await;
        a.expect("pong").await;
    });
    let (_, m) = http_get(ib.http, "/metrics");
    for code in [
        "bad-message",
        "not-joined",
        "unknown-peer",
        "room-full",
        "resume-failed",
        "rate-limited",
        "too-large",
    ] {
        assert!(
            metric(
                &m,
                "icebreaker_errors_total",
                &[&format!("code=\"{code}\"")]
            ) >= 1.0,
            "{code}\n{m}"
        );
    }
}

#[test]
fn jwt_valid_expired_and_wrong_room() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        room: &'a str,
        sub: &'a str,
        exp: u64,
    }
    let secret = "a-long-enough-jwt-secret";
    let ib = start_icebreaker(&["--jwt-secret", secret]);
    let now = icebreaker_relay::server::unix_now();
    let tok = |room: &str, exp: u64| {
        encode(
            &Header::default(),
            &Claims {
                room,
                sub: "alice",
                exp,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        a.send(json!({"type":"join","room":"vip"})).await;
        assert_eq!(a.error_code().await, "unauthorized", "no token");
        a.send(json!({"type":"join","room":"vip","token": tok("vip", now - 60)}))
            .await;
        assert_eq!(a.error_code().await, "unauthorized", "expired");
        a.send(json!({"type":"join","room":"vip","token": tok("other", now + 600)}))
            .await;
        assert_eq!(a.error_code().await, "unauthorized", "wrong room");
        a.send(json!({"type":"join","room":"vip","token": "not.a.jwt"}))
            .await;
        assert_eq!(a.error_code().await, "unauthorized", "garbage");
        a.send(json!({"type":"join","room":"vip","token": tok("vip", now + 600)}))
            .await;
        let j = a.expect("joined").await;
        // The TURN username carries the token's subject.
        let user = j["ice_servers"][1]["username"].as_str().unwrap();
        assert!(user.ends_with(":alice"), "{user}");
    });
}

#[test]
fn foreign_origins_and_per_ip_excess_are_refused() {
    let ib = start_icebreaker(&[
        "--allowed-origin",
        "https://app.example",
        "--max-connections-per-ip",
        "3",
    ]);
    rt().block_on(async {
        let err = Client::connect_with(&ib, Some("https://evil.example"))
            .await
            .err()
            .expect("refused");
        assert!(err.contains("403"), "{err}");
        let mut ok = Client::connect_with(&ib, Some("https://app.example"))
            .await
            .expect("allowed origin");
        ok.join("o").await;
        let _b = Client::connect(&ib).await;
        let _c = Client::connect(&ib).await;
        let err = Client::connect_with(&ib, None)
            .await
            .err()
            .expect("fourth from one IP refused");
        assert!(err.contains("429"), "{err}");
    });
    let (_, m) = http_get(ib.http, "/metrics");
    assert_eq!(
        metric(&m, "icebreaker_refused_connections_total", &["origin"]),
        1.0,
        "{m}"
    );
}

/// The TURN credentials in `joined` allocate on the bundled relay (coturn's client);
/// expired ones are refused.
#[test]
fn minted_turn_credentials_work_on_the_bundled_relay_and_expire() {
    require("turnutils_uclient", "coturn");
    let ib = start_icebreaker(&["--ice-ttl", "3s"]);
    let relay = ib.relay.unwrap();
    let creds = rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        turn_credentials(&a.join("turn").await)
    });
    let peer_port = free_udp_port();
    let mut pc = Command::new("turnutils_peer");
    pc.args(["-L", "127.0.0.1", "-p", &peer_port.to_string()]);
    let _peer = Proc::start("turnutils_peer", pc);
    std::thread::sleep(Duration::from_millis(200));
    let run = || {
        let mut cmd = Command::new("timeout");
        cmd.args([
            "30",
            "turnutils_uclient",
            "-p",
            &relay.port().to_string(),
            "-u",
            &creds.0,
            "-w",
            &creds.1,
        ])
        .args([
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-c",
            "-m",
            "2",
            "-n",
            "20",
            "127.0.0.1",
        ]);
        let mut p = Proc::start("uclient", cmd);
        let ok = p
            .wait(Duration::from_secs(40))
            .map(|s| s.success())
            .unwrap_or(false);
        (ok, p.output())
    };
    let (ok, out) = run();
    assert!(
        ok && out.contains("tot_recv_msgs=40"),
        "fresh credentials relay:\n{out}"
    );
    std::thread::sleep(Duration::from_millis(3500));
    let (ok, out) = run();
    assert!(
        !ok && !out.contains("tot_recv_msgs=40"),
        "expired credentials must fail:\n{out}"
    );
}

#[test]
fn serves_the_web_client_health_and_metrics() {
    let ib = start_icebreaker(&[]);
    let (status, body) = http_get(ib.http, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "{body}");
    assert_eq!(http_get(ib.http, "/no/such/file").0, 404);
    assert_eq!(http_get(ib.http, "/../Cargo.toml").0, 404);
    let (status, body) = http_get(ib.http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("icebreaker_connections") && body.contains("icebreaker_relay_allocations"),
        "{body}"
    );
    // The process's memory, and the bundled relay's free relayed ports (start_icebreaker
    // gives it a range of 400, none in use).
    assert!(icebreaker_tests::metric(&body, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(
        icebreaker_tests::metric(&body, "icebreaker_relay_ports_free", &[]),
        400.0,
        "{body}"
    );
}

#[test]
fn bad_config_exits_2_and_sigterm_is_graceful() {
    let out = Command::new(icebreaker_tests::bin("icebreaker"))
        .args(["--heartbeat-interval", "often"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("heartbeat-interval") && err.lines().count() == 1,
        "{err}"
    );
    let mut ib = start_icebreaker(&[]);
    // `systemctl reload` sends SIGHUP: logged, not fatal, still serving.
    ib.proc.signal(libc::SIGHUP);
    assert!(ib
        .proc
        .wait_line("SIGHUP", Duration::from_secs(5))
        .is_some());
    assert!(ib.proc.is_running());
    assert_eq!(http_get(ib.http, "/healthz").0, 200);
    let status = ib
        .proc
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn print_config_lists_every_flag_masks_secrets_and_loads_back() {
    let run = |args: &[&str]| {
        Command::new(icebreaker_tests::bin("icebreaker"))
            .env_clear()
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--print-config",
        "--turn-secret",
        "hunter2",
        "--jwt-secret",
        "j0t-signing-key-0123",
    ]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !printed.contains("hunter2") && !printed.contains("j0t"),
        "{printed}"
    );
    assert!(
        printed.contains("\njwt-secret = \"********\"\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\nturn-secret = \"********\"\n"),
        "{printed}"
    );
    // Every long flag of --help is a key, set or commented out (but the ones that are not
    // settings); the machine-dependent thread count is not pinned.
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    let not_settings = ["config", "print-config", "log", "help", "version"];
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|f| !not_settings.contains(f))
        .collect();
    assert!(flags.len() > 20, "{help}");
    for f in &flags {
        assert!(
            printed.contains(&format!("\n{f} = ")) || printed.contains(&format!("\n# {f} =\n")),
            "--{f} has no key: {printed}"
        );
    }
    assert!(printed.contains("\n# threads =\n"), "{printed}");
    // The printed file loads back to the same settings (secrets aside: masked, they are
    // not the real ones).
    let out = run(&[
        "--print-config",
        "--room-capacity",
        "4",
        "--redis",
        "redis://h:1/",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("\nroom-capacity = 4\n"), "{printed}");
    let dir = std::env::temp_dir().join(format!("ib-sig-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("icebreaker.toml");
    std::fs::write(&f, &printed).unwrap();
    let again = run(&["--config", f.to_str().unwrap(), "--print-config"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), printed);
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGHUP (`systemctl reload`) reads the config file again: a rotated JWT secret is in
/// force for the next join while the connection that joined before stays in its room; a
/// broken file changes nothing and says why; a restart-only key is reported and kept.
#[test]
fn sighup_reloads_the_config_file_and_a_bad_one_changes_nothing() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        room: &'a str,
        sub: &'a str,
        exp: u64,
    }
    let now = icebreaker_relay::server::unix_now();
    let tok = |secret: &str| {
        encode(
            &Header::default(),
            &Claims {
                room: "rot",
                sub: "alice",
                exp: now + 600,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (old, new) = ("the-first-jwt-secret-0123", "the-second-jwt-secret-456");
    let dir = std::env::temp_dir().join(format!("ib-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("icebreaker.toml");
    std::fs::write(&f, format!("jwt-secret = \"{old}\"\nroom-capacity = 8\n")).unwrap();
    let ib = start_icebreaker(&["--config", f.to_str().unwrap()]);
    let joins_with = |secret: &'static str| {
        let ib = &ib;
        async move {
            let mut c = Client::connect(ib).await;
            c.send(json!({"type":"join","room":"rot","token": tok(secret)}))
                .await;
            let v = c.recv().await;
            (v["type"] == "joined", c, v)
        }
    };
    rt().block_on(async {
        let (ok, mut first, _) = joins_with(old).await;
        assert!(ok, "the first secret works before the reload");

        std::fs::write(&f, format!("jwt-secret = \"{new}\"\nroom-capacity = 9\n")).unwrap();
        ib.proc.signal(libc::SIGHUP);
        ib.proc
            .wait_line("configuration reloaded", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no reload:\n{}", ib.proc.output()));
        let line = ib
            .proc
            .wait_line("take effect only after a restart", Duration::from_secs(5))
            .expect("room-capacity reported as restart-only");
        assert!(line.contains("room-capacity"), "{line}");
        assert!(
            !joins_with(old).await.0,
            "the old secret is refused after the reload"
        );
        let (ok, _second, joined) = joins_with(new).await;
        assert!(ok, "the new secret works");
        // The peer that joined before the reload is still in the room and hears of it.
        let pj = first.expect("peer-joined").await;
        assert_eq!(pj["id"], joined["id"]);

        // A broken file: one clear line, the running configuration stays.
        std::fs::write(&f, "jwt-secret = \"short\"\n").unwrap();
        ib.proc.signal(libc::SIGHUP);
        let line = ib
            .proc
            .wait_line("not valid", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no refusal:\n{}", ib.proc.output()));
        assert!(line.contains("jwt-secret"), "{line}");
        assert!(joins_with(new).await.0, "still the second secret");
    });
    let m = http_get(ib.http, "/metrics").1;
    assert_eq!(metric(&m, "icebreaker_config_reloads_total", &[]), 1.0);
    assert_eq!(
        metric(&m, "icebreaker_config_reload_errors_total", &[]),
        1.0
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGTERM: the signaling side closes at once (clients resume elsewhere), while the
/// bundled relay refuses new allocations and lets the call in progress finish; the process
/// exits 0 as soon as that allocation is gone.
#[test]
fn sigterm_drains_the_bundled_relay() {
    use icebreaker_tests::turn_probe::TurnProbe;
    let mut ib = start_icebreaker(&["--drain-timeout", "20s"]);
    let relay = ib.relay.unwrap();
    let (user, pass) = rt().block_on(async {
        let mut a = Client::connect(&ib).await;
        turn_credentials(&a.join("drain").await)
    });
    let probe = || TurnProbe::udp(relay).with_credentials(&user, "icebreaker", &pass);
    let mut held = probe();
    held.allocate(None);
    ib.proc.signal(libc::SIGTERM);
    ib.proc
        .wait_line("draining", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no drain:\n{}", ib.proc.output()));
    assert!(
        std::net::TcpStream::connect(ib.http).is_err(),
        "signaling stopped accepting"
    );
    let refused = probe().try_allocate();
    assert_eq!(refused, Some(508));
    assert!(ib.proc.is_running(), "still relaying the call in progress");
    assert_eq!(held.release(), None);
    let st = ib
        .proc
        .wait(Duration::from_secs(10))
        .expect("exits once drained");
    assert!(st.success(), "{st:?}");
}

/// SIGHUP hands the bundled relay its new peer policy, as a standalone relay takes it on
/// SIGHUP: a loopback peer refused under `relay-allow-peer = ["10.0.0.0/8"]` is permitted
/// once the file allows 127.0.0.0/8, and the relay counts the reload.
#[test]
fn sighup_hands_the_bundled_relay_its_new_peer_policy() {
    use icebreaker_tests::turn_probe::TurnProbe;
    let dir = std::env::temp_dir().join(format!("ib-relay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("icebreaker.toml");
    std::fs::write(&f, "relay-allow-peer = [\"10.0.0.0/8\"]\n").unwrap();
    let ib = start_icebreaker(&["--config", f.to_str().unwrap()]);
    let relay = ib.relay.expect("bundled relay");
    // Credentials as a client gets them: from `joined`'s ICE servers.
    let joined = rt().block_on(async {
        let mut c = Client::connect(&ib).await;
        c.send(json!({"type":"join","room":"policy"})).await;
        c.recv().await
    });
    let turn = joined["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["username"].is_string())
        .unwrap_or_else(|| panic!("TURN credentials in {joined}"));
    let (user, pass) = (
        turn["username"].as_str().unwrap(),
        turn["credential"].as_str().unwrap(),
    );
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut p = TurnProbe::udp(relay).with_credentials(user, "icebreaker", pass);
    p.allocate(None);
    assert_eq!(p.permit(peer), Some(403), "loopback is not in 10.0.0.0/8");

    std::fs::write(&f, "relay-allow-peer = [\"127.0.0.0/8\"]\n").unwrap();
    ib.proc.signal(libc::SIGHUP);
    let line = ib
        .proc
        .wait_line("configuration reloaded", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload:\n{}", ib.proc.output()));
    assert!(line.contains("relay-allow-peer"), "{line}");
    assert_eq!(p.permit(peer), None, "the new policy is in force");
    let m = http_get(ib.http, "/metrics").1;
    assert_eq!(
        metric(&m, "icebreaker_relay_config_reloads_total", &[]),
        1.0
    );
    assert_eq!(metric(&m, "icebreaker_config_reloads_total", &[]), 1.0);
    std::fs::remove_dir_all(&dir).ok();
}
