//! `doctor`: what a self-hoster runs after deploying. Each check prints ✓/✗ and, on
//! failure, the likely cause in one line; exit 0 only when every check passes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use icebreaker_protocol::{ClientMessage, IceServer, ServerMessage};
use icebreaker_stun::auth::long_term_key;
use icebreaker_stun::codec::{
    attr, tcp_frame_len, Attributes, Class, Message, MessageWriter, Method,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{lookup_host, TcpStream, UdpSocket};

use crate::output::Out;
use crate::peer::PeerEvent;
use crate::room::{now_ms, Event, Options, Room};

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

struct Doctor {
    out: Out,
    checks: Vec<Check>,
}

impl Doctor {
    fn report(&mut self, name: &str, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let detail = match result {
            Ok(d) | Err(d) => d,
        };
        let mark = if ok { "✓" } else { "✗" };
        self.out.event(
            &json!({"event": "check", "check": name, "ok": ok, "detail": detail}),
            Some(format!("{mark} {name}: {detail}")),
        );
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
        });
        ok
    }
}

/// A TURN/STUN URL split into what a client needs.
#[derive(Debug, Clone)]
struct IceUrl {
    scheme: String,
    host: String,
    port: u16,
    tcp: bool,
}

fn parse_url(u: &str) -> Option<IceUrl> {
    let (scheme, rest) = u.split_once(':')?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)
        }
        _ => (
            hostport.trim_matches(['[', ']']).to_string(),
            if scheme == "turns" { 5349 } else { 3478 },
        ),
    };
    Some(IceUrl {
        scheme: scheme.into(),
        host,
        port,
        tcp: query.contains("transport=tcp") || scheme == "turns",
    })
}

async fn resolve(u: &IceUrl) -> Result<SocketAddr, String> {
    lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", u.host))
}

/// How a STUN/TURN server is reached: `turn:?transport=udp`, `?transport=tcp`, `turns:`.
#[derive(Debug, Clone)]
enum Via {
    Udp,
    Tcp,
    /// TLS over TCP, checking the certificate for this name (the URL's host).
    Tls(String),
}

impl IceUrl {
    fn via(&self) -> Via {
        match (self.scheme.as_str(), self.tcp) {
            ("turns", _) => Via::Tls(self.host.clone()),
            (_, true) => Via::Tcp,
            _ => Via::Udp,
        }
    }
}

/// What a server that never answers over transport `t` most likely means.
fn silent(server: SocketAddr, t: &str) -> String {
    format!("no answer from {server}/{t}: the relay is not running there, or a firewall drops {t} to that port")
}

/// Writes `req` on a stream and reads one framed STUN message back (3 s).
async fn stream_transact<S>(
    s: &mut S,
    server: SocketAddr,
    t: &str,
    req: &[u8],
) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(Some(n)) = tcp_frame_len(&buf) {
            if buf.len() >= n {
                buf.truncate(n);
                return Ok(buf);
            }
        }
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .map_err(|_| silent(server, t))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "{server} closed the {t} connection without answering"
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request/response over UDP (3 tries), TCP or TLS.
async fn transact(server: SocketAddr, via: &Via, req: &[u8]) -> Result<Vec<u8>, String> {
    if let Via::Tcp | Via::Tls(_) = via {
        let t = if matches!(via, Via::Tcp) {
            "tcp"
        } else {
            "tls"
        };
        let s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(server))
            .await
            .map_err(|_| silent(server, t))?
            .map_err(|e| {
                format!("TCP connect to {server} failed ({e}): relay down or port closed")
            })?;
        let _ = s.set_nodelay(true);
        let Via::Tls(host) = via else {
            let mut s = s;
            return stream_transact(&mut s, server, t, req).await;
        };
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| format!("{host:?} is not a name a certificate can be checked for"))?;
        let connector = tokio_rustls::TlsConnector::from(crate::tls::config());
        let mut s = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, s))
            .await
            .map_err(|_| format!("TLS handshake with {server} did not finish within 5 s"))?
            .map_err(|e| {
                format!("TLS handshake with {server} failed: {e} (a certificate for {host:?} that this machine trusts is needed; --ca FILE adds a private CA)")
            })?;
        stream_transact(&mut s, server, t, req).await
    } else {
        let sock = UdpSocket::bind(if server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            sock.send_to(req, server).await.map_err(|e| e.to_string())?;
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(800), sock.recv_from(&mut buf)).await
            {
                return Ok(buf[..n].to_vec());
            }
        }
        Err(silent(server, "udp"))
    }
}

/// A STUN answer and its decoded attributes, or why it is unreadable.
fn answer<'a>(resp: &'a [u8], server: SocketAddr) -> Result<(Message<'a>, Attributes<'a>), String> {
    let bad = |e: &dyn std::fmt::Display| format!("malformed answer from {server}: {e}");
    let m = Message::parse(resp).map_err(|e| bad(&e))?;
    let a = Attributes::parse(&m).map_err(|e| bad(&e))?;
    Ok((m, a))
}

async fn stun_binding(u: &IceUrl) -> Result<String, String> {
    let server = resolve(u).await?;
    let mut buf = Vec::new();
    let req = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, rand::random())
        .finish_with_fingerprint()
        .to_vec();
    let t0 = Instant::now();
    let resp = transact(server, &u.via(), &req).await?;
    let (_, a) = answer(&resp, server)?;
    let mapped = a.xor_mapped_address.ok_or_else(|| {
        format!("{server} answered without XOR-MAPPED-ADDRESS: not a STUN server?")
    })?;
    Ok(format!(
        "{server} says we are {mapped} ({} ms)",
        t0.elapsed().as_millis()
    ))
}

/// Allocate with long-term credentials (401 challenge, then signed), then free it.
async fn turn_allocate(u: &IceUrl, user: &str, pass: &str) -> Result<String, String> {
    let server = resolve(u).await?;
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, rand::random());
    w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let req = w.finish_with_fingerprint().to_vec();
    let resp = transact(server, &u.via(), &req).await?;
    let (_, a) = answer(&resp, server)?;
    let (realm, nonce) = match (a.realm, a.nonce) {
        (Some(r), Some(n)) => (r.to_string(), n.to_string()),
        _ => {
            return Err(format!(
                "{server} did not challenge (no 401 with REALM/NONCE): not a TURN server?"
            ))
        }
    };
    let key = long_term_key(user, &realm, pass);
    let allocate = |nonce: &str| {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, rand::random());
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&key, false);
        w.finish_with_fingerprint().to_vec()
    };
    let resp = transact(server, &u.via(), &allocate(&nonce)).await?;
    let (m, a) = answer(&resp, server)?;
    if let Some((code, reason)) = a.error_code {
        return Err(match code {
            401 => format!("401 {reason}: the credentials from signaling are refused — the signaling server's TURN secret (--turn-secret) does not match the TURN server's, or its clock is off"),
            403 => format!("403 {reason}"),
            486 | 508 => format!("{code} {reason}: the TURN server is at its allocation or port limit"),
            _ => format!("{code} {reason}"),
        });
    }
    if !m.verify_integrity(&key) {
        return Err(format!("{server} answered with a bad MESSAGE-INTEGRITY"));
    }
    let relayed = a
        .xor_relayed_address
        .ok_or("success without XOR-RELAYED-ADDRESS")?;
    let ms = t0.elapsed().as_millis();
    // Free it: Refresh with LIFETIME 0 (best effort; over TCP closing does it too).
    if !u.tcp {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, Method::REFRESH, Class::Request, rand::random());
        w.u32(attr::LIFETIME, 0)
            .attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(&key, false);
        let _ = transact(server, &Via::Udp, w.finish_with_fingerprint()).await;
    }
    if relayed.ip().is_unspecified() {
        return Err(format!(
            "relayed address {relayed} is unspecified: set --relay-ip/--external-ip on the relay"
        ));
    }
    Ok(format!("relayed address {relayed} via {server} ({ms} ms)"))
}

/// Two peers in a fresh room, relay only, exchange a message both ways.
async fn relay_round_trip(base: &Options) -> Result<String, String> {
    let room = format!("doctor-{:08x}", rand::random::<u32>());
    let mk = |name: &str| Options {
        room: room.clone(),
        name: name.into(),
        relay_only: true,
        ..base.clone()
    };
    let t0 = Instant::now();
    let mut a = Room::join(&mk("doctor-a"), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut b = Room::join(&mk("doctor-b"), None)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut pair = String::new();
    let mut echoed = false;
    let mut sent_at = None;
    while !echoed {
        tokio::select! {
            ev = a.events.recv() => match ev {
                Some(Event::Peer(PeerEvent::ChannelOpen { label, dc, .. })) if label == "chat" => {
                    sent_at = Some(Instant::now());
                    let _ = dc.send_text(&json!({"from": "doctor-a", "text": "ping", "ts": now_ms()}).to_string()).await;
                }
                Some(Event::Peer(PeerEvent::Connected { local, remote, .. })) => pair = format!("{local}/{remote}"),
                Some(Event::Peer(PeerEvent::Message { label, .. })) if label == "chat" => echoed = true,
                Some(Event::Peer(PeerEvent::Failed { .. })) => return Err("ICE failed between two relay-only peers: the relay cannot reach its own relayed addresses (check --relay-ip/--external-ip and the firewall for the relay port range)".into()),
                None => return Err("signaling closed".into()),
                _ => {}
            },
            ev = b.events.recv() => {
                // B answers on its chat channel as soon as it opens.
                if let Some(Event::Peer(PeerEvent::ChannelOpen { label, dc, .. })) = ev {
                    if label == "chat" {
                        let _ = dc.send_text(&json!({"from": "doctor-b", "text": "pong", "ts": now_ms()}).to_string()).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                a.close().await; b.close().await;
                return Err("no relay-only data channel within 15 s: TURN allocations work but peers cannot connect through them (firewall on the relay port range, or wrong --external-ip)".into());
            }
        }
    }
    let _ = sent_at;
    a.close().await;
    b.close().await;
    if !pair.starts_with("relay") {
        return Err(format!("connected, but over {pair}, not through the relay"));
    }
    Ok(format!(
        "relay/relay data channel up and messages both ways in {} ms",
        t0.elapsed().as_millis()
    ))
}

/// Runs every check against the deployment `base` names; true when all pass.
pub async fn run(base: Options, out: Out) -> anyhow::Result<bool> {
    let mut d = Doctor {
        out,
        checks: Vec::new(),
    };
    // 1. WebSocket and protocol.
    let room = format!("doctor-{:08x}", rand::random::<u32>());
    let joined = async {
        let (ws, _) =
            tokio::time::timeout(Duration::from_secs(5), crate::tls::ws_connect(&base.server))
                .await
                .map_err(|_| format!("no WebSocket answer from {} within 5 s", base.server))?
                .map_err(|e| {
                    format!(
                        "cannot open {}: {e} (is icebreaker running, and is /ws the path?)",
                        base.server
                    )
                })?;
        let mut ws = ws;
        use futures_util::{SinkExt, StreamExt};
        let meta = serde_json::value::to_raw_value(&json!({"name": "doctor"})).ok();
        let join = ClientMessage::Join {
            room: room.as_str().into(),
            token: base.token.as_deref().map(Into::into),
            meta: meta.as_deref(),
        };
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            join.to_text().into(),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "no `joined` within 5 s".to_string())?;
            if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = m {
                let _ = ws.close(None).await;
                return match ServerMessage::parse(&t) {
                    Ok(ServerMessage::Joined { ice_servers, .. }) => IceServer::list(ice_servers)
                        .map_err(|e| format!("`joined` has unreadable ice_servers: {e}")),
                    Ok(ServerMessage::Error { code, message, .. }) => Err(format!(
                        "server refused the join: {} ({message})",
                        code.as_str()
                    )),
                    Ok(m) => Err(format!("unexpected first message `{}`", m.kind())),
                    Err(e) => Err(format!("not protocol v1? {e}: {t}")),
                };
            }
            if m.is_none() {
                return Err("connection closed before `joined`".into());
            }
        }
    }
    .await;
    let joined = match joined {
        Ok(v) => {
            d.report(
                "signaling",
                Ok(format!(
                    "{} answers protocol v1 (joined with seq)",
                    base.server
                )),
            );
            v
        }
        Err(e) => {
            d.report("signaling", Err(e));
            return finish(d);
        }
    };
    // 2. ICE servers and credentials.
    let servers = joined;
    let mut stun_urls = Vec::new();
    let mut turn: Vec<(IceUrl, String, String)> = Vec::new();
    for s in &servers {
        for u in &s.urls {
            let Some(p) = parse_url(u) else { continue };
            if p.scheme == "stun" {
                stun_urls.push(p);
            } else {
                turn.push((
                    p,
                    s.username.clone().unwrap_or_default(),
                    s.credential.clone().unwrap_or_default(),
                ));
            }
        }
    }
    if !d.report(
        "ice servers",
        if turn.is_empty() {
            Err("no turn: URL in ice_servers: peers behind NAT will not connect (run the bundled relay or pass --turn-url/--turn-secret)".into())
        } else {
            Ok(format!("{} STUN and {} TURN URLs", stun_urls.len(), turn.len()))
        },
    ) {
        return finish(d);
    }
    let user = turn[0].1.clone();
    let expiry = user.split(':').next().and_then(|e| e.parse::<u64>().ok());
    let now = now_ms() / 1000;
    d.report(
        "credential expiry",
        match expiry {
            None => Err(format!("TURN username {user:?} is not EXPIRY[:ID]: not TURN REST credentials")),
            Some(e) if e <= now + 60 => Err(format!("credentials expire in {} s: --ice-ttl too short, or the server clock is behind", e as i64 - now as i64)),
            Some(e) if e > now + 7 * 86400 => Err(format!("credentials valid for {} days: --ice-ttl too long (leaked credentials stay usable)", (e - now) / 86400)),
            Some(e) => Ok(format!("valid for {} min", (e - now) / 60)),
        },
    );
    // 3. STUN and TURN per URL.
    for u in &stun_urls {
        d.report(
            &format!("stun {}:{}", u.host, u.port),
            stun_binding(u).await,
        );
    }
    for (u, name, cred) in &turn {
        let label = format!(
            "turn {}:{} {}",
            u.host,
            u.port,
            match u.via() {
                Via::Udp => "udp",
                Via::Tcp => "tcp",
                Via::Tls(_) => "tls",
            }
        );
        d.report(&label, turn_allocate(u, name, cred).await);
    }
    // 4. Relay-only round trip between two internal peers.
    let rt = relay_round_trip(&base).await;
    d.report("relay-only data channel", rt);
    finish(d)
}

fn finish(d: Doctor) -> anyhow::Result<bool> {
    let ok = d.checks.iter().all(|c| c.ok);
    let failed: Vec<&str> = d
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    d.out.event(
        &json!({"event": "doctor", "ok": ok, "checks": d.checks.len(), "failed": failed,
                "details": d.checks.iter().map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>()}),
        Some(if ok { "all checks passed".into() } else { format!("{} of {} checks failed", failed.len(), d.checks.len()) }),
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("turn:127.0.0.1:3478?transport=tcp").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port, u.tcp),
            ("turn", "127.0.0.1", 3478, true)
        );
        let u = parse_url("stun:example.org").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tcp),
            ("example.org", 3478, false)
        );
        let u = parse_url("turn:[::1]:3479?transport=udp").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3479));
        assert!(parse_url("nonsense").is_none());
    }
}
