//! Everything that differs between the two servers, plus connection setup: URL checks, the
//! WebSocket handshake, join / OPEN, and a cheap parser for what the servers send.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use icebreaker_protocol::{ClientMessage, ServerMessage};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::{fail, sh};

pub type Ws = WebSocketStream<TcpStream>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Ours,
    Peerjs,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Peerjs => "peerjs",
        }
    }

    /// Ours gets `ping` (answered by `pong`); PeerJS drops clients that send no HEARTBEAT for
    /// 90 s whatever else they send.
    pub fn heartbeat(self) -> String {
        match self {
            Target::Ours => ClientMessage::Ping { last_seq: None }.to_text(),
            Target::Peerjs => r#"{"type":"HEARTBEAT"}"#.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// URL

/// A ws:// URL on loopback.
pub struct UrlParts {
    pub ip: IpAddr,
    pub port: u16,
    /// path and query, starting with '/'
    pub path: String,
}

impl UrlParts {
    fn authority(&self) -> String {
        let host = match self.ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Like JavaScript's URL.href.
    pub fn href(&self) -> String {
        format!("ws://{}{}", self.authority(), self.path)
    }

    /// PeerJS: /peerjs?key=..&id=..&token=.. appended, as load.mjs does.
    pub fn peerjs(&self, key: &str, id: &str, token: &str) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        let path = if path.ends_with("/peerjs") {
            path.to_string()
        } else {
            format!("{}/peerjs", path.strip_suffix('/').unwrap_or(path))
        };
        format!(
            "ws://{}{}?key={}&id={}&token={}",
            self.authority(),
            path,
            form_enc(key),
            form_enc(id),
            form_enc(token)
        )
    }
}

/// application/x-www-form-urlencoded, as URLSearchParams writes it.
fn form_enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Parses ws://HOST[:PORT][/path][?query]; only 127.0.0.0/8 and ::1 (and localhost) pass.
pub fn parse_url(s: &str) -> Result<UrlParts, String> {
    let rest = s.strip_prefix("ws://").ok_or("--url must be ws://")?;
    let rest = rest.split('#').next().unwrap_or("");
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in --url are not supported".into());
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let end = r.find(']').ok_or(format!("bad --url {s}"))?;
        let after = &r[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':').ok_or(format!("bad --url {s}"))?)
        };
        (&r[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        None | Some("") => 80,
        Some(p) => p.parse().map_err(|_| format!("bad port in --url {s}"))?,
    };
    let host = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1"
    } else {
        host
    };
    // Load goes to this machine only: 127.0.0.0/8 or ::1.
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("refusing non-loopback target {host}"))?;
    if !ip.is_loopback() {
        return Err(format!("refusing non-loopback target {host}"));
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(UrlParts { ip, port, path })
}

// ---------------------------------------------------------------------------------------------
// frames we send

/// Digits of the send timestamp (µs since the process epoch, zero-padded: fixed frame size).
pub const T_DIGITS: usize = 12;

/// What a stream sends: signals to `to` whose data is
/// {"sdp":{"type":"offer","sdp":PAD},"t":"<µs>","n":N} as in load.mjs, padded so that the
/// whole frame with n = 0 is the requested size. Ours are written by the protocol crate
/// (`ClientMessage::Signal`); PeerJS frames, a protocol of its own, by concatenation.
#[derive(Clone, Debug)]
pub struct Template {
    target: Target,
    to: String,
    pad: String,
}

/// The signal's data: application payload, opaque to the server.
#[derive(serde::Serialize)]
struct Payload<'a> {
    sdp: Offer<'a>,
    t: &'a str,
    n: u64,
}

#[derive(serde::Serialize)]
struct Offer<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sdp: &'a str,
}

impl Template {
    pub fn new(target: Target, to: &str, size: usize) -> Template {
        let mut t = Template {
            target,
            to: to.into(),
            pad: String::new(),
        };
        let base = t.frame(0, 0).len();
        // 'x' needs no JSON escaping, so the pad adds exactly its length.
        t.pad = "x".repeat(size.saturating_sub(base));
        t
    }

    pub fn frame(&self, t_us: u64, n: u64) -> String {
        let mut digits = [0u8; T_DIGITS];
        let mut v = t_us;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let t = std::str::from_utf8(&digits).expect("ASCII digits");
        let payload = Payload {
            sdp: Offer {
                kind: "offer",
                sdp: &self.pad,
            },
            t,
            n,
        };
        match self.target {
            Target::Ours => {
                let data = serde_json::value::to_raw_value(&payload).expect("payload serializes");
                ClientMessage::Signal {
                    to: self.to.as_str().into(),
                    data: &data,
                }
                .to_text()
            }
            Target::Peerjs => {
                let to = serde_json::to_string(&self.to).expect("string to JSON");
                let payload = serde_json::to_string(&payload).expect("payload serializes");
                format!(r#"{{"type":"OFFER","dst":{to},"payload":{payload}}}"#)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// frames we receive

/// The fields of a PeerJS server message we look at (ours are read by the protocol crate).
/// Strings without escapes and `payload` are borrowed from the frame.
#[derive(Deserialize)]
struct PeerjsIn<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrPayload {
    #[serde(default)]
    msg: Option<String>,
}

/// What we embedded in a signal: counter and send time.
#[derive(Deserialize)]
pub struct Sig<'a> {
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default, borrow)]
    pub t: Option<&'a str>,
}

/// (n, t in µs) of a signal's data, or None (a `bad_payload`).
pub fn parse_sig(data: Option<&RawValue>) -> Option<(u64, u64)> {
    let sig: Sig = serde_json::from_str(data?.get()).ok()?;
    Some((sig.n?, sig.t?.parse().ok()?))
}

#[derive(Default)]
pub struct ConnState {
    pub id: Option<String>,
    pub peers: Vec<String>,
    pub last_seq: u64,
    /// joined (ours) / OPEN (PeerJS) seen
    pub ready: bool,
    pub alive: bool,
}

pub struct Conn {
    pub ws: Ws,
    pub st: ConnState,
}

pub enum Ev<'t> {
    None,
    /// joined / OPEN
    Ready,
    /// a signal's data (ours) / payload (PeerJS)
    Signal(Option<&'t RawValue>),
    /// a server error while opening
    Reject(String),
}

/// One text frame from the server: checks, state changes and failures as in load.mjs.
pub fn dispatch<'t>(target: Target, st: &mut ConnState, text: &'t str) -> Ev<'t> {
    let shape_or_json = |text: &str| {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            fail("unexpected_message_shape");
        } else {
            fail("bad_json_from_server");
        }
    };
    match target {
        Target::Ours => {
            let Ok(m) = ServerMessage::parse(text) else {
                shape_or_json(text);
                return Ev::None;
            };
            // Every server message carries a per-connection sequence number (used for resume).
            if m.seq() <= st.last_seq {
                fail("seq_not_increasing");
            } else {
                st.last_seq = m.seq();
            }
            match m {
                ServerMessage::Signal { data, .. } => Ev::Signal(Some(data)),
                ServerMessage::Joined { id, peers, .. } => {
                    st.id = Some(id.into_owned());
                    st.peers
                        .extend(peers.into_iter().map(|p| p.id.into_owned()));
                    st.ready = true;
                    Ev::Ready
                }
                ServerMessage::PeerJoined { id, .. } => {
                    st.peers.push(id.into_owned());
                    Ev::None
                }
                ServerMessage::PeerLeft { reason, .. } => {
                    fail(&format!("peer_left_{}", reason.as_str()));
                    Ev::None
                }
                ServerMessage::Pong { .. } => Ev::None,
                ServerMessage::Error { code, .. } => {
                    // rate-limited shows up here as server_error_rate-limited
                    let code = code.as_str();
                    fail(&format!("server_error_{code}"));
                    if st.ready {
                        Ev::None
                    } else {
                        Ev::Reject(format!("server error {code}"))
                    }
                }
                ServerMessage::Resumed { .. } => {
                    fail("unexpected_resumed");
                    Ev::None
                }
            }
        }
        Target::Peerjs => {
            let Ok(m) = serde_json::from_str::<PeerjsIn<'t>>(text) else {
                shape_or_json(text);
                return Ev::None;
            };
            match &*m.ty {
                "OFFER" | "ANSWER" | "CANDIDATE" => Ev::Signal(m.payload),
                "OPEN" => {
                    st.ready = true;
                    Ev::Ready
                }
                "ERROR" | "ID-TAKEN" => {
                    let what = if &*m.ty == "ERROR" {
                        m.payload
                            .and_then(|p| serde_json::from_str::<ErrPayload>(p.get()).ok())
                            .and_then(|p| p.msg)
                            .unwrap_or_else(|| "ERROR".into())
                    } else {
                        "ID-TAKEN".into()
                    };
                    fail(&format!("server_error_{what}"));
                    if st.ready {
                        Ev::None
                    } else {
                        Ev::Reject(format!("server error {what}"))
                    }
                }
                // EXPIRE: the server gave up on a queued message (unknown destination)
                "EXPIRE" | "LEAVE" => {
                    fail(&format!("server_{}", m.ty));
                    Ev::None
                }
                _ => {
                    fail("unknown_message_type");
                    Ev::None
                }
            }
        }
    }
}

/// Marks a connection gone; counts it as a failure if it had opened and we are not finishing.
pub fn mark_dead(st: &mut ConnState, err: Option<&WsError>) {
    if !st.alive {
        return;
    }
    st.alive = false;
    if !st.ready || sh().closing.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    match err {
        Some(e) => fail(&format!("socket_error_{}", ws_err_key(e))),
        None => fail("unexpected_close"),
    }
}

/// The text of a frame read from the socket; closes, errors and binary frames are accounted
/// for here. Pings are answered by tungstenite on the next read.
pub fn take_text(st: &mut ConnState, item: Option<Result<Message, WsError>>) -> Option<Utf8Bytes> {
    match item {
        Some(Ok(Message::Text(t))) => Some(t),
        Some(Ok(Message::Binary(_))) => {
            fail("binary_frame");
            None
        }
        Some(Ok(Message::Close(_))) | None => {
            mark_dead(st, None);
            None
        }
        Some(Err(e)) => {
            mark_dead(st, Some(&e));
            None
        }
        Some(Ok(_)) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// errors as failure keys

pub fn sanitize(s: &str) -> String {
    // s.replace(/[^A-Za-z0-9]+/g, '_').slice(0, 40)
    let mut out = String::new();
    let mut in_gap = false;
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
            in_gap = false;
        } else if !in_gap {
            out.push('_');
            in_gap = true;
        }
        if out.len() >= 40 {
            break;
        }
    }
    out
}

fn io_key(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(111) => "ECONNREFUSED".into(),
        Some(104) => "ECONNRESET".into(),
        Some(99) => "EADDRNOTAVAIL".into(),
        Some(98) => "EADDRINUSE".into(),
        Some(110) => "ETIMEDOUT".into(),
        Some(24) => "EMFILE".into(),
        Some(23) => "ENFILE".into(),
        Some(32) => "EPIPE".into(),
        Some(n) => format!("errno_{n}"),
        None => sanitize(&format!("{:?}", e.kind())),
    }
}

pub fn ws_err_key(e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_key(io),
        WsError::Http(resp) => format!("HTTP_{}", resp.status().as_u16()),
        other => sanitize(&other.to_string()),
    }
}

/// Like load.mjs: the error's code (ECONNREFUSED, ...) or its message made into a key.
pub fn err_key(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io_key(io);
        }
        if let Some(we) = cause.downcast_ref::<WsError>() {
            return ws_err_key(we);
        }
    }
    sanitize(&e.to_string())
}

// ---------------------------------------------------------------------------------------------
// opening connections

pub enum Who {
    /// ours: join this room
    Room(String),
    /// PeerJS: this client-chosen id
    Id(String),
}

/// Source address for connection k. Linux gives one source IP ~28k ephemeral ports towards a
/// given destination, so connections past --per-source are bound to 127.0.0.2, .3, …: all of
/// 127.0.0.0/8 is local. ::1 has no such range.
fn source_address(k: usize) -> anyhow::Result<Option<IpAddr>> {
    let cfg = &sh().cfg;
    let s = k as u64 / cfg.per_source;
    if s == 0 {
        return Ok(None);
    }
    if cfg.url.ip.is_ipv6() {
        bail!("IPv6 loopback cannot spread source addresses");
    }
    if s + 1 > 254 {
        bail!("out of 127.0.0.x source addresses");
    }
    Ok(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, (s + 1) as u8))))
}

fn token(k: usize) -> String {
    // Not a secret: PeerJS only wants some token per id.
    let mut x = crate::seed() ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = crate::splitmix(x);
    format!("{:012x}", x & 0xffff_ffff_ffff)
}

/// Connects, upgrades and waits until the server confirmed membership (ours: joined; PeerJS:
/// OPEN), all within --open-timeout-s.
pub async fn open_conn(k: usize, who: Who) -> anyhow::Result<Conn> {
    match tokio::time::timeout(sh().cfg.open_timeout, open_inner(k, who)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("open timeout")),
    }
}

async fn open_inner(k: usize, who: Who) -> anyhow::Result<Conn> {
    let cfg = &sh().cfg;
    let url = match &cfg.url2 {
        Some(u2) if k % 2 == 1 => u2,
        _ => &cfg.url,
    };
    let addr = SocketAddr::new(url.ip, url.port);
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source_address(k)? {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    let tcp = sock.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let request = match &who {
        Who::Room(_) => url.href(),
        Who::Id(id) => url.peerjs(&cfg.key, id, &token(k)),
    };
    let (ws, resp) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(cfg.ws_cfg)).await?;
    {
        // Shows whether a server negotiated an extension ("" when none, as load.mjs prints it).
        let mut ext = sh().extensions.lock().unwrap_or_else(|e| e.into_inner());
        if ext.is_none() {
            let v = resp
                .headers()
                .get("sec-websocket-extensions")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            *ext = Some(v.to_string());
        }
    }
    let mut c = Conn {
        ws,
        st: ConnState {
            alive: true,
            ..Default::default()
        },
    };
    if let Who::Room(room) = &who {
        let join = ClientMessage::Join {
            room: room.as_str().into(),
            token: None,
            meta: None,
        };
        c.ws.send(Message::text(join.to_text())).await?;
    }
    loop {
        let text = match c.ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                fail("binary_frame");
                continue;
            }
            Some(Ok(Message::Close(f))) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                bail!("closed during open ({code})");
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during open"),
        };
        match dispatch(cfg.target, &mut c.st, text.as_str()) {
            Ev::Ready => return Ok(c),
            Ev::Reject(why) => bail!("{why}"),
            Ev::None | Ev::Signal(_) => {}
        }
    }
}

/// The first peer id this connection learns (ours: from joined.peers or peer-joined).
pub async fn first_peer(c: &mut Conn) -> anyhow::Result<String> {
    match tokio::time::timeout(sh().cfg.open_timeout, wait_peer(c)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("peer never joined")),
    }
}

async fn wait_peer(c: &mut Conn) -> anyhow::Result<String> {
    let target = sh().cfg.target;
    loop {
        if let Some(p) = c.st.peers.first() {
            return Ok(p.clone());
        }
        let item = c.ws.next().await;
        if let Some(text) = take_text(&mut c.st, item) {
            let _ = dispatch(target, &mut c.st, text.as_str());
        } else if !c.st.alive {
            bail!("closed before the peer joined");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icebreaker_protocol::ClientMessage;

    /// A frame is exactly the requested size at n = 0, the server reads it as a signal, and
    /// the receiving side gets its counter and timestamp back.
    #[test]
    fn frames_have_the_requested_size_and_round_trip() {
        for size in [200, 500, 4000] {
            let t = Template::new(Target::Ours, "peer\"1", size);
            assert_eq!(t.frame(123, 0).len(), size);
            let f = t.frame(987_654_321, 42);
            match ClientMessage::parse(&f).unwrap() {
                ClientMessage::Signal { to, data } => {
                    assert_eq!(to, "peer\"1");
                    assert_eq!(parse_sig(Some(data)), Some((42, 987_654_321)));
                }
                m => panic!("{m:?}"),
            }
            let p = Template::new(Target::Peerjs, "x", size);
            assert_eq!(p.frame(0, 0).len(), size);
        }
    }
}
