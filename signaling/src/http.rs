//! The axum router: `/ws` (signaling), `/healthz`, `/metrics`, and the web client at `/`.

use std::net::SocketAddr;
use std::path::{Component, Path};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use rust_embed::RustEmbed;
use tower_http::trace::TraceLayer;

use crate::auth::origin_allowed;
use crate::bus::Bus;
use crate::config::SignalingConfig;
use crate::limits::PerIp;
use crate::metrics::{CodeLabel, Metrics};

pub struct AppState {
    pub cfg: SignalingConfig,
    pub bus: Arc<dyn Bus>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub per_ip: PerIp,
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

async fn ws_handler(
    ws: WebSocketUpgrade,
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let refuse = |reason: &'static str, status: StatusCode, body: &'static str| {
        st.metrics
            .refused_connections
            .get_or_create(&CodeLabel { code: reason })
            .inc();
        (status, body).into_response()
    };
    if !origin_allowed(&headers, &st.cfg.allowed_origins) {
        return refuse("origin", StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let Some(slot) = st.per_ip.acquire(addr.ip(), st.cfg.max_connections_per_ip) else {
        return refuse(
            "per-ip-limit",
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        );
    };
    let max = st.cfg.max_message_bytes;
    // Small buffers: most connections sit idle, and tungstenite's defaults (128 KiB
    // each way) would cost far more than the connection's own state. Frames up to twice
    // the protocol limit are read so the client gets a `too-large` error, not a reset.
    ws.read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max)
        .max_message_size(2 * max)
        .max_frame_size(2 * max)
        .on_upgrade(move |socket| crate::session::run(socket, st, slot))
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
