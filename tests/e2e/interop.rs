//! Interop with another WebRTC stack: a Python peer on aiortc (tests/interop) and our
//! webrtc-rs `icebreaker-peer` exchange chat and pointer data through `icebreaker`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use icebreaker_tests::{json_events, peer_cmd, repo_dir, start_icebreaker, Icebreaker, Proc};

fn python() -> PathBuf {
    let p = repo_dir().join("tests/.venv/bin/python");
    assert!(p.exists(), "aiortc venv missing: python3 -m venv tests/.venv && tests/.venv/bin/pip install -r tests/interop/requirements.txt (.ci/run does)");
    p
}

fn aiortc(ib: &Icebreaker, room: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(repo_dir().join("tests/interop/aiortc_peer.py"))
        .args([
            "--server",
            &ib.ws_url(),
            "--room",
            room,
            "--name",
            "aio",
            "--timeout",
            "40",
        ])
        // Our peer sends end-of-candidates after its last candidate; hold it to that.
        .arg("--strict-end-of-candidates")
        .args(args);
    Proc::start("aiortc", cmd)
}

#[test]
fn chat_between_aiortc_and_webrtc_rs_with_host_candidates() {
    let ib = start_icebreaker(&[]);
    let mut aio = aiortc(
        &ib,
        "interop-chat",
        &[
            "--send",
            "hi from aiortc",
            "--expect",
            "1",
            "--pointer-expect",
            "0",
        ],
    );
    aio.wait_line("\"joined\"", Duration::from_secs(20))
        .expect("aiortc joined");
    let mut rust = Proc::start(
        "rust",
        peer_cmd(
            &ib,
            "interop-chat",
            "rust",
            &[],
            &["chat", "--send", "hi from rust", "--expect", "1"],
        ),
    );
    for p in [&mut rust, &mut aio] {
        let s = p.wait(Duration::from_secs(50)).expect("exits");
        assert!(s.success(), "{}:\n{}", p.name, p.output());
    }
    let got: Vec<String> = json_events(&rust)
        .iter()
        .filter(|e| e["event"] == "chat")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec!["hi from aiortc"]);
    let got: Vec<String> = json_events(&aio)
        .iter()
        .filter(|e| e["event"] == "chat")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec!["hi from rust"]);
    let conn = json_events(&aio)
        .into_iter()
        .find(|e| e["event"] == "connected")
        .expect("connected");
    assert_eq!(conn["local"], "host", "{conn}");
}

#[test]
fn pointer_between_webrtc_rs_and_aiortc_relay_only() {
    let ib = start_icebreaker(&[]);
    let mut rust = Proc::start(
        "rust",
        peer_cmd(
            &ib,
            "interop-ptr",
            "rust",
            &["--relay-only"],
            &[
                "pointer",
                "--rate",
                "30",
                "--duration",
                "4s",
                "--expect",
                "10",
            ],
        ),
    );
    rust.wait_line("\"joined\"", Duration::from_secs(20))
        .expect("rust joined");
    let mut aio = aiortc(
        &ib,
        "interop-ptr",
        &[
            "--relay-only",
            "--expect",
            "0",
            "--pointer-expect",
            "10",
            "--linger",
            "4",
        ],
    );
    for p in [&mut rust, &mut aio] {
        let s = p.wait(Duration::from_secs(50)).expect("exits");
        assert!(s.success(), "{}:\n{}", p.name, p.output());
    }
    let report = json_events(&rust)
        .into_iter()
        .find(|e| e["event"] == "pointer-report")
        .expect("report");
    assert!(report["received"].as_u64().unwrap() >= 10, "{report}");
    let done = json_events(&aio)
        .into_iter()
        .find(|e| e["event"] == "done")
        .expect("done");
    assert!(done["pointer_received"].as_u64().unwrap() >= 10, "{done}");
    let conn = json_events(&aio)
        .into_iter()
        .find(|e| e["event"] == "connected")
        .expect("connected");
    assert_eq!(
        (conn["local"].as_str(), conn["remote"].as_str()),
        (Some("relay"), Some("relay")),
        "{conn}"
    );
}
