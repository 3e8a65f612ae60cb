//! The relay under a steady relaying load for `RELAY_SOAK_SECS` (30 in CI; BENCHMARKS.md has
//! the 10-minute run): coturn's `turnutils_uclient`, 25 allocations each sending 100 bytes
//! every millisecond to an echo peer and back — half of the load coturn carries with no
//! loss on this machine (50 × 1 ms, ../shared/README.md). The relay's memory is sampled
//! every second and must stay flat after warm-up; nothing may be lost; afterwards every
//! allocation is released and every relayed port is free again, as `/metrics` says.

use std::process::Command;
use std::time::{Duration, Instant};

use icebreaker_tests::{
    assert_all_echoed, assert_rss_flat, echo_peer, http_get, metric, require, rss_kib, start_relay,
    Proc, Uclient,
};

#[test]
fn relay_under_steady_load_keeps_its_memory_flat_and_releases_everything() {
    require("turnutils_uclient", "coturn");
    let secs: u64 = std::env::var("RELAY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let (clients, interval_ms, size) = (25u64, 1u64, 100);
    // uclient never refreshes and releases only half of its allocations at the end: a
    // lifetime just past the run lets the rest expire soon after it.
    let lifetime = (secs + 30).to_string();
    let relay = start_relay(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--default-lifetime",
        &lifetime,
        "--max-lifetime",
        &lifetime,
    ]);
    let m = relay.metrics.expect("metrics address");
    let (_, before) = http_get(m, "/metrics");
    let ports_before = metric(&before, "icebreaker_relay_ports_free", &[]);
    assert!(ports_before > 0.0, "{before}");
    let (_peer, peer_port) = echo_peer();

    let count = secs * 1000 / interval_ms;
    let mut cmd = Command::new("timeout");
    cmd.args([&(secs + 60).to_string(), "turnutils_uclient"])
        .args(["-u", "test", "-w", "test", "-c"])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-m", &clients.to_string(), "-n", &count.to_string()])
        .args(["-l", &size.to_string(), "-z", &interval_ms.to_string()])
        .args(["-p", &relay.addr.port().to_string(), "127.0.0.1"]);
    let mut u = Proc::start("uclient", cmd);
    let pid = relay.proc.pid();
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while u.is_running() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs + 90),
            "uclient did not finish"
        );
        std::thread::sleep(Duration::from_secs(1));
        samples.push(rss_kib(pid));
    }
    let status = u.wait(Duration::from_secs(5)).expect("uclient ended");
    let run = Uclient::read(status.success(), u.output());
    println!(
        "relay soak {secs} s: {clients} clients every {interval_ms} ms, {} sent, {} echoed",
        run.sent, run.recv
    );
    assert_all_echoed(&run, "relay soak", clients * count);
    assert_rss_flat("relay", &samples);
    let recv = run.recv;

    // What uclient released and what it left to expire are gone; their ports come back
    // after cooling.
    let end = t0 + Duration::from_secs(secs + 90);
    loop {
        let (_, t) = http_get(m, "/metrics");
        let held = metric(&t, "icebreaker_relay_allocations", &[]);
        let free = metric(&t, "icebreaker_relay_ports_free", &[]);
        let relayed = metric(&t, "icebreaker_relay_packets_total", &["to_client"]);
        if held == 0.0 && free == ports_before {
            assert!(relayed >= recv as f64, "relayed {relayed} < {recv} echoed");
            break;
        }
        assert!(
            Instant::now() < end,
            "allocations {held}, ports free {free} of {ports_before}\n{t}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
