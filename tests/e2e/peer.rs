//! `icebreaker-peer` processes (webrtc-rs) meeting through a real `icebreaker`.

use std::time::Duration;

use icebreaker_tests::{http_get, json_events, metric, peer_cmd, start_icebreaker, Proc};
use serde_json::{json, Value};

fn connected(p: &Proc) -> Vec<Value> {
    json_events(p)
        .into_iter()
        .filter(|e| e["event"] == "connected")
        .collect()
}

fn chat_texts(p: &Proc) -> Vec<String> {
    json_events(p)
        .into_iter()
        .filter(|e| e["event"] == "chat")
        .map(|e| {
            format!(
                "{}: {}",
                e["from"].as_str().unwrap_or(""),
                e["text"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Runs `icebreaker-peer [GLOBAL…] load [LOAD…]` against `ib`; asserts it succeeded and
/// returns its `load-report`.
fn load_report(ib: &icebreaker_tests::Icebreaker, global: &[&str], load: &[&str]) -> Value {
    let mut cmd = std::process::Command::new(icebreaker_tests::bin("icebreaker-peer"));
    cmd.args(["--server", &ib.ws_url(), "--bind", "127.0.0.1", "--json"])
        .args(["--timeout", "90s"])
        .args(global)
        .arg("load")
        .args(load);
    let mut p = Proc::start("load", cmd);
    let s = p.wait(Duration::from_secs(120)).expect("load finishes");
    let report = json_events(&p)
        .into_iter()
        .find(|e| e["event"] == "load-report")
        .unwrap_or_else(|| panic!("{}", p.output()));
    assert!(s.success(), "{report}");
    report
}

fn relayed_packets(ib: &icebreaker_tests::Icebreaker) -> f64 {
    metric(
        &http_get(ib.http, "/metrics").1,
        "icebreaker_relay_packets_total",
        &[],
    )
}

/// Two peers chat with host candidates, then two with relay-only through the bundled
/// relay; a third joining later connects to both.
#[test]
fn chat_with_host_candidates_and_relay_only_and_a_late_joiner() {
    let ib = start_icebreaker(&[]);
    for (room, mode) in [("host-room", None), ("relay-room", Some("--relay-only"))] {
        let common: Vec<&str> = mode.into_iter().collect();
        let before = relayed_packets(&ib);
        let mut a = Proc::start(
            "peer-a",
            peer_cmd(
                &ib,
                room,
                "alice",
                &common,
                &["chat", "--send", "hi from alice", "--expect", "2"],
            ),
        );
        a.wait_line("\"joined\"", Duration::from_secs(10))
            .expect("alice joined");
        let mut b = Proc::start(
            "peer-b",
            peer_cmd(
                &ib,
                room,
                "bob",
                &common,
                &["chat", "--send", "hi from bob", "--expect", "2"],
            ),
        );
        // Alice and Bob are connected before Carol arrives.
        assert!(
            a.wait_line("\"chat\"", Duration::from_secs(20)).is_some(),
            "alice got bob's message"
        );
        let mut c = Proc::start(
            "peer-c",
            peer_cmd(
                &ib,
                room,
                "carol",
                &common,
                &["chat", "--send", "hi from carol", "--expect", "2"],
            ),
        );
        for p in [&mut a, &mut b, &mut c] {
            let s = p.wait(Duration::from_secs(45)).expect("peer exits");
            assert!(s.success(), "{} failed:\n{}", p.name, p.output());
        }
        let mut got = chat_texts(&a);
        got.sort();
        assert_eq!(
            got,
            vec!["bob: hi from bob", "carol: hi from carol"],
            "{room}"
        );
        let mut got = chat_texts(&c);
        got.sort();
        assert_eq!(
            got,
            vec!["alice: hi from alice", "bob: hi from bob"],
            "carol connected to both"
        );
        let want = if mode.is_some() { "relay" } else { "host" };
        for p in [&a, &b, &c] {
            let conns = connected(p);
            assert_eq!(conns.len(), 2, "{}: {conns:?}", p.name);
            for e in conns {
                assert_eq!(e["local"], want, "{}: {e}", p.name);
            }
        }
        // With policy "all" the relay still carries some connectivity checks, so only
        // the relay-only run is asserted on the relay's counters.
        let relayed = relayed_packets(&ib) - before;
        if mode.is_some() {
            assert!(
                relayed > 20.0,
                "relay-only traffic crossed the bundled relay ({relayed})"
            );
        }
    }
}

#[test]
fn pointer_positions_flow_both_ways() {
    let ib = start_icebreaker(&[]);
    let sub = [
        "pointer",
        "--rate",
        "60",
        "--duration",
        "3s",
        "--expect",
        "60",
    ];
    let mut a = Proc::start("ptr-a", peer_cmd(&ib, "ptr", "alice", &[], &sub));
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("joined");
    let mut b = Proc::start("ptr-b", peer_cmd(&ib, "ptr", "bob", &[], &sub));
    for p in [&mut a, &mut b] {
        let s = p.wait(Duration::from_secs(45)).expect("exits");
        assert!(s.success(), "{}:\n{}", p.name, p.output());
        let report = json_events(p)
            .into_iter()
            .find(|e| e["event"] == "pointer-report")
            .expect("report");
        assert!(report["received"].as_u64().unwrap() >= 60, "{report}");
        assert_eq!(report["in_range"], true);
        assert!(report["delay_ms_p99"].as_f64().unwrap() < 500.0, "{report}");
    }
}

/// A peer whose signaling socket drops resumes: same id, no peer-left for the others,
/// and its data channels keep working.
#[test]
fn dropped_signaling_resumes_and_keeps_channels() {
    let ib = start_icebreaker(&["--resume-grace", "20s"]);
    let mut a = Proc::start_with_stdin(
        "resume-a",
        peer_cmd(
            &ib,
            "res",
            "alice",
            &[],
            &["chat", "--send", "before", "--drop-signaling-after", "3s"],
        ),
    );
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("joined");
    let mut b = Proc::start(
        "resume-b",
        peer_cmd(&ib, "res", "bob", &[], &["chat", "--expect", "2"]),
    );
    assert!(a
        .wait_line("channel-open", Duration::from_secs(20))
        .is_some());
    assert!(
        a.wait_line("signaling-dropped", Duration::from_secs(10))
            .is_some(),
        "{}",
        a.output()
    );
    assert!(
        a.wait_line("signaling-resumed", Duration::from_secs(10))
            .is_some(),
        "{}",
        a.output()
    );
    a.write_line("after the drop");
    let s = b.wait(Duration::from_secs(30)).expect("bob exits");
    assert!(s.success(), "bob:\n{}", b.output());
    assert_eq!(
        chat_texts(&b),
        vec!["alice: before", "alice: after the drop"]
    );
    assert_eq!(b.count_lines("peer-left"), 0, "bob never saw alice leave");
    let (_, m) = http_get(ib.http, "/metrics");
    assert_eq!(
        metric(&m, "icebreaker_resumes_total", &["result=\"ok\""]),
        1.0,
        "{m}"
    );
}

#[test]
fn load_40_peers_in_pairs_all_succeed() {
    let ib = start_icebreaker(&[]);
    let report = load_report(
        &ib,
        &[],
        &[
            "--peers",
            "40",
            "--room-size",
            "2",
            "--duration",
            "3s",
            "--rate",
            "20",
        ],
    );
    assert_eq!(report["success_rate"], 1.0, "{report}");
    assert_eq!(report["channels_open"], 40, "{report}");
    assert!(report["round_trips"].as_u64().unwrap() > 100, "{report}");
    assert!(report["setup_ms_p50"].as_f64().unwrap() > 0.0);
    // Every phase was seen for every connection (joined once per peer), and the phases
    // come in setup order: each one's median no earlier than the one before.
    let phases = &report["phases_ms"];
    let mut last = 0.0;
    for (name, n) in [
        ("joined", 40),
        ("gathered", 40),
        ("ice_connected", 40),
        ("dtls_connected", 40),
        ("channel_open", 40),
    ] {
        let ph = &phases[name];
        assert_eq!(ph["n"], n, "{name}: {report}");
        let p50 = ph["p50"].as_f64().unwrap();
        assert!(p50 >= last, "{name} before the phase before it: {report}");
        assert!(ph["p99"].as_f64().unwrap() >= p50, "{report}");
        last = p50;
    }
    assert_eq!(
        phases["channel_open"]["p50"], report["setup_ms_p50"],
        "{report}"
    );
    // The ramp: 20 joins a second, so two seconds of 20 peers each, all set up.
    let ramp = report["ramp"].as_array().unwrap();
    assert_eq!(ramp.len(), 2, "{report}");
    for (second, w) in ramp.iter().enumerate() {
        assert_eq!(w["second"], second, "{report}");
        assert_eq!(
            (&w["joined"], &w["ok"], &w["failed"]),
            (&json!(20), &json!(20), &json!(0)),
            "{report}"
        );
        assert!(w["setup_ms_p99"].as_f64().unwrap() >= w["setup_ms_p50"].as_f64().unwrap());
    }
    assert!(
        report["wall_s"].as_f64().unwrap() >= 1.9,
        "the ramp took its time: {report}"
    );
}

fn doctor(ib: &icebreaker_tests::Icebreaker) -> (bool, Vec<Value>) {
    let mut cmd = std::process::Command::new(icebreaker_tests::bin("icebreaker-peer"));
    cmd.args([
        "--server",
        &ib.ws_url(),
        "--bind",
        "127.0.0.1",
        "--json",
        "--timeout",
        "60s",
        "doctor",
    ]);
    let mut p = Proc::start("doctor", cmd);
    let ok = p
        .wait(Duration::from_secs(90))
        .map(|s| s.success())
        .unwrap_or(false);
    (
        ok,
        json_events(&p)
            .into_iter()
            .filter(|e| e["event"] == "check")
            .collect(),
    )
}

#[test]
fn doctor_passes_on_a_healthy_deployment() {
    let ib = start_icebreaker(&[]);
    let (ok, checks) = doctor(&ib);
    assert!(ok, "{checks:#?}");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for want in [
        "signaling",
        "ice servers",
        "credential expiry",
        "relay-only data channel",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("stun ")), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("turn ") && n.ends_with(" udp")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("turn ") && n.ends_with(" tcp")),
        "{names:?}"
    );
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:#?}");
}

#[test]
fn doctor_explains_a_stopped_relay_and_a_wrong_secret() {
    // A relay that is not there: nothing listens on the TURN port.
    let dead = icebreaker_tests::free_udp_port();
    let url_udp = format!("turn:127.0.0.1:{dead}?transport=udp");
    let url_tcp = format!("turn:127.0.0.1:{dead}?transport=tcp");
    let ib = start_icebreaker(&[
        "--no-relay",
        "--turn-url",
        &url_udp,
        "--turn-url",
        &url_tcp,
        "--turn-secret",
        "whatever",
    ]);
    let (ok, checks) = doctor(&ib);
    assert!(!ok);
    let turn: Vec<&Value> = checks
        .iter()
        .filter(|c| c["check"].as_str().unwrap().starts_with("turn "))
        .collect();
    assert_eq!(turn.len(), 2, "{checks:#?}");
    for c in &turn {
        assert_eq!(c["ok"], false);
        let d = c["detail"].as_str().unwrap();
        assert!(d.contains("not running") || d.contains("failed"), "{d}");
    }
    // A relay that runs with another secret than signaling's.
    let relay = icebreaker_tests::start_relay(&["--auth-secret", "the-right-one"]);
    let url = format!("turn:127.0.0.1:{}?transport=udp", relay.addr.port());
    let ib = start_icebreaker(&[
        "--no-relay",
        "--turn-url",
        &url,
        "--turn-secret",
        "a-wrong-one",
    ]);
    let (ok, checks) = doctor(&ib);
    assert!(!ok);
    let c = checks
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with("turn "))
        .expect("turn check");
    assert_eq!(c["ok"], false);
    let d = c["detail"].as_str().unwrap();
    assert!(d.starts_with("401") && d.contains("--turn-secret"), "{d}");
}

fn media_report(p: &Proc) -> Value {
    json_events(p)
        .into_iter()
        .find(|e| e["event"] == "media-report")
        .unwrap_or_else(|| panic!("{}", p.output()))
}

fn video_frames(report: &Value) -> u64 {
    report["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_str().unwrap().contains("video"))
        .map(|t| t["frames"].as_u64().unwrap())
        .sum()
}

fn audio_packets(report: &Value) -> u64 {
    report["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"].as_str().unwrap().contains("audio"))
        .map(|t| t["packets"].as_u64().unwrap())
        .sum()
}

/// VP8 + Opus both ways between two headless peers, then `--echo` round-trips it.
#[test]
fn media_flows_both_ways_and_echo_round_trips() {
    let ib = start_icebreaker(&[]);
    let sub = ["media", "--duration", "4s", "--expect-frames", "20"];
    let mut a = Proc::start("media-a", peer_cmd(&ib, "media", "alice", &[], &sub));
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("joined");
    let mut b = Proc::start("media-b", peer_cmd(&ib, "media", "bob", &[], &sub));
    for p in [&mut a, &mut b] {
        let s = p.wait(Duration::from_secs(60)).expect("exits");
        let r = media_report(p);
        assert!(s.success(), "{}: {r}", p.name);
        assert!(video_frames(&r) >= 20, "{}: {r}", p.name);
        assert!(audio_packets(&r) >= 50, "{}: {r}", p.name);
    }
    // Echo: what alice sends comes back to her through bob.
    let mut a = Proc::start(
        "echo-a",
        peer_cmd(
            &ib,
            "echo",
            "alice",
            &[],
            &["media", "--duration", "5s", "--expect-frames", "20"],
        ),
    );
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("joined");
    let mut b = Proc::start(
        "echo-b",
        peer_cmd(
            &ib,
            "echo",
            "bob",
            &[],
            &[
                "media",
                "--echo",
                "--duration",
                "5s",
                "--expect-frames",
                "20",
            ],
        ),
    );
    for p in [&mut a, &mut b] {
        let s = p.wait(Duration::from_secs(60)).expect("exits");
        assert!(s.success(), "{}: {}", p.name, media_report(p));
    }
    let back = media_report(&a);
    assert!(
        video_frames(&back) >= 20 && audio_packets(&back) >= 50,
        "alice got her media back: {back}"
    );
}

/// Each peer announces what it sends on the `media` channel (docs/protocol.md): a peer
/// with `--no-audio` reads as muted on the other side, one with both tracks as on.
#[test]
fn media_state_is_announced_on_the_media_channel() {
    let ib = start_icebreaker(&[]);
    let mut a = Proc::start(
        "state-a",
        peer_cmd(
            &ib,
            "state",
            "alice",
            &[],
            &[
                "media",
                "--no-audio",
                "--duration",
                "2s",
                "--expect-frames",
                "1",
            ],
        ),
    );
    a.wait_line("\"joined\"", Duration::from_secs(10))
        .expect("joined");
    let mut b = Proc::start(
        "state-b",
        peer_cmd(
            &ib,
            "state",
            "bob",
            &[],
            &["media", "--duration", "2s", "--expect-frames", "1"],
        ),
    );
    for p in [&mut a, &mut b] {
        let s = p.wait(Duration::from_secs(60)).expect("exits");
        assert!(s.success(), "{}: {}", p.name, p.output());
    }
    let state = |p: &Proc| {
        json_events(p)
            .into_iter()
            .find(|e| e["event"] == "media-state")
            .unwrap_or_else(|| panic!("{} got no media-state:\n{}", p.name, p.output()))
    };
    let seen_by_bob = state(&b);
    assert_eq!(seen_by_bob["from"], "alice", "{seen_by_bob}");
    assert_eq!(seen_by_bob["audio"], false, "{seen_by_bob}");
    assert_eq!(seen_by_bob["video"], true, "{seen_by_bob}");
    let seen_by_alice = state(&a);
    assert_eq!(seen_by_alice["from"], "bob", "{seen_by_alice}");
    assert_eq!(seen_by_alice["audio"], true, "{seen_by_alice}");
    assert_eq!(seen_by_alice["video"], true, "{seen_by_alice}");
}

/// `load --media` relay-only through the bundled relay: every peer sends VP8 and Opus,
/// receives both from its room mate, and the report gives bitrate, loss, jitter and the
/// RTCP round trip per peer and in all. Four pairs set up while the others' media flows:
/// every one must, and no Allocate may meet 437 (the setup nudge once made webrtc-rs
/// allocate twice on one 5-tuple, and such a peer never got a relay candidate).
#[test]
fn load_media_relay_only_every_peer_receives_video_and_audio() {
    const PEERS: usize = 8;
    let ib = start_icebreaker(&[]);
    let before = relayed_packets(&ib);
    let report = load_report(
        &ib,
        &["--relay-only"],
        &[
            "--peers",
            &PEERS.to_string(),
            "--room-size",
            "2",
            "--media",
            "--duration",
            "5s",
        ],
    );
    assert_eq!(report["success_rate"], 1.0, "{report}");
    let media = &report["media"];
    assert_eq!(media["ok"], true, "{report}");
    assert_eq!(media["tracks_expected"], 2 * PEERS, "{report}");
    assert_eq!(media["tracks_received"], 2 * PEERS, "{report}");
    let peers = media["peers"].as_array().unwrap();
    assert_eq!(peers.len(), PEERS, "{report}");
    for m in peers {
        // The embedded samples: 320×240 VP8 at 15 fps and Opus, both well above nothing.
        assert!(m["video_kbps"].as_f64().unwrap() > 20.0, "{m}");
        assert!(m["audio_kbps"].as_f64().unwrap() > 5.0, "{m}");
        assert!(m["video_frames"].as_u64().unwrap() > 15, "{m}");
        assert!(m["loss_pct"].as_f64().unwrap() >= 0.0, "{m}");
        assert!(m["jitter_ms"].as_f64().unwrap() >= 0.0, "{m}");
    }
    // Receiver reports came back with a round trip (RTCP every second, 5 s of media).
    assert!(media["rtt_peers"].as_u64().unwrap() >= 1, "{report}");
    assert!(media["rtt_ms_p50"].as_f64().unwrap() > 0.0, "{report}");
    let sum: f64 = peers
        .iter()
        .map(|m| m["video_kbps"].as_f64().unwrap() + m["audio_kbps"].as_f64().unwrap())
        .sum();
    assert!(
        (sum - media["total_kbps"].as_f64().unwrap()).abs() < 1.0,
        "{report}"
    );
    // All of it crossed the relay: a peer sends ~100 packets a second.
    let metrics = http_get(ib.http, "/metrics").1;
    let relayed = relayed_packets(&ib) - before;
    assert!(
        relayed > PEERS as f64 * 5.0 * 60.0,
        "relayed {relayed}: {report}"
    );
    // One allocation per peer, none refused as a second Allocate on its 5-tuple.
    let allocate = |code: &str| {
        metric(
            &metrics,
            "icebreaker_relay_requests_total",
            &["method=\"allocate\"", &format!("code=\"{code}\"")],
        )
    };
    assert_eq!(allocate("437"), 0.0, "{metrics}");
    assert_eq!(allocate("0"), PEERS as f64, "{metrics}");
}
