//! 10 000 allocations on a real `icebreaker-relay`: created, refreshed, expired and
//! released, with the allocation count, the relayed ports and the process's memory read
//! from `/metrics` at each step. What the relay took for them it gives back.

use std::time::{Duration, Instant};

use icebreaker_relay::codec::{attr, Method};
use icebreaker_tests::turn_probe::TurnProbe;
use icebreaker_tests::{http_get, metric, start_relay};

const N: usize = 10_000;

/// The test holds a UDP socket per allocation: lift its own open-files limit (as the
/// servers do for theirs).
fn raise_nofile() {
    let limit = icebreaker_service::raise_nofile_limit();
    assert!(
        limit as usize > N + 1000,
        "open-files limit {limit} is below {N} allocations"
    );
}

struct Sample {
    allocations: f64,
    ports_free: f64,
    rss: f64,
}

fn sample(m: std::net::SocketAddr) -> Sample {
    let (status, t) = http_get(m, "/metrics");
    assert_eq!(status, 200);
    Sample {
        allocations: metric(&t, "icebreaker_relay_allocations", &[]),
        ports_free: metric(&t, "icebreaker_relay_ports_free", &[]),
        rss: metric(&t, "process_resident_memory_bytes", &[]),
    }
}

fn eventually(
    m: std::net::SocketAddr,
    what: &str,
    within: Duration,
    f: impl Fn(&Sample) -> bool,
) -> Sample {
    let end = Instant::now() + within;
    loop {
        let s = sample(m);
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{what}: allocations {} ports free {}",
            s.allocations,
            s.ports_free
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn refresh(p: &mut TurnProbe, lifetime: u32) -> Option<u16> {
    p.request(Method::REFRESH, &|w| {
        w.u32(attr::LIFETIME, lifetime);
    })
    .code
}

#[test]
fn ten_thousand_allocations_created_refreshed_expired_and_released() {
    raise_nofile();
    let relay = start_relay(&[
        "--relay-ports",
        "10000-24999",
        "--default-lifetime",
        "3",
        "--max-lifetime",
        "60",
        "--threads",
        "2",
    ]);
    let m = relay.metrics.unwrap();
    let before = sample(m);
    assert_eq!(before.allocations, 0.0);
    assert_eq!(before.ports_free, 15_000.0);

    let mut probes: Vec<TurnProbe> = (0..N)
        .map(|_| {
            let mut p = TurnProbe::udp(relay.addr);
            p.allocate(Some(60));
            p
        })
        .collect();
    let peak = sample(m);
    assert_eq!(peak.allocations, N as f64);
    assert_eq!(peak.ports_free, (15_000 - N) as f64);

    // A quarter refreshed for long, half cut to the shortest lifetime (they expire), a
    // quarter released at once.
    let (refreshed, rest) = probes.split_at_mut(N / 4);
    let (expiring, released) = rest.split_at_mut(N / 2);
    for p in refreshed.iter_mut() {
        assert_eq!(refresh(p, 60), None);
    }
    for p in expiring.iter_mut() {
        assert_eq!(refresh(p, 1), None);
    }
    for p in released.iter_mut() {
        assert_eq!(p.release(), None);
    }
    let s = sample(m);
    assert_eq!(s.allocations, (N - N / 4) as f64, "released at once");
    eventually(m, "the short ones expire", Duration::from_secs(10), |s| {
        s.allocations == (N / 4) as f64
    });
    for p in refreshed.iter_mut() {
        assert_eq!(p.release(), None, "refreshed ones are still there");
    }
    for p in expiring.iter_mut().take(10) {
        assert_eq!(p.release(), Some(437), "expired ones are gone");
    }
    // Ports come back after their cooling sweeps; the heap is trimmed.
    let after = eventually(m, "every port back", Duration::from_secs(10), |s| {
        s.allocations == 0.0 && s.ports_free == 15_000.0
    });
    let grown = peak.rss - before.rss;
    eprintln!(
        "RSS before {:.1} MiB, with {N} allocations {:.1} MiB, after {:.1} MiB",
        before.rss / 1048576.0,
        peak.rss / 1048576.0,
        after.rss / 1048576.0
    );
    assert!(grown > 0.0, "{N} allocations take memory");
    assert!(
        after.rss - before.rss < grown / 2.0,
        "at least half of what {N} allocations took is given back: before {} peak {} after {}",
        before.rss,
        peak.rss,
        after.rss
    );
}
