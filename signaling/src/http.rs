//! The HTTP side: an accept loop serving HTTP/1.1 with hyper, and the axum router:
//! `/ws` (signaling), `/healthz`, `/metrics`, and the web client at `/`.

use std::net::SocketAddr;
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
use prometheus_client::registry::Registry;
use rust_embed::RustEmbed;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::trace::TraceLayer;
use tracing::{debug, warn};

use crate::auth::origin_allowed;
use crate::bus::Bus;
use crate::config::SignalingConfig;
use crate::limits::PerIp;
use crate::metrics::{CodeLabel, Metrics};
use crate::ws::socket::WsSocket;

pub struct AppState {
    pub cfg: SignalingConfig,
    pub bus: Arc<dyn Bus>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub per_ip: PerIp,
    /// Cancelled on SIGTERM: stop accepting, close WebSockets with 1001.
    pub shutdown: CancellationToken,
    /// Every connection's task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// Output a connection may have waiting (unwritten) before it is cut off as too slow.
const MAX_PENDING_BYTES: usize = 4 << 20;

/// `n` listeners on one address (SO_REUSEPORT): one per serving thread, and the kernel
/// spreads new connections over them. With port 0 the first picks the port.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Protocol, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let at = match out.first() {
            Some(l) => l.local_addr()?,
            None => addr,
        };
        let s = icebreaker_relay::io::reuse_socket(at, Type::STREAM, Protocol::TCP)?;
        s.bind(&at.into())?;
        s.listen(1024)?;
        out.push(s.into());
    }
    Ok(out)
}

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
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                app.clone().oneshot(req)
            });
        let stop = state.shutdown.clone();
        state.tasks.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
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
        });
    }
}

/// The browser client, embedded at build time so the binary is all a user needs.
#[derive(RustEmbed)]
#[folder = "../web/"]
struct Web;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(get(static_file))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) has `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

async fn ws_handler(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let refuse = |reason: &'static str, status: StatusCode, body: &'static str| {
        st.metrics
            .refused_connections
            .get_or_create(&CodeLabel { code: reason })
            .inc();
        (status, body).into_response()
    };
    let headers = req.headers();
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return refuse(
            "not-websocket",
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket endpoint: connect with a WebSocket client\n",
        );
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        let mut r = refuse(
            "not-websocket",
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            "not-websocket",
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing\n",
        );
    };
    let accept = crate::ws::accept_key(key.as_bytes());
    if !origin_allowed(headers, &st.cfg.allowed_origins) {
        return refuse("origin", StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Some(slot) = st.per_ip.acquire(addr.ip(), st.cfg.max_connections_per_ip) else {
        return refuse(
            "per-ip-limit",
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        );
    };
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
        // The accept loop serves hyper's HTTP/1 connection on a bare TcpStream, so the
        // upgraded connection is that stream (plus any bytes read past the handshake).
        let parts = match up.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => p,
            Err(_) => {
                warn!("upgraded connection is not a TcpStream");
                return;
            }
        };
        let ip = slot.ip;
        let sock = WsSocket::new(
            parts.io.into_inner(),
            state.cfg.outbox_limit,
            MAX_PENDING_BYTES,
            Some(slot),
        );
        crate::session::run(Arc::new(sock), parts.read_buf, state, ip).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts")
}

async fn healthz(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let (rooms, peers) = st.bus.counts();
    format!("ok rooms={rooms} peers={peers}\n")
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
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
    let body: Option<Vec<u8>> = match &st.cfg.web_dir {
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
