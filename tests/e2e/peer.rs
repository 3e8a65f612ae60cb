//! `icebreaker-peer` processes (webrtc-rs) meeting through a real `icebreaker`.

use std::time::Duration;

use icebreaker_tests::{http_get, json_events, metric, peer_cmd, start_icebreaker, Proc};
use serde_json::Value;

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
