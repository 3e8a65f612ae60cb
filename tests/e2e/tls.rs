//! TLS end to end, with clients nobody here wrote: coturn's `turnutils_uclient -S` for TURN
//! over TLS (the relay's `--tls-listen`, and `icebreaker`'s one TLS port that also serves
//! HTTPS and wss), rustls and tungstenite as the HTTPS/wss client, headless Chromium
//! relaying through `turns:`. Certificates come from rcgen at test time; a rotation on disk
//! must reach new connections without dropping old ones.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use icebreaker_tests::{
    addr_after, assert_all_echoed, browser_dir, echo_peer, http_get, metric, parse_http_response,
    start_icebreaker, start_relay, uclient, wait_for, Proc,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};

/// A certificate for `localhost` and 127.0.0.1 written as PEM files.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ib-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A new self-signed certificate written to `dir/name.{crt,key}` (replacing what is there,
/// the way certbot's renewal does: write elsewhere, then rename over).
fn make_cert(dir: &Path, name: &str) -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let tmp = dir.join("new.tmp");
    std::fs::write(&tmp, ck.signing_key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    std::fs::write(&tmp, ck.cert.pem()).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    TestCert {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` as `localhost` that trusts only `trust`; Err when the
/// handshake fails (for instance because the server shows another certificate).
fn tls_connect(addr: SocketAddr, trust: &CertificateDer<'static>) -> Result<Tls, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tls_over(tcp, trust)
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all ours).
fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    s.into()
}

/// The client side of a TLS handshake on `tcp` (see [`tls_connect`]).
fn tls_over(tcp: TcpStream, trust: &CertificateDer<'static>) -> Result<Tls, String> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).map_err(|e| e.to_string())?;
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap().to_owned();
    let conn = ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// GET over TLS: (status, body).
fn https_get(addr: SocketAddr, trust: &CertificateDer<'static>, path: &str) -> (u16, String) {
    let mut s = tls_connect(addr, trust).expect("TLS handshake");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost:{}\r\n\r\n",
        addr.port()
    )
    .unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify is an error to rustls; what came is enough.
    let _ = s.read_to_end(&mut out);
    parse_http_response(&String::from_utf8_lossy(&out))
}

/// `icebreaker` with the test certificate `c` (its listener speaks TLS), plus `extra`.
fn start_tls(c: &TestCert, extra: &[&str]) -> icebreaker_tests::Icebreaker {
    let mut args = vec![
        "--tls-cert",
        c.cert.to_str().unwrap(),
        "--tls-key",
        c.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start_icebreaker(&args)
}

/// coturn's client over TLS (`-t -S`) to the relay's `--tls-listen`: nothing lost, with
/// long-term and REST credentials; a certificate rotated on disk reaches the next
/// handshake while a running TLS allocation keeps relaying; a SIGHUP with a broken
/// certificate changes nothing.
#[test]
fn relay_turn_over_tls_rotates_certificates_without_dropping_calls() {
    let dir = temp_dir("relay");
    let first = make_cert(&dir, "relay");
    let (cert, key) = (first.cert.to_str().unwrap(), first.key.to_str().unwrap());
    let relay = start_relay(&[
        "--allow-peer",
        "127.0.0.0/8",
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        cert,
        "--key",
        key,
    ]);
    let line = relay
        .proc
        .wait_line("TURN over TLS", Duration::from_secs(5))
        .expect("TLS listener logged");
    let tls = addr_after(&line, "addrs=[").expect("the TLS address");
    let (_peer, peer_port) = echo_peer();
    for (what, creds) in [
        ("tls long-term", ["-u", "test", "-w", "test"]),
        ("tls rest", ["-u", "alice", "-W", "s3cret"]),
    ] {
        let mut args = creds.to_vec();
        args.extend(["-m", "10", "-n", "50", "-l", "120", "-t", "-S"]);
        assert_all_echoed(&uclient(tls.port(), peer_port, &args), what, 500);
    }
    // TCP relaying (RFC 6062) over TLS: control and data connections both TLS.
    let args = [
        "-u", "test", "-w", "test", "-m", "6", "-n", "50", "-l", "120", "-T", "-S",
    ];
    assert_all_echoed(&uclient(tls.port(), peer_port, &args), "tls tcp relay", 300);
    // TURN over DTLS on the same address (RFC 7350): uclient -S over UDP.
    for (what, creds) in [
        ("dtls long-term", ["-u", "test", "-w", "test"]),
        ("dtls rest", ["-u", "alice", "-W", "s3cret"]),
    ] {
        let mut args = creds.to_vec();
        args.extend(["-m", "10", "-n", "50", "-l", "120", "-S"]);
        assert_all_echoed(&uclient(tls.port(), peer_port, &args), what, 500);
    }
    // Garbage, a truncated ClientHello and records that are not handshakes on the DTLS
    // port: refused, counted, and the port keeps serving.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hello_start = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 1, 0, 0];
    for i in 0..200u32 {
        let mut d = hello_start.to_vec();
        d.extend((0..i % 90).map(|k| (k * 31 + i) as u8));
        junk.send_to(&d, tls).unwrap();
        junk.send_to(&[23, 0xfe, 0xfd, 1, 2, 3], tls).unwrap();
    }
    let args = [
        "-u", "test", "-w", "test", "-m", "2", "-n", "20", "-l", "120", "-S",
    ];
    assert_all_echoed(
        &uclient(tls.port(), peer_port, &args),
        "dtls after junk",
        40,
    );
    assert!(tls_connect(tls, &first.der).is_ok());

    // Long calls (TLS and DTLS) in the background while the certificate is replaced on disk.
    let call = std::thread::spawn(move || {
        uclient(
            tls.port(),
            peer_port,
            &[
                "-u", "test", "-w", "test", "-m", "2", "-n", "150", "-l", "120", "-t", "-S",
            ],
        )
    });
    let dtls_call = std::thread::spawn(move || {
        uclient(
            tls.port(),
            peer_port,
            &[
                "-u", "test", "-w", "test", "-m", "2", "-n", "150", "-l", "120", "-S",
            ],
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let second = make_cert(&dir, "relay");
    wait_for(
        "the new certificate on new connections",
        Duration::from_secs(10),
        || tls_connect(tls, &second.der).is_ok(),
    );
    assert!(
        tls_connect(tls, &first.der).is_err(),
        "the old certificate is no longer served"
    );
    let call = call.join().unwrap();
    assert_all_echoed(&call, "a call across the rotation", 300);
    let call = dtls_call.join().unwrap();
    assert_all_echoed(&call, "a DTLS call across the rotation", 300);
    // New DTLS associations after the rotation (the DTLS configuration is rebuilt).
    let args = [
        "-u", "test", "-w", "test", "-m", "2", "-n", "20", "-l", "120", "-S",
    ];
    assert_all_echoed(
        &uclient(tls.port(), peer_port, &args),
        "dtls after rotation",
        40,
    );

    // A broken certificate file and SIGHUP: the last good one stays.
    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    relay.proc.signal(libc::SIGHUP);
    relay
        .proc
        .wait_line("TLS certificate not reloaded", Duration::from_secs(5))
        .expect("the bad certificate is reported");
    assert!(tls_connect(tls, &second.der).is_ok(), "still the good one");
    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    assert!(
        metric(
            &text,
            "icebreaker_relay_tls_handshakes_total",
            &["result=\"ok\""]
        ) >= 20.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_tls_cert_reloads_total",
            &["result=\"ok\""]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_dtls_handshakes_total",
            &["result=\"ok\""]
        ) >= 20.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_dropped_total",
            &["dtls_not_handshake"]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "icebreaker_relay_tls_cert_reloads_total",
            &["result=\"error\""]
        ) >= 1.0,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 6347 §4.2.8 on the relay's DTLS port: a client that restarts from the same address
/// and port (a NAT handing out the same mapping again; here webrtc-rs's DTLS client on a
/// socket the test keeps) gets a new association, which replaces the old one and its
/// allocation, so its Allocate is not refused as a mismatch. A ClientHello that never
/// completes (what a spoofer, who cannot see the answers, can send) changes nothing: the
/// old association keeps serving. Before the fix the new handshake went into the old,
/// established association and was never answered (coturn's uclient stalled on it when
/// the kernel reused a port).
#[test]
fn relay_dtls_client_restarting_from_its_port_replaces_its_association() {
    use icebreaker_relay::codec::{attr, Method};
    use icebreaker_tests::turn_probe::{Conn, DtlsClient, TurnProbe};
    let dir = temp_dir("dtls-restart");
    let c = make_cert(&dir, "relay");
    let relay = start_relay(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--cert",
        c.cert.to_str().unwrap(),
        "--key",
        c.key.to_str().unwrap(),
    ]);
    let line = relay
        .proc
        .wait_line("TURN over TLS", Duration::from_secs(5))
        .expect("TLS listener logged");
    let tls = addr_after(&line, "addrs=[").expect("the TLS address");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut first = TurnProbe::dtls(tls, sock).expect("the first handshake");
    let relayed = first.allocate(Some(600));

    // A ClientHello from the same address that goes no further: the old association and
    // its allocation keep serving.
    let hello = DtlsClient::client_hello(local, tls);
    match &first.conn {
        Conn::Dtls(d) => d.sock.send_to(&hello, tls).unwrap(),
        _ => unreachable!(),
    };
    let refresh = first.request(Method::REFRESH, &|w| {
        w.u32(attr::LIFETIME, 600);
    });
    assert_eq!(refresh.code, None, "the old association still serves");

    // The client restarts from the same port without closing (a crash, a NAT reusing the
    // mapping): its handshake completes and it can allocate on the same 5-tuple.
    let sock = match first.conn {
        Conn::Dtls(d) => d.sock,
        _ => unreachable!(),
    };
    let mut second = TurnProbe::dtls(tls, sock).expect("a new handshake from the same port");
    let again = second.allocate(Some(600));
    assert_ne!(relayed, again, "a new allocation, the old one released");

    let (_, text) = http_get(relay.metrics.unwrap(), "/metrics");
    let count = |result: &str| {
        metric(
            &text,
            "icebreaker_relay_dtls_handshakes_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    assert_eq!(count("ok"), 1.0, "{text}");
    assert_eq!(count("replaced"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "icebreaker_relay_allocations", &[]),
        1.0,
        "only the new allocation is live\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relay given --tls-listen without a certificate, or a certificate that is not one,
/// does not start, and says why.
#[test]
fn relay_refuses_to_start_with_bad_tls_settings() {
    let dir = temp_dir("bad");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--tls-listen", "127.0.0.1:0"],
            "needs --cert and --key",
        ),
        (
            vec!["--tls-listen", "127.0.0.1:0", "--cert", junk, "--key", junk],
            "junk.pem",
        ),
    ] {
        let mut all = vec!["--user", "a:b", "--listen", "127.0.0.1:0"];
        all.extend(args);
        let out = Command::new(icebreaker_tests::bin("icebreaker-relay"))
            .args(&all)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{all:?} started");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One TLS port for everything: the web client, /healthz and /metrics over HTTPS, wss
/// signaling whose `joined` hands out a `turns:` URL for this same port, and TURN over
/// TLS (coturn's client) on that port too; DTLS on the bundled relay's `relay-tls-listen`
/// (coturn's client with the credentials `joined` gave). Garbage, a truncated ClientHello and plain
/// HTTP on the TLS port close only themselves, counted.
#[test]
fn one_tls_port_serves_https_wss_and_turn() {
    let dir = temp_dir("one-port");
    let c = make_cert(&dir, "ib");
    let ib = start_tls(
        &c,
        &[
            "--turn-secret",
            "s3cret",
            "--relay-tls-listen",
            "127.0.0.1:0",
        ],
    );
    let port = ib.http.port();
    let (status, body) = https_get(ib.http, &c.der, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok rooms=0 peers=0\n"));
    let (status, page) = https_get(ib.http, &c.der, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");

    // wss: join, and the TURN entry names this host and port with turns:.
    let tls = tls_connect(ib.http, &c.der).unwrap();
    let url = format!("wss://localhost:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::tungstenite::client(url.as_str(), tls).expect("wss");
    let join = json!({"type": "join", "room": "tls"}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(join))
        .unwrap();
    let joined: Value = loop {
        let m = ws.read().expect("a message");
        if let Ok(t) = m.to_text() {
            let v: Value = serde_json::from_str(t).unwrap();
            if v["type"] == "joined" {
                break v;
            }
        }
    };
    let turn = joined["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["username"].is_string())
        .expect("a TURN entry")
        .clone();
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let want = format!("turns:localhost:{port}?transport=tcp");
    assert!(urls.contains(&want.as_str()), "{urls:?}");

    // TURN over TLS on the same port, with the credentials joined handed out.
    let (_peer, peer_port) = echo_peer();
    let user = turn["username"].as_str().unwrap();
    let pass = turn["credential"].as_str().unwrap();
    let args = [
        "-u", user, "-w", pass, "-m", "5", "-n", "40", "-l", "120", "-t", "-S",
    ];
    assert_all_echoed(
        &uclient(port, peer_port, &args),
        "turn on the one port",
        200,
    );
    // The bundled relay's own TLS port also answers DTLS on UDP (RFC 7350), as
    // icebreaker-relay's --tls-listen does.
    let own: u16 = urls
        .iter()
        .filter_map(|u| u.strip_prefix("turns:localhost:"))
        .filter_map(|u| u.split('?').next()?.parse().ok())
        .find(|&p| p != port)
        .unwrap_or_else(|| panic!("no turns: URL for relay-tls-listen: {urls:?}"));
    let args = [
        "-u", user, "-w", pass, "-m", "5", "-n", "40", "-l", "120", "-S",
    ];
    assert_all_echoed(
        &uclient(own, peer_port, &args),
        "dtls on relay-tls-listen",
        200,
    );

    // Hostile or confused clients close only themselves.
    let mut garbage = TcpStream::connect(ib.http).unwrap();
    garbage.write_all(&[0x55; 700]).unwrap();
    let mut plain = TcpStream::connect(ib.http).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut truncated = TcpStream::connect(ib.http).unwrap();
    // A ClientHello record header promising 512 bytes, then a few of them, then silence.
    truncated
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .unwrap();
    for s in [&mut garbage, &mut plain] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        // Closed (maybe after an alert), not left hanging.
        let mut n = 1;
        while n > 0 {
            n = s.read(&mut b).unwrap_or(0);
        }
    }
    assert_eq!(https_get(ib.http, &c.der, "/healthz").0, 200);
    let (_, m) = https_get(ib.http, &c.der, "/metrics");
    assert!(
        metric(
            &m,
            "icebreaker_tls_handshakes_total",
            &["result=\"failed\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "icebreaker_tls_connections_total", &["type=\"turn\""]) >= 5.0,
        "{m}"
    );
    assert!(
        metric(&m, "icebreaker_tls_connections_total", &["type=\"http\""]) >= 3.0,
        "{m}"
    );
    // The slow handshake is cut off at the handshake timeout (10 s).
    truncated
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut b = [0u8; 64];
    let mut n = 1;
    while n > 0 {
        n = truncated.read(&mut b).unwrap_or(0);
    }
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "the slow handshake was closed"
    );
    wait_for("the timeout counted", Duration::from_secs(5), || {
        let (_, m) = https_get(ib.http, &c.der, "/metrics");
        metric(
            &m,
            "icebreaker_tls_handshakes_total",
            &["result=\"timeout\""],
        ) >= 1.0
    });
    drop(ws);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Chromium, relay-only, through `turns:` (TURN over TLS on TCP) on the bundled relay's
/// one TLS port: a data channel opens and video is decoded. Chromium checks a TURN
/// server's certificate like a web server's; `--ignore-certificate-errors` lets the
/// test's self-signed one through (the rustls tests above check the chain instead).
#[test]
fn chromium_relays_through_turns() {
    let dir = browser_dir();
    let certs = temp_dir("chromium");
    let c = make_cert(&certs, "ib");
    let ib = start_tls(&c, &["--turn-secret", "s3cret"]);
    let (user, pass) = icebreaker_relay::auth::mint_rest_credentials(
        b"s3cret",
        icebreaker_relay::server::unix_now() + 600,
        "chromium",
    );
    let url = format!("turns:localhost:{}?transport=tcp", ib.http.port());
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["turn-relay.mjs", "--url", &url, "--username", &user])
        .args(["--credential", &pass, "--timeout-ms", "40000"])
        .arg("--ignore-certificate-errors");
    let mut p = Proc::start("chromium-turns", cmd);
    let status = p.wait(Duration::from_secs(60)).expect("script finished");
    let out = p.output();
    let json = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON result:\n{out}"));
    assert!(status.success() && json["ok"] == true, "{json}\n{out}");
    assert_eq!(json["local_type"], "relay", "{json}");
    assert_eq!(json["relay_protocol"], "tls", "{json}");
    assert!(json["framesDecoded"].as_u64().unwrap_or(0) > 0, "{json}");
    let (_, m) = https_get(ib.http, &c.der, "/metrics");
    assert!(
        metric(&m, "icebreaker_tls_connections_total", &["type=\"turn\""]) >= 2.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

/// The web client served over HTTPS by `icebreaker` itself with a test certificate: two
/// Chromium pages (a secure context, so camera and microphone work from another machine)
/// signal over wss and call each other relay-only through the `turns:` URL for the same
/// port (web-client.mjs's `tls` scenario).
#[test]
fn web_client_over_https_wss_and_turns_on_one_port() {
    let dir = browser_dir();
    let certs = temp_dir("web");
    let c = make_cert(&certs, "ib");
    let ib = start_tls(&c, &[]);
    let base = format!("https://localhost:{}", ib.http.port());
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["web-client.mjs", "--base", &base, "--scenario", "tls"])
        .args(["--timeout-ms", "60000"]);
    let mut p = Proc::start("web-client-tls", cmd);
    let status = p
        .wait(Duration::from_secs(120))
        .expect("web-client.mjs finished");
    let out = p.output();
    let r = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["scenario"] == "tls")
        .unwrap_or_else(|| panic!("no tls result:\n{out}"));
    assert!(status.success() && r["ok"] == true, "{r}\n{out}");
    for who in ["alice_receives", "bob_receives"] {
        assert_eq!(r[who]["candidateType"], "relay", "{r}");
        assert_eq!(r[who]["protocol"], "TLS", "{r}");
        assert!(r[who]["framesDecoded"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    let (_, m) = https_get(ib.http, &c.der, "/metrics");
    assert!(
        metric(&m, "icebreaker_tls_connections_total", &["type=\"turn\""]) >= 2.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

/// `icebreaker-peer doctor` against a server that speaks only TLS: signaling over wss,
/// and every `turns:` URL (the one port and `relay-tls-listen`) checked with a real
/// Allocate over TLS. Without the test CA it says the certificate is not trusted.
#[test]
fn doctor_checks_wss_and_turns_for_real() {
    let certs = temp_dir("doctor");
    let c = make_cert(&certs, "ib");
    let ib = start_tls(&c, &["--relay-tls-listen", "127.0.0.1:0"]);
    let server = format!("wss://localhost:{}/ws", ib.http.port());
    let doctor = |ca: Option<&Path>| {
        let mut cmd = Command::new(icebreaker_tests::bin("icebreaker-peer"));
        cmd.args(["--server", &server, "--bind", "127.0.0.1", "--json"]);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        let out = cmd.arg("doctor").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "doctor")
            .unwrap_or_else(|| panic!("no doctor report:\n{text}"));
        (out.status.success(), report)
    };
    let (ok, report) = doctor(Some(&c.cert));
    assert!(ok && report["ok"] == true, "{report}");
    let tls_checks: Vec<&Value> = report["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["check"].as_str().unwrap().ends_with(" tls"))
        .collect();
    assert_eq!(
        tls_checks.len(),
        2,
        "the one port and relay-tls-listen: {report}"
    );
    for d in tls_checks {
        assert_eq!(d["ok"], true, "{d}");
        assert!(
            d["detail"].as_str().unwrap().contains("relayed address"),
            "{d}"
        );
    }
    let (ok, report) = doctor(None);
    assert!(!ok, "{report}");
    let signaling = &report["details"][0];
    assert_eq!(signaling["ok"], false, "{report}");
    assert!(
        signaling["detail"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

/// wss: a client that stops reading is cut off once the kernel's buffers, rustls's
/// buffer and the server's bounded output are full, and the sender keeps being served;
/// what the slow client does get is whole messages (TLS records written by whichever
/// thread delivered them), then a close with 1008.
#[test]
fn wss_slow_consumer_is_cut_off_and_others_are_not_held_up() {
    use tokio_tungstenite::tungstenite::{self, Message};
    let certs = temp_dir("slow");
    let c = make_cert(&certs, "ib");
    let ib = start_tls(&c, &["--no-relay", "--rate-limit", "100000"]);
    let url = format!("wss://localhost:{}/ws", ib.http.port());
    let connect = || {
        let (ws, _) =
            tungstenite::client(url.as_str(), tls_connect(ib.http, &c.der).unwrap()).expect("wss");
        ws
    };
    let next = |ws: &mut tungstenite::WebSocket<Tls>| -> Value {
        loop {
            if let Message::Text(t) = ws.read().expect("a message") {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };
    let join = Message::text(json!({"type": "join", "room": "slow"}).to_string());
    let mut reader = connect();
    reader.send(join.clone()).unwrap();
    let slow_id = next(&mut reader)["id"].as_str().unwrap().to_string();
    let mut sender = connect();
    sender.send(join).unwrap();
    assert_eq!(next(&mut sender)["type"], "joined");
    assert_eq!(next(&mut reader)["type"], "peer-joined");
    let big = "x".repeat(60_000);
    let t0 = Instant::now();
    let mut cut = false;
    for i in 0..2000 {
        let m = json!({"type": "signal", "to": slow_id, "data": {"i": i, "pad": big}});
        sender.send(Message::text(m.to_string())).unwrap();
        if i % 50 == 49 {
            let (_, m) = https_get(ib.http, &c.der, "/metrics");
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
    sender
        .send(Message::text(json!({"type": "ping"}).to_string()))
        .unwrap();
    loop {
        let m = next(&mut sender);
        if m["type"] == "pong" {
            break;
        }
        assert_ne!(m["type"], "error", "{m}");
    }
    let mut expect = 0;
    loop {
        match reader.read() {
            Ok(Message::Text(t)) => {
                let m: Value = serde_json::from_str(t.as_str()).expect("a whole message");
                assert_eq!(m["type"], "signal");
                assert_eq!(m["data"]["i"], expect, "in order, none missing");
                expect += 1;
            }
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1008, "{f:?}");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e} after {expect} messages"),
        }
    }
    assert!(expect > 0);
    let _ = std::fs::remove_dir_all(&certs);
}

/// The webrtc-rs `turn` client (written for UDP) over TURN/TLS: a packet conn that frames
/// its STUN messages and ChannelData on a TLS stream (ChannelData padded to 4 bytes on
/// the way out and unpadded on the way in, RFC 8656 §12.5).
struct TlsPacketConn {
    server: SocketAddr,
    local: SocketAddr,
    rd: tokio::sync::Mutex<(
        tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Vec<u8>,
    )>,
    wr: tokio::sync::Mutex<
        tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    >,
}

fn util_err(e: impl std::fmt::Display) -> webrtc_util::Error {
    webrtc_util::Error::Other(e.to_string())
}

#[async_trait::async_trait]
impl webrtc_util::Conn for TlsPacketConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        use tokio::io::AsyncReadExt;
        let mut g = self.rd.lock().await;
        let (rd, pending) = &mut *g;
        loop {
            if let Some(Some(len)) = icebreaker_relay::codec::tcp_frame_len(pending) {
                if pending.len() >= len {
                    let frame: Vec<u8> = pending.drain(..len).collect();
                    // ChannelData: header + its own length, without the padding.
                    let n = if frame[0] & 0xC0 == 0x40 {
                        4 + u16::from_be_bytes([frame[2], frame[3]]) as usize
                    } else {
                        frame.len()
                    };
                    buf[..n].copy_from_slice(&frame[..n]);
                    return Ok((n, self.server));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = rd.read(&mut chunk).await.map_err(util_err)?;
            if n == 0 {
                return Err(util_err("TLS stream closed"));
            }
            pending.extend_from_slice(&chunk[..n]);
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        use tokio::io::AsyncWriteExt;
        let mut framed = buf.to_vec();
        if buf[0] & 0xC0 == 0x40 {
            framed.resize(buf.len().div_ceil(4) * 4, 0);
        }
        let mut w = self.wr.lock().await;
        w.write_all(&framed).await.map_err(util_err)?;
        w.flush().await.map_err(util_err)?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// webrtc-rs's `turn` client allocates over TLS on `icebreaker`'s one TLS port with the
/// REST credentials `joined` would hand out, binds a channel and relays to a UDP echo
/// peer and back, every message.
#[test]
fn webrtc_rs_turn_client_over_tls() {
    use webrtc_util::Conn;
    let certs = temp_dir("webrtc-rs");
    let c = make_cert(&certs, "ib");
    let ib = start_tls(&c, &["--turn-secret", "s3cret"]);
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            if &buf[..n] == b"stop" {
                break;
            }
            echo.send_to(&buf[..n], from).unwrap();
        }
    });
    let (user, pass) = icebreaker_relay::auth::mint_rest_credentials(
        b"s3cret",
        icebreaker_relay::server::unix_now() + 600,
        "webrtc-rs",
    );
    let server = ib.http;
    let trust = c.der.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut roots = RootCertStore::empty();
        roots.add(trust).unwrap();
        let cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let name = ServerName::try_from("localhost").unwrap().to_owned();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (rd, wr) = tokio::io::split(tls);
        let conn = Arc::new(TlsPacketConn {
            server,
            local,
            rd: tokio::sync::Mutex::new((rd, Vec::new())),
            wr: tokio::sync::Mutex::new(wr),
        });
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username: user,
            password: pass,
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        })
        .await
        .unwrap();
        client.listen().await.unwrap();
        let relayed = client.allocate().await.expect("allocation over TLS");
        assert_eq!(relayed.local_addr().unwrap().ip().to_string(), "127.0.0.1");
        let mut buf = vec![0u8; 2048];
        for i in 0..30u32 {
            let msg = format!("over TLS {i}");
            relayed.send_to(msg.as_bytes(), echo_addr).await.unwrap();
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), relayed.recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("no echo of {msg}"))
                    .unwrap();
            assert_eq!((&buf[..n], from), (msg.as_bytes(), echo_addr));
            if i == 0 {
                // The background ChannelBind: later messages travel as ChannelData.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        relayed.send_to(b"stop", echo_addr).await.unwrap();
        relayed.close().await.unwrap();
        client.close().await.unwrap();
    });
    echo_thread.join().unwrap();
    let (_, m) = https_get(ib.http, &c.der, "/metrics");
    assert!(
        metric(
            &m,
            "icebreaker_relay_requests_total",
            &["channel_bind", "code=\"0\""]
        ) >= 1.0,
        "ChannelData was used: {m}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}

/// A handshake in progress counts against its IP's `max-connections-per-ip`: an address
/// holding its limit in stalled handshakes gets no more (closed at once, counted), while
/// another address is served; once the stalled ones go, the first is served again.
#[test]
fn tls_handshakes_count_against_the_per_ip_limit() {
    let dir = temp_dir("per-ip");
    let c = make_cert(&dir, "ib");
    let ib = start_tls(&c, &["--max-connections-per-ip", "2"]);
    let hello_start = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = tcp_from("127.0.0.1", ib.http);
            s.write_all(&hello_start).unwrap();
            s
        })
        .collect();
    wait_for("both handshakes held", Duration::from_secs(5), || {
        let mut third = tcp_from("127.0.0.1", ib.http);
        third
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = third.write_all(&hello_start);
        // Closed at once, not left to the handshake timeout.
        let closed = match third.read(&mut [0u8; 16]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        closed && tls_over(tcp_from("127.0.0.1", ib.http), &c.der).is_err()
    });
    let other = tls_over(tcp_from("127.0.0.2", ib.http), &c.der);
    assert!(
        other.is_ok(),
        "another address is served: {:?}",
        other.err()
    );
    drop(other);
    stalled.clear();
    wait_for(
        "the address is served again",
        Duration::from_secs(5),
        || tls_over(tcp_from("127.0.0.1", ib.http), &c.der).is_ok(),
    );
    let mut s = tls_over(tcp_from("127.0.0.2", ib.http), &c.der).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let m = String::from_utf8_lossy(&out);
    assert!(
        metric(
            &m,
            "icebreaker_tls_handshakes_total",
            &["result=\"per_ip_limit\""]
        ) >= 2.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--proxy-protocol`, the PROXY header comes before the TLS handshake (HAProxy in
/// TCP mode in front of port 443): the handshake slot and the per-IP limit belong to the
/// client the header names, HTTPS works on after it, and so does TURN, whose bundled relay
/// sees that client too.
#[test]
fn a_proxy_protocol_header_before_tls_names_the_client() {
    let dir = temp_dir("proxied");
    let c = make_cert(&dir, "ib");
    let lb = "127.0.0.5";
    let ib = start_tls(
        &c,
        &[
            "--max-connections-per-ip",
            "1",
            "--proxy-protocol",
            "--trusted-proxy",
            &format!("{lb}/32"),
        ],
    );
    let via_lb = |client: &str| {
        let mut s = tcp_from(lb, ib.http);
        write!(s, "PROXY TCP4 {client} 127.0.0.1 40000 443\r\n").unwrap();
        s
    };
    // 203.0.113.1 holds its one slot with a handshake that never finishes.
    let hello_start = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let mut stalled = via_lb("203.0.113.1");
    stalled.write_all(&hello_start).unwrap();
    wait_for(
        "203.0.113.1's slot is taken",
        Duration::from_secs(5),
        || tls_over(via_lb("203.0.113.1"), &c.der).is_err(),
    );
    // Another client through the same balancer is served, over TLS after the header.
    let mut s = tls_over(via_lb("203.0.113.2"), &c.der).expect("another client's handshake");
    write!(s, "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(parse_http_response(&String::from_utf8_lossy(&out)).0, 200);
    // TURN on the same port: the bundled relay sees the client the header names (a STUN
    // Binding answers with it as XOR-MAPPED-ADDRESS), not the balancer.
    {
        use icebreaker_relay::codec::{attr, Class, Message, MessageWriter, Method};
        let mut t = tls_over(via_lb("203.0.113.3"), &c.der).expect("handshake for TURN");
        let tid = [7u8; 12];
        let mut req = Vec::new();
        let w = MessageWriter::new(&mut req, Method::BINDING, Class::Request, tid);
        let req = w.finish_with_fingerprint().to_vec();
        t.write_all(&req).unwrap();
        let mut head = [0u8; 20];
        t.read_exact(&mut head).unwrap();
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut resp = head.to_vec();
        resp.resize(20 + len, 0);
        t.read_exact(&mut resp[20..]).unwrap();
        let m = Message::parse(&resp).unwrap();
        assert_eq!((m.class, m.transaction_id), (Class::Success, tid));
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
            "203.0.113.3:40000".parse::<SocketAddr>().unwrap()
        );
    }
    // From the balancer's address, a handshake without the header is not served.
    assert!(tls_over(tcp_from(lb, ib.http), &c.der).is_err());
    drop(stalled);
    let mut s = tls_over(tcp_from("127.0.0.1", ib.http), &c.der).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let m = String::from_utf8_lossy(&out);
    let count = |name: &str, label: &str| metric(&m, name, &[label]);
    assert!(
        count("icebreaker_tls_handshakes_total", "result=\"per_ip_limit\"") >= 1.0,
        "{m}"
    );
    assert!(
        count("icebreaker_proxy_headers_total", "result=\"client\"") >= 3.0,
        "{m}"
    );
    assert!(
        count("icebreaker_proxy_headers_total", "result=\"invalid\"") >= 1.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
