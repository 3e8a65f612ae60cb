//! The HTTP side: an accept loop serving HTTP/1.1 with hyper, and the axum router:
//! `/ws` (signaling), `/healthz`, `/metrics`, and the web client at `/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use prometheus_client::registry::Registry;
use rust_embed::RustEmbed;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::trace::TraceLayer;
use tracing::{debug, warn};

use icebreaker_service::tls::{self as tlsio, Certificates, TlsConn};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::origin_allowed;
use crate::bus::Bus;
use crate::config::SignalingConfig;
use crate::limits::PerIp;
use crate::metrics::{CodeLabel, Metrics};
use crate::session::socket::WsSocket;
use crate::ws::Refusal;

/// What every request handler and connection shares.
pub struct AppState {
    /// The server's configuration; SIGHUP swaps in a new one (see [`AppState::cfg`]).
    pub cfg: arc_swap::ArcSwap<SignalingConfig>,
    /// The room state connections talk to.
    pub bus: Arc<dyn Bus>,
    /// The signaling service's metrics.
    pub metrics: Metrics,
    /// Everything `/metrics` exports (the bundled relay's metrics included).
    pub registry: Registry,
    /// Per-client-IP connection slots and join rates.
    pub per_ip: PerIp,
    /// Cancelled on SIGTERM: stop accepting, close WebSockets with 1001.
    pub shutdown: CancellationToken,
    /// Every connection's task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// HTTPS/wss (and TURN over TLS) on the listener, when a certificate is configured.
    pub tls: Option<Tls>,
    /// The bundled relay's shared state and metrics (gauges set when `/metrics` is read).
    pub relay: Option<(
        Arc<icebreaker_relay::server::Shared>,
        icebreaker_relay::metrics::RelayMetrics,
    )>,
}

/// What the listener needs to speak TLS.
pub struct Tls {
    /// rustls's configuration; it resolves through `certificates`, so a reload reaches
    /// new handshakes at once.
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate served; reloaded on SIGHUP and when its files change.
    pub certificates: Arc<Certificates>,
    /// Where connections whose first bytes are STUN go (the bundled relay).
    pub turn: Option<icebreaker_relay::io::Handoff>,
    /// Handshakes in progress at most; more connections wait for the kernel's backlog.
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

impl Tls {
    /// TLS with `certificates`, handing TURN to `turn`.
    pub fn new(
        certificates: Arc<Certificates>,
        turn: Option<icebreaker_relay::io::Handoff>,
    ) -> Tls {
        Tls {
            config: certificates.server_config(&[b"http/1.1"]),
            certificates,
            turn,
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
        }
    }
}

/// TLS handshakes in progress at once (each holds a socket and rustls's buffers, for at
/// most `HANDSHAKE_TIMEOUT`); beyond it new connections are closed and counted (`busy`).
const MAX_HANDSHAKES: usize = 1024;

impl AppState {
    /// The configuration now. A connection reads it where it uses it (joins, new
    /// connections), so a reload reaches everything after it without touching sockets.
    pub fn cfg(&self) -> Arc<SignalingConfig> {
        self.cfg.load_full()
    }
}

/// Output a connection may have waiting (unwritten) before it is cut off as too slow.
const MAX_PENDING_BYTES: usize = 4 << 20;

/// Accepts connections until `state.shutdown`. HTTP/1.1 only: hyper's HTTP/1 connection
/// hands an upgraded socket back as the plain `TcpStream`, which the WebSocket code needs
/// (it reads and writes the socket itself, see [`crate::ws`]).
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let app = router(state.clone());
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = state.shutdown.clone();
        let cfg = state.cfg();
        if cfg.proxy_protocol && crate::proxy::is_trusted(&cfg.trusted_proxies, addr.ip()) {
            let st = state.clone();
            state.tasks.spawn(async move {
                let mut stream = stream;
                let Some(addr) = proxied(&st, &mut stream, addr).await else {
                    return;
                };
                if st.tls.is_none() {
                    serve_http(stream, addr, app, stop).await
                } else {
                    serve_tls(st, stream, addr, app, stop).await
                }
            });
        } else if state.tls.is_none() {
            state.tasks.spawn(serve_http(stream, addr, app, stop));
        } else {
            state
                .tasks
                .spawn(serve_tls(state.clone(), stream, addr, app, stop));
        }
    }
}

/// A connection from a trusted load balancer with `--proxy-protocol`: the client its
/// PROXY header names (see [`crate::proxy::client_of`]), or `None`: closed, since without
/// the header the balancer would be counted as every client.
async fn proxied(st: &AppState, stream: &mut TcpStream, addr: SocketAddr) -> Option<SocketAddr> {
    crate::proxy::client_of(stream, addr, HEADER_TIMEOUT, |r| {
        st.metrics
            .proxy_headers
            .get_or_create(&crate::metrics::ResultLabel { result: r })
            .inc();
    })
    .await
}

/// How long a client may take to send its request head (and a balancer its PROXY header).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection: the handshake (counted against the client's per-IP limit), then
/// HTTP or, when its first bytes are STUN, TURN over TLS through the bundled relay.
async fn serve_tls(
    st: Arc<AppState>,
    stream: TcpStream,
    addr: SocketAddr,
    app: Router,
    stop: CancellationToken,
) {
    let Some(tls) = &st.tls else { return };
    let handshake = |r: &'static str| {
        st.metrics
            .tls_handshakes
            .get_or_create(&crate::metrics::ResultLabel { result: r })
            .inc();
    };
    let carried = |t: &'static str| {
        st.metrics
            .tls_connections
            .get_or_create(&crate::metrics::TypeLabel { r#type: t })
            .inc();
    };
    // A handshake in progress is something a client holds: it counts against its IP's
    // connection limit (as its WebSocket will), so one address cannot take every
    // handshake slot.
    let Some(slot) = st
        .per_ip
        .acquire(addr.ip(), st.cfg().max_connections_per_ip)
    else {
        return handshake("per_ip_limit");
    };
    let Ok(permit) = tls.handshakes.clone().try_acquire_owned() else {
        return handshake("busy");
    };
    let conn = match tlsio::accept(tls.config.clone(), stream).await {
        Ok(c) => c,
        Err(why) => return handshake(why.as_str()),
    };
    drop((permit, slot));
    handshake("ok");
    // One port for everything: TURN's first byte is never an HTTP method's.
    let Some(first) = conn.peek_first(Duration::from_secs(10)).await else {
        return carried("dropped");
    };
    if tlsio::looks_like_stun(first) {
        match &tls.turn {
            Some(relay) if relay.give(conn, addr) => carried("turn"),
            _ => carried("dropped"),
        }
        return;
    }
    carried("http");
    serve_http(conn, addr, app, stop).await
}

/// Serves one connection's HTTP/1.1 requests (and its upgrade to a WebSocket).
async fn serve_http<I>(io: I, addr: SocketAddr, app: Router, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        debug!(error = %e, %addr, "http connection ended");
    }
}

/// The browser client, embedded at build time so the binary is all a user needs.
#[derive(RustEmbed)]
#[folder = "../web/"]
struct Web;

/// The routes: `/ws`, `/healthz`, `/metrics`, and the web client for everything else.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(get(static_file))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The client's address: the TCP peer, unless that is a trusted reverse proxy
/// (`--trusted-proxy`); then the `X-Forwarded-For` entry nearest to us that is not itself a
/// trusted proxy (proxies append, so entries further left were written by the client and
/// prove nothing). IPv4-mapped IPv6 addresses count as the IPv4 address they are.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let canon = crate::proxy::canonical;
    let is_trusted = |ip: IpAddr| crate::proxy::is_trusted(trusted, ip);
    let mut ip = canon(peer);
    if !is_trusted(ip) {
        return ip;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let hop = hop.trim();
        // `1.2.3.4`, `[::1]:443` and `1.2.3.4:5678` are all seen in the wild.
        let parsed = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()));
        let Some(next) = parsed.map(canon) else {
            // Garbage from the client's side: stop at the last address we could trust.
            break;
        };
        ip = next;
        if !is_trusted(ip) {
            break;
        }
    }
    ip
}

async fn ws_handler(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let refuse = |reason: &'static str, status: StatusCode, body: String| {
        st.metrics
            .refused_connections
            .get_or_create(&CodeLabel { code: reason })
            .inc();
        (status, body).into_response()
    };
    let headers = req.headers();
    let accept = match crate::ws::accept(headers) {
        Ok(a) => a,
        Err(why) => {
            let mut r = refuse("not-websocket", why.status(), why_text(why));
            if why.advertise_version() {
                r.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return r;
        }
    };
    if !origin_allowed(headers, &st.cfg().allowed_origins) {
        return refuse(
            "origin",
            StatusCode::FORBIDDEN,
            "origin not allowed\n".into(),
        );
    }
    let client = client_ip(addr.ip(), headers, &st.cfg().trusted_proxies);
    let Some(slot) = st.per_ip.acquire(client, st.cfg().max_connections_per_ip) else {
        return refuse(
            "per-ip-limit",
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n".into(),
        );
    };
    let tls_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let upgrade = hyper::upgrade::on(&mut req);
    let state = st.clone();
    st.tasks.spawn(async move {
        let up = match upgrade.await {
            Ok(up) => up,
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ip = slot.ip;
        match Session::of(up, state.cfg().outbox_limit, slot) {
            Some(Session::Tcp(sock, early)) => {
                crate::session::run(sock, early, state, ip, None).await
            }
            Some(Session::Tls(sock, early)) => {
                crate::session::run(sock, early, state, ip, tls_host).await
            }
            None => warn!("upgraded connection is neither TCP nor TLS"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts")
}

/// An upgraded connection, ready for [`crate::session::run`]: its socket (already behind
/// an `Arc`) and the bytes the client sent right behind its handshake.
///
/// Made outside the connection's task on purpose: that task lives as long as the
/// connection, and a future is as large as the most it ever holds across an await. Had
/// hyper's `Parts` (1.3 KB with a TLS connection inside) been downcast in the task, every
/// connection, TLS or not, would carry it (3.8 KB per task instead of 1.3, measured with
/// `-Zprint-type-sizes`; idle memory 5.9 instead of 3.2 KiB per connection).
enum Session {
    Tcp(Arc<WsSocket<TcpStream>>, bytes::Bytes),
    Tls(Arc<WsSocket<TlsConn>>, bytes::Bytes),
}

impl Session {
    /// The accept loop serves hyper's HTTP/1 connection on a bare `TcpStream` or a
    /// `TlsConn`, so the upgraded connection is one of them.
    fn of(
        up: hyper::upgrade::Upgraded,
        limit: usize,
        slot: Arc<crate::limits::IpSlot>,
    ) -> Option<Self> {
        let up = match up.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let sock =
                    WsSocket::new(parts.io.into_inner(), limit, MAX_PENDING_BYTES, Some(slot));
                return Some(Session::Tcp(Arc::new(sock), parts.read_buf));
            }
            Err(up) => up,
        };
        let parts = up.downcast::<TokioIo<TlsConn>>().ok()?;
        let sock = WsSocket::new(parts.io.into_inner(), limit, MAX_PENDING_BYTES, Some(slot));
        Some(Session::Tls(Arc::new(sock), parts.read_buf))
    }
}

/// The refusal's sentence as a response body.
fn why_text(why: Refusal) -> String {
    format!("{why}\n")
}

async fn healthz(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let (rooms, peers) = st.bus.counts();
    match st.bus.degraded() {
        // 503 tells a load balancer to send new clients to a node that is whole.
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded rooms={rooms} peers={peers}: {why}\n"),
        ),
        None => (StatusCode::OK, format!("ok rooms={rooms} peers={peers}\n")),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if let Some((shared, m)) = &st.relay {
        m.ports_free.set(shared.free_ports() as i64);
    }
    st.metrics
        .resident_memory
        .set(icebreaker_service::resident_memory_bytes() as i64);
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &st.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn static_file(State(st): State<Arc<AppState>>, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let body: Option<Vec<u8>> = match &st.cfg().web_dir {
        Some(dir) => {
            let rel = Path::new(&path);
            if rel.components().all(|c| matches!(c, Component::Normal(_))) {
                tokio::fs::read(dir.join(rel)).await.ok()
            } else {
                None
            }
        }
        None => Web::get(&path).map(|f| f.data.into_owned()),
    };
    match body {
        Some(b) => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_string()),
                    (header::CACHE_CONTROL, "no-cache".into()),
                ],
                Body::from(b),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let ip = |peer: IpAddr, h: &HeaderMap, t: &[IpNet]| client_ip(peer, h, t).to_string();
        // No trusted proxies configured: the header is the client's word, ignored.
        assert_eq!(ip(proxy, &xff(&["203.0.113.7"]), &[]), "10.0.0.2");
        // A trusted proxy names the client.
        assert_eq!(ip(proxy, &xff(&["203.0.113.7"]), &trusted), "203.0.113.7");
        // The client forged an entry; the proxy appended the real address: rightmost wins.
        assert_eq!(
            ip(proxy, &xff(&["1.1.1.1, 203.0.113.7"]), &trusted),
            "203.0.113.7"
        );
        // Two proxies in a row (both trusted): the first untrusted hop from the right.
        assert_eq!(
            ip(proxy, &xff(&["198.51.100.9", "10.0.0.3"]), &trusted),
            "198.51.100.9"
        );
        // A direct client that is not a proxy cannot claim another address.
        let client: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(ip(client, &xff(&["10.0.0.9"]), &trusted), "198.51.100.1");
        // Garbage stops the walk at the last good address; no header: the proxy itself.
        assert_eq!(ip(proxy, &xff(&["junk, 10.0.0.3"]), &trusted), "10.0.0.3");
        assert_eq!(ip(proxy, &HeaderMap::new(), &trusted), "10.0.0.2");
        // Ports and brackets, and IPv4-mapped IPv6 (a dual-stack listener's view).
        assert_eq!(
            ip(proxy, &xff(&["[2001:db8::1]:443"]), &trusted),
            "2001:db8::1"
        );
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(
            ip(mapped, &xff(&["203.0.113.8:5000"]), &trusted),
            "203.0.113.8"
        );
    }
}
