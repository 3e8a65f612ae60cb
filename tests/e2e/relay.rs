//! `icebreaker-relay` end to end, with TURN clients nobody here wrote: coturn's
//! `turnutils_uclient`/`turnutils_peer`/`turnutils_stunclient`, the webrtc-rs `turn`
//! crate, and headless Chromium.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use icebreaker_relay::auth::mint_rest_credentials;
use icebreaker_tests::{
    assert_all_echoed, browser_dir, echo_peer, http_get, metric, require, start_relay, Proc, Relay,
    Uclient,
};

/// `turnutils_uclient` (bounded) against `relay`'s client port, through the echo peer.
fn uclient(relay: &Relay, peer_port: u16, extra: &[&str]) -> Uclient {
    icebreaker_tests::uclient(relay.addr.port(), peer_port, extra)
}

#[test]
fn turnutils_uclient_udp_and_tcp_long_term_and_rest_lose_nothing() {
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8"]);
    let (_peer, port) = echo_peer();
    let lt = ["-u", "test", "-w", "test"];
    let rest = ["-u", "alice", "-W", "s3cret"];
    let load = ["-m", "10", "-n", "100", "-l", "120"];
    for (what, creds, transport) in [
        ("udp long-term", &lt, None),
        ("tcp long-term", &lt, Some("-t")),
        ("udp rest", &rest, None),
        ("tcp rest", &rest, Some("-t")),
    ] {
        let mut args: Vec<&str> = creds.to_vec();
        args.extend_from_slice(&load);
        args.extend(transport);
        let u = uclient(&relay, port, &args);
        // uclient sends COUNT per allocation; -m 10 → 10 allocations.
        assert_all_echoed(&u, what, 1000);
    }
    // Send/Data indications instead of channels.
    let mut args: Vec<&str> = lt.to_vec();
    args.extend_from_slice(&load);
    args.push("-s");
    assert_all_echoed(&uclient(&relay, port, &args), "udp send indications", 1000);

    let m = relay.metrics.expect("metrics address");
    let (status, text) = http_get(m, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metric(&text, "icebreaker_relay_allocations_created_total", &[]) >= 50.0,
        "{text}"
    );
    assert!(
        metric(&text, "icebreaker_relay_packets_total", &["to_peer"]) >= 5000.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_requests_total",
            &["channel_bind", "code=\"0\""]
        ) >= 40.0
    );
    assert_eq!(http_get(m, "/healthz"), (200, "ok\n".to_string()));
}

#[test]
fn wrong_password_fails_and_others_keep_being_served() {
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8"]);
    let (_peer, port) = echo_peer();
    let bad = uclient(
        &relay,
        port,
        &["-u", "test", "-w", "nope", "-m", "1", "-n", "10"],
    );
    assert!(!bad.ok, "a wrong password must fail:\n{}", bad.output);
    assert_eq!(bad.recv, 0);
    let bad_rest = uclient(
        &relay,
        port,
        &["-u", "alice", "-W", "other-secret", "-m", "1", "-n", "10"],
    );
    assert!(
        !bad_rest.ok,
        "a wrong REST secret must fail:\n{}",
        bad_rest.output
    );
    let good = uclient(
        &relay,
        port,
        &["-u", "test", "-w", "test", "-m", "2", "-n", "50"],
    );
    assert_all_echoed(&good, "after failures", 100);
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert!(
        metric(
            &text,
            "icebreaker_relay_requests_total",
            &["allocate", "code=\"401\""]
        ) >= 2.0,
        "{text}"
    );
}

#[test]
fn default_policy_refuses_loopback_peers_with_403() {
    // No --allow-peer: the safe default.
    let mut relay = start_relay(&[]);
    let (_peer, port) = echo_peer();
    let u = uclient(
        &relay,
        port,
        &["-u", "test", "-w", "test", "-m", "1", "-n", "10"],
    );
    assert_eq!(u.recv, 0, "nothing may reach a loopback peer");
    assert!(u.output.contains("403"), "uclient sees 403:\n{}", u.output);
    let line = relay
        .proc
        .wait_line("refused by default", Duration::from_secs(5))
        .expect("the relay logs why");
    assert!(line.contains("--allow-peer 127.0.0.0/8"), "{line}");
    assert!(relay.proc.is_running());
}

#[test]
fn turnutils_stunclient_gets_its_mapped_address() {
    require("turnutils_stunclient", "coturn");
    let relay = start_relay(&[]);
    let mut cmd = Command::new("timeout");
    cmd.args([
        "20",
        "turnutils_stunclient",
        "-p",
        &relay.addr.port().to_string(),
        "-L",
        "127.0.0.1",
        "127.0.0.1",
    ]);
    let mut p = Proc::start("stunclient", cmd);
    p.wait(Duration::from_secs(30));
    let out = p.output();
    let line = out
        .lines()
        .find(|l| l.contains("UDP reflexive addr:"))
        .unwrap_or_else(|| panic!("no mapped address:\n{out}"));
    let mapped: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    assert_ne!(mapped.port(), 0);
    assert_ne!(mapped.port(), relay.addr.port());
}

/// The webrtc-rs `turn` crate as a client: allocate, permission, channel, data both ways.
#[test]
fn webrtc_rs_turn_client_relays_both_ways() {
    use webrtc_util::Conn;
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8"]);
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n_echoed = 0;
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            if &buf[..n] == b"stop" {
                break;
            }
            echo.send_to(&buf[..n], from).unwrap();
            n_echoed += 1;
        }
        n_echoed
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (expiry_user, pass) = mint_rest_credentials(
        b"s3cret",
        icebreaker_relay::server::unix_now() + 600,
        "webrtc-rs",
    );
    let server = relay.addr.to_string();
    let received = rt.block_on(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server.clone(),
            turn_serv_addr: server,
            username: expiry_user,
            password: pass,
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(sock),
            vnet: None,
        })
        .await
        .unwrap();
        client.listen().await.unwrap();
        let conn = client
            .allocate()
            .await
            .expect("allocation with REST credentials");
        let relayed = conn.local_addr().unwrap();
        assert_eq!(relayed.ip().to_string(), "127.0.0.1");
        let mapped = client.send_binding_request().await.unwrap();
        assert_eq!(mapped.ip().to_string(), "127.0.0.1");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        for i in 0..50u32 {
            // UDP may drop a datagram when the machine is busy (other tests flood loopback);
            // the turn crate does not retransmit data, so the test does, as an app would.
            let msg = format!("message {i}");
            let mut echoed = None;
            for _attempt in 0..5 {
                conn.send_to(msg.as_bytes(), echo_addr).await.unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Ok(r) = tokio::time::timeout_at(deadline, conn.recv_from(&mut buf)).await
                {
                    let (n, from) = r.unwrap();
                    assert_eq!(from, echo_addr);
                    if buf[..n] == *msg.as_bytes() {
                        echoed = Some(msg.clone());
                        break;
                    }
                }
                if echoed.is_some() {
                    break;
                }
            }
            got.push(echoed.unwrap_or_else(|| panic!("no echo of {msg}")));
            if i == 0 {
                // give the background ChannelBind time, so later messages use ChannelData
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        conn.send_to(b"stop", echo_addr).await.unwrap();
        conn.close().await.unwrap();
        client.close().await.unwrap();
        got
    });
    let expected: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    assert_eq!(received, expected);
    assert!(echo_thread.join().unwrap() >= 50);
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert!(
        metric(
            &text,
            "icebreaker_relay_requests_total",
            &["channel_bind", "code=\"0\""]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_requests_total",
            &["create_permission", "code=\"0\""]
        ) >= 1.0
    );
    assert!(metric(&text, "icebreaker_relay_packets_total", &["to_client"]) >= 50.0);
}

/// Two relay-only RTCPeerConnections in headless Chromium, over TURN/UDP and TURN/TCP.
#[test]
fn chromium_connects_through_the_relay_over_udp_and_tcp() {
    let dir = browser_dir();
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8"]);
    for transport in ["udp", "tcp"] {
        let url = format!("turn:127.0.0.1:{}?transport={transport}", relay.addr.port());
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .args([
                "turn-relay.mjs",
                "--url",
                &url,
                "--username",
                "test",
                "--credential",
                "test",
            ])
            .args(["--timeout-ms", "40000"]);
        let mut p = Proc::start(&format!("chromium-{transport}"), cmd);
        let status = p.wait(Duration::from_secs(60)).expect("script finished");
        let out = p.output();
        let json = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| panic!("no JSON result:\n{out}"));
        assert!(
            status.success() && json["ok"] == true,
            "{transport}: {json}\n{out}"
        );
        assert_eq!(json["local_type"], "relay", "{json}");
        assert_eq!(json["remote_type"], "relay", "{json}");
        assert_eq!(json["relay_protocol"], transport, "{json}");
        assert!(json["framesDecoded"].as_u64().unwrap_or(0) > 0, "{json}");
    }
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert!(
        metric(&text, "icebreaker_relay_packets_total", &["to_peer"]) > 100.0,
        "{text}"
    );
}

/// Random, truncated, oversized, wrong-cookie and length-lying packets over UDP, and
/// garbage TCP streams: the relay keeps serving, and a bad stream closes only itself.
#[test]
fn bad_input_never_stops_service() {
    let mut relay = start_relay(&["--allow-peer", "127.0.0.0/8"]);
    let target = relay.addr;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let valid_binding = {
        let mut b = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        b.extend_from_slice(&[3u8; 12]);
        b
    };
    let mut rng_state = 0x1234_5678_9abc_def0u64;
    let mut rng = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for i in 0..20_000u32 {
        let kind = i % 6;
        let mut p: Vec<u8> = match kind {
            0 => (0..rng() % 200).map(|_| rng() as u8).collect(),
            1 => valid_binding[..(rng() % 20) as usize].to_vec(),
            2 if i % 100 == 2 => vec![0u8; 60_000],
            2 => vec![0u8; 1500],
            3 => {
                let mut b = valid_binding.clone();
                b[4] = rng() as u8;
                b
            }
            4 => {
                let mut b = valid_binding.clone();
                b.extend_from_slice(&[0x80, 0x22, 0xFF, 0xF0, 1, 2, 3, 4]);
                b[3] = 8;
                b
            }
            _ => {
                let mut b = vec![0x40, 0x00, 0xFF, 0xFF];
                b.extend((0..rng() % 64).map(|_| rng() as u8));
                b
            }
        };
        if kind == 0 && !p.is_empty() {
            p[0] &= 0x7F;
        }
        let _ = sock.send_to(&p, target);
        // Paced, so the flood does not overflow loopback for tests running beside it.
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // TCP: one good connection stays up while garbage streams are cut.
    let mut good = TcpStream::connect(target).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..20 {
        let mut bad = TcpStream::connect(target).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = bad.write_all(&[0xFF; 64]);
        let mut sink = [0u8; 16];
        assert!(
            matches!(bad.read(&mut sink), Ok(0) | Err(_)),
            "garbage stream is closed"
        );
    }
    good.write_all(&valid_binding).unwrap();
    let mut resp = [0u8; 128];
    let n = good.read(&mut resp).unwrap();
    assert!(
        n >= 20 && resp[0..2] == [0x01, 0x01],
        "binding answered on the good stream"
    );
    // A lying STUN length on TCP just waits for more bytes; the stream is closed when the
    // peer gives up. Service goes on.
    let (_peer, port) = echo_peer();
    let u = uclient(
        &relay,
        port,
        &["-u", "test", "-w", "test", "-m", "3", "-n", "50"],
    );
    assert_all_echoed(&u, "after garbage", 150);
    assert!(relay.proc.is_running());
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert!(
        metric(&text, "icebreaker_relay_dropped_total", &["malformed"]) > 1000.0,
        "{text}"
    );
    assert!(
        metric(&text, "icebreaker_relay_dropped_total", &["tcp_framing"]) >= 20.0,
        "{text}"
    );
}

#[test]
fn config_errors_exit_2_naming_the_key_and_print_config_masks_secrets() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(icebreaker_tests::bin("icebreaker-relay"));
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&["--user", "a:b", "--relay-ports", "9-1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay-ports") && err.lines().count() == 1,
        "{err}"
    );

    let out = run(
        &["--user", "a:b"],
        &[("ICEBREAKER_RELAY_MAX_ALLOCATIONS", "many")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-allocations"));

    let dir = std::env::temp_dir().join(format!("ib-relay-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("relay.toml");
    std::fs::write(&f, "user = [\"alice:topsecret\"]\nauth-secret = [\"hunter2\"]\nrealm = \"file.example\"\nmax-bps = 1000000\n").unwrap();
    let out = run(
        &[
            "--config",
            f.to_str().unwrap(),
            "--realm",
            "flag.example",
            "--print-config",
        ],
        &[("ICEBREAKER_RELAY_MAX_BPS", "2000000")],
    );
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("realm = \"flag.example\""),
        "flags win: {printed}"
    );
    assert!(
        printed.contains("max-bps = 2000000"),
        "env beats file: {printed}"
    );
    assert!(printed.contains("alice:********"), "{printed}");
    assert!(
        !printed.contains("topsecret") && !printed.contains("hunter2"),
        "{printed}"
    );

    // The printed file is itself a config that loads back to the same settings.
    std::fs::write(&f, printed.as_bytes()).unwrap();
    let again = run(&["--config", f.to_str().unwrap(), "--print-config"], &[]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), printed);

    // Without credentials it prints a template (what the package installs as
    // /etc/icebreaker/relay.toml): every flag as a key, the secrets commented out, and a
    // header saying why it will not start yet; starting with it still fails.
    let out = run(&["--print-config"], &[]);
    assert!(out.status.success(), "{out:?}");
    let template = String::from_utf8_lossy(&out.stdout);
    assert!(template.contains("# Not ready to start"), "{template}");
    for key in [
        "user",
        "auth-secret",
        "external-ip",
        "metrics-listen",
        "max-bps",
    ] {
        assert!(
            template.contains(&format!("\n{key} =")) || template.contains(&format!("\n# {key} =")),
            "{key} missing: {template}"
        );
    }
    assert!(template.contains("\n# auth-secret =\n"), "{template}");
    std::fs::write(&f, template.as_bytes()).unwrap();
    let out = run(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no credentials"));

    std::fs::write(&f, "max-lifetime = \"long\"\n").unwrap();
    let out = run(&["--config", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-lifetime"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sighup_does_not_kill_and_sigterm_stops_gracefully() {
    // `systemctl reload` sends SIGHUP, whose default action would end the process.
    // (No drain: the allocation made below would otherwise hold the stop for its length.)
    let mut relay = start_relay(&["--drain-timeout", "0"]);
    relay.proc.signal(libc::SIGHUP);
    assert!(relay
        .proc
        .wait_line("SIGHUP", Duration::from_secs(5))
        .is_some());
    assert!(relay.proc.is_running());
    // Still serving after the SIGHUP: an allocation goes through.
    let relayed = icebreaker_tests::turn_probe::TurnProbe::udp(relay.addr).allocate(None);
    assert_eq!(relayed.ip(), relay.addr.ip());
    let status = relay
        .proc
        .terminate(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(relay.proc.output().contains("shutting down"));
}

/// A STUN Binding over TCP from the loopback address `from`, after a PROXY v1 header naming
/// 203.0.113.9:40000: the XOR-MAPPED-ADDRESS it answers with, None when the relay closes
/// the connection instead (the header came from an address it does not trust).
fn binding_behind_proxy(from: &str, relay: SocketAddr) -> Option<SocketAddr> {
    use icebreaker_relay::codec::{attr, Class, Message, MessageWriter, Method};
    use std::io::{Read, Write};
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect_timeout(&relay.into(), Duration::from_secs(5))
        .unwrap();
    let mut t: std::net::TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 40000 {}\r\n",
        relay.port()
    )
    .into_bytes();
    let mut req = Vec::new();
    let tid = [9u8; 12];
    out.extend_from_slice(
        MessageWriter::new(&mut req, Method::BINDING, Class::Request, tid)
            .finish_with_fingerprint(),
    );
    t.write_all(&out).ok()?;
    let mut head = [0u8; 20];
    t.read_exact(&mut head).ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut resp = head.to_vec();
    resp.resize(20 + len, 0);
    t.read_exact(&mut resp[20..]).ok()?;
    let m = Message::parse(&resp).ok()?;
    assert_eq!(m.transaction_id, tid);
    m.xor_address(attr::XOR_MAPPED_ADDRESS)?.ok()
}

/// SIGHUP (`systemctl reload`) reads the config file again: a changed password, a
/// narrower peer policy and another trusted load balancer are in force for the next
/// request or connection without a restart, a change to the relayed port range is
/// reported as needing one, and a broken file changes nothing.
#[test]
fn sighup_reloads_credentials_and_peer_policy_and_a_bad_file_changes_nothing() {
    use icebreaker_tests::port_range;
    use icebreaker_tests::turn_probe::TurnProbe;
    let dir = std::env::temp_dir().join(format!("ib-relay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("relay.toml");
    let (lo, hi) = port_range(100);
    let file = |pass: &str, allow: bool, ports: (u16, u16), balancer: &str| {
        let allow = if allow {
            "allow-peer = [\"127.0.0.0/8\"]\n"
        } else {
            ""
        };
        format!(
            "realm = \"example.org\"\nuser = [\"alice:{pass}\"]\nrelay-ports = \"{}-{}\"\n{allow}\
             proxy-protocol = true\ntrusted-proxy = [\"{balancer}/32\"]\n",
            ports.0, ports.1
        )
    };
    std::fs::write(&f, file("one", true, (lo, hi), "127.0.0.5")).unwrap();
    let p = Proc::ours(
        "icebreaker-relay",
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
            f.to_str().unwrap(),
        ],
    );
    let line = p
        .wait_line("relay listening", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("relay did not start:\n{}", p.output()));
    let addr: SocketAddr = line
        .split("addrs=[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mline = p.wait_line("metrics on", Duration::from_secs(5)).unwrap();
    let maddr: SocketAddr = mline
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let alice = |pass: &str| TurnProbe::udp(addr).with_credentials("alice", "example.org", pass);
    let allocate_code = |pass: &str| alice(pass).try_allocate();
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut before = alice("one");
    before.allocate(None);
    assert_eq!(
        before.permit(peer),
        None,
        "loopback allowed by the first file"
    );
    let named: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    assert_eq!(binding_behind_proxy("127.0.0.5", addr), Some(named));
    assert_eq!(
        binding_behind_proxy("127.0.0.6", addr),
        None,
        "not trusted yet"
    );

    std::fs::write(&f, file("two", false, (lo + 1, hi), "127.0.0.6")).unwrap();
    p.signal(libc::SIGHUP);
    p.wait_line("configuration reloaded", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload:\n{}", p.output()));
    let restart = p
        .wait_line("only after a restart", Duration::from_secs(5))
        .expect("the port range change is reported");
    assert!(restart.contains("relay-ports"), "{restart}");
    assert!(!restart.contains("proxy"), "{restart}");
    assert_eq!(
        binding_behind_proxy("127.0.0.6", addr),
        Some(named),
        "trusted now"
    );
    assert_eq!(binding_behind_proxy("127.0.0.5", addr), None, "retired");
    assert_eq!(
        allocate_code("one"),
        Some(401),
        "the old password is refused"
    );
    let mut after = alice("two");
    after.allocate(None);
    assert_eq!(
        after.permit(peer),
        Some(403),
        "loopback refused again by default"
    );

    std::fs::write(&f, "max-lifetime = \"long\"\n").unwrap();
    p.signal(libc::SIGHUP);
    let bad = p
        .wait_line("not valid", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no refusal:\n{}", p.output()));
    assert!(bad.contains("max-lifetime"), "{bad}");
    assert_eq!(allocate_code("two"), None, "still the reloaded credentials");
    let m = http_get(maddr, "/metrics").1;
    assert_eq!(
        metric(&m, "icebreaker_relay_config_reloads_total", &[]),
        1.0
    );
    assert_eq!(
        metric(&m, "icebreaker_relay_config_reload_errors_total", &[]),
        1.0
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// SIGTERM drains: new allocations get 508 and `/healthz` 503 (a balancer stops sending),
/// an existing allocation keeps relaying, and the relay exits 0 as soon as the last one is
/// gone, well before `--drain-timeout`; with one left, it exits 0 at the timeout.
#[test]
fn sigterm_drains_new_allocations_refused_existing_ones_relay() {
    use icebreaker_tests::turn_probe::TurnProbe;
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--drain-timeout", "20"]);
    let maddr = relay.metrics.expect("metrics address");
    let mut held = TurnProbe::udp(relay.addr);
    held.allocate(None);
    assert_eq!(held.permit(peer_addr), None);
    relay.proc.signal(libc::SIGTERM);
    relay
        .proc
        .wait_line("draining", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no drain:\n{}", relay.proc.output()));
    let (status, body) = http_get(maddr, "/healthz");
    assert_eq!((status, body.trim()), (503, "draining"));
    let refused = TurnProbe::udp(relay.addr).try_allocate();
    assert_eq!(refused, Some(508), "new allocations refused while draining");
    // The call in progress still relays.
    held.send_indication(peer_addr, b"still relaying");
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).expect("relayed while draining");
    assert_eq!(&buf[..n], b"still relaying");
    // Its end ends the drain.
    let t0 = std::time::Instant::now();
    assert_eq!(held.release(), None);
    let st = relay
        .proc
        .wait(Duration::from_secs(10))
        .expect("exits once drained");
    assert!(st.success(), "{st:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "did not wait for the timeout"
    );
    assert!(relay.proc.output().contains("drained: no allocation left"));

    // With an allocation left, the timeout ends it (exit 0).
    let mut relay = start_relay(&["--drain-timeout", "1"]);
    TurnProbe::udp(relay.addr).allocate(None);
    let st = relay
        .proc
        .terminate(Duration::from_secs(10))
        .expect("exits at the drain timeout");
    assert!(st.success(), "{st:?}");
    assert!(relay.proc.output().contains("drain timeout"));
}

/// The relay's IPv6 address in its start line (`addrs=[127.0.0.1:P, [::1]:Q]`).
fn v6_listen(relay: &Relay) -> SocketAddr {
    let line = relay
        .proc
        .wait_line("relay listening", Duration::from_secs(1))
        .unwrap();
    let at = line.find("[::1]:").expect("an IPv6 listen address");
    let rest = &line[at..];
    let end = rest.find([',', ' ']).map_or(rest.len(), |i| i);
    let end = rest[..end].rfind(|c: char| c.is_ascii_digit()).unwrap() + 1;
    rest[..end].parse().unwrap()
}

/// Two XOR-RELAYED-ADDRESS attributes of a dual Allocate's answer.
fn allocate_dual(probe: &mut icebreaker_tests::turn_probe::TurnProbe) -> (SocketAddr, SocketAddr) {
    use icebreaker_relay::codec::{attr, Attributes, Method};
    let a = probe.request(Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(
            attr::ADDITIONAL_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    assert_eq!(a.code, None, "dual allocate");
    let m = a.msg();
    let at = Attributes::parse(&m).unwrap();
    (
        at.xor_relayed_address.unwrap(),
        at.xor_relayed_address_2.expect("the IPv6 one"),
    )
}

/// IPv6 end to end: a relay on 127.0.0.1 and [::1] allocates for a client over ::1
/// (REQUESTED-ADDRESS-FAMILY IPv6 gives an IPv6 relayed address); by default IPv6
/// loopback peers and IPv4-mapped ones (::ffff:127.0.0.1, judged as the IPv4 address they
/// are) get 403; a dual allocation returns both families, and with ::1 allowed a Send
/// indication reaches an IPv6 peer from the IPv6 relayed address and its answer comes back.
#[test]
fn ipv6_allocations_dual_allocation_and_the_default_policy() {
    use icebreaker_relay::codec::{attr, Attributes, Message, Method};
    use icebreaker_tests::turn_probe::TurnProbe;
    let safe = start_relay(&["--listen", "[::1]:0"]);
    let v6 = v6_listen(&safe);
    let mut over_v6 = TurnProbe::udp(v6);
    let a = over_v6.request(Method::ALLOCATE, &|w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]).attr(
            attr::REQUESTED_ADDRESS_FAMILY,
            &[attr::FAMILY_IPV6, 0, 0, 0],
        );
    });
    assert_eq!(a.code, None);
    let relayed = a
        .msg()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!(relayed.is_ipv6(), "{relayed}");
    assert_eq!(over_v6.permit("[::1]:9".parse().unwrap()), Some(403));
    let mut over_v4 = TurnProbe::udp(safe.addr);
    let (r4, r6) = allocate_dual(&mut over_v4);
    assert!(r4.is_ipv4() && r6.is_ipv6(), "{r4} {r6}");
    assert_eq!(
        over_v4.permit("[::ffff:127.0.0.1]:9".parse().unwrap()),
        Some(403)
    );
    assert_eq!(over_v4.permit("[::1]:9".parse().unwrap()), Some(403));
    assert_eq!(over_v4.permit("127.0.0.1:9".parse().unwrap()), Some(403));

    let open = start_relay(&["--listen", "[::1]:0", "--allow-peer", "::1/128"]);
    let mut client = TurnProbe::udp(open.addr);
    let (_, r6) = allocate_dual(&mut client);
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(client.permit(peer_addr), None);
    client.send_indication(peer_addr, b"over IPv6");
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the IPv6 peer gets it");
    assert_eq!((&buf[..n], from), (&b"over IPv6"[..], r6));
    peer.send_to(b"answer", from).unwrap();
    let data = (0..10)
        .find_map(|_| client.recv(Duration::from_millis(300)))
        .expect("a Data indication");
    let m = Message::parse(&data).unwrap();
    assert_eq!(m.method, Method::DATA);
    let at = Attributes::parse(&m).unwrap();
    assert_eq!(at.data, Some(&b"answer"[..]));
    assert_eq!(at.xor_peer_addresses.as_slice(), &[peer_addr]);
    assert_eq!(client.release(), None);
}

/// Reads Data indications at `probe` until `n` arrived: (XOR-PEER-ADDRESS, DATA) each.
fn data_indications(
    probe: &mut icebreaker_tests::turn_probe::TurnProbe,
    n: usize,
) -> Vec<(SocketAddr, Vec<u8>)> {
    use icebreaker_relay::codec::{attr, Message};
    let mut out = Vec::new();
    while out.len() < n {
        let Some(raw) = probe.recv(Duration::from_secs(2)) else {
            break;
        };
        let m = Message::parse(&raw).expect("a Data indication");
        let from = m
            .xor_address(attr::XOR_PEER_ADDRESS)
            .expect("XOR-PEER-ADDRESS")
            .expect("valid");
        out.push((from, m.get(attr::DATA).expect("DATA").to_vec()));
    }
    out
}

/// Two relay-only peers on one server: a datagram from one allocation to another's relayed
/// address is handed over in-process (on its shard, or through the other shard's queue),
/// not through the kernel. What the receiver sees and which rules apply must be exactly
/// those of the kernel path: the receiving allocation's permissions, the sender's relayed
/// address as the source, order kept; and the metrics count it.
#[test]
fn allocations_relay_to_each_other_in_process_under_the_same_rules() {
    // One shard: both allocations on it. Four: most often on two (the kernel picks by the
    // clients' ports), where the datagrams cross between shards.
    for threads in ["1", "4"] {
        allocations_relay_to_each_other(threads);
    }
}

fn allocations_relay_to_each_other(threads: &str) {
    use icebreaker_tests::turn_probe::TurnProbe;
    let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--threads", threads]);
    let mut a = TurnProbe::udp(relay.addr);
    let mut b = TurnProbe::udp(relay.addr);
    let ra = a.allocate(None);
    let rb = b.allocate(None);
    assert_eq!(a.permit(rb), None);
    // B has no permission for A: dropped as a stranger's datagram would be.
    a.send_indication(rb, b"unwanted");
    assert!(
        b.recv(Duration::from_millis(300)).is_none(),
        "delivered without a permission"
    );
    assert_eq!(b.permit(ra), None);
    // A sends ChannelData on a channel to B; B gets Data indications from A's address.
    assert_eq!(a.channel_bind(0x4000, rb), None);
    let sent: Vec<Vec<u8>> = (0..50).map(|i| format!("ping {i}").into_bytes()).collect();
    for p in &sent {
        let mut frame = vec![0x40, 0x00, 0, p.len() as u8];
        frame.extend_from_slice(p);
        frame.resize(frame.len().next_multiple_of(4), 0);
        a.send(&frame);
    }
    let got = data_indications(&mut b, sent.len());
    assert_eq!(
        got,
        sent.iter().map(|p| (ra, p.clone())).collect::<Vec<_>>(),
        "every datagram, in order, from A's relayed address"
    );
    // B answers with Send indications; A has a channel to B, so they arrive as ChannelData.
    for i in 0..5 {
        b.send_indication(ra, format!("pong {i}").as_bytes());
    }
    for i in 0..5 {
        let d = a.recv(Duration::from_secs(2)).expect("pong as ChannelData");
        let want = format!("pong {i}");
        assert_eq!(&d[..2], &[0x40, 0x00], "on A's channel");
        assert_eq!(&d[4..4 + want.len()], want.as_bytes());
    }
    // Once A's allocation is gone, what B sends to A's old address goes nowhere.
    assert_eq!(a.release(), None);
    b.send_indication(ra, b"after release");
    assert!(a.recv(Duration::from_millis(300)).is_none());

    let (_, text) = http_get(relay.metrics.expect("metrics"), "/metrics");
    let internal = metric(&text, "icebreaker_relay_internal_packets_total", &[]);
    assert!(
        internal >= 55.0,
        "in-process hand-overs counted: {internal}\n{text}"
    );
    assert!(metric(&text, "icebreaker_relay_packets_total", &["to_client"]) >= 55.0);
    assert!(metric(&text, "icebreaker_relay_dropped_total", &["no_permission"]) >= 1.0);
}

/// coturn's client in its client-to-client mode (`-y`: allocations send to each other's
/// relayed addresses, as two relay-only WebRTC peers do), on one shard and on two (some
/// pairs across shards): nothing lost either way, all of it handed over in-process.
#[test]
fn turnutils_uclient_client_to_client_loses_nothing_in_process_or_across_shards() {
    for threads in ["1", "2"] {
        let relay = start_relay(&["--allow-peer", "127.0.0.0/8", "--threads", threads]);
        let u = icebreaker_tests::uclient(
            relay.addr.port(),
            0,
            &[
                "-u", "test", "-w", "test", "-y", "-m", "10", "-n", "100", "-l", "120",
            ],
        );
        assert_all_echoed(&u, &format!("c2c, {threads} shard(s)"), 1000);
        let (_, text) = http_get(relay.metrics.expect("metrics"), "/metrics");
        let internal = metric(&text, "icebreaker_relay_internal_packets_total", &[]);
        // Every datagram between two allocations went in-process, on one shard or across.
        assert!(
            internal >= 1000.0,
            "{threads} shard(s): in-process ({internal})"
        );
    }
}
