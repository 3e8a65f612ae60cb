//! One WebSocket connection: translates frames to bus calls and queued server messages
//! back to frames. Holds only per-connection state (rate bucket, heartbeat, which peer it
//! carries); rooms and sequencing live behind the bus.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use tokio::sync::Notify;
use tracing::debug;

use crate::auth::check_token;
use crate::http::AppState;
use crate::ice::ice_servers_json;
use crate::limits::{IpSlot, TokenBucket};
use crate::protocol::{
    self, valid_room, ClientMessage, ErrorCode, LeaveReason, ProtocolError, ServerMessage,
};
use crate::room::Attached;

/// Largest `meta` a peer may attach to itself (it is copied to everyone in the room).
const MAX_META_BYTES: usize = 1024;

enum Event {
    In(Option<Result<Message, axum::Error>>),
    /// Frames are waiting in the peer's buffer.
    Wake,
    Heartbeat,
}

#[derive(PartialEq, Eq)]
enum End {
    /// The client closed the socket cleanly: it left.
    Closed,
    /// The socket broke or went silent: keep the peer for the resume grace.
    Dropped,
}

struct Conn {
    state: Arc<AppState>,
    me: Option<Attached>,
    notify: Arc<Notify>,
}

impl Conn {
    /// An error goes through the peer's sequenced stream once joined; before that it is
    /// written directly with `seq` 0.
    async fn error(&mut self, socket: &mut WebSocket, err: ProtocolError) -> bool {
        self.state.metrics.error(err.code.as_str());
        debug!(code = err.code.as_str(), message = %err.message, "error to client");
        match &self.me {
            Some(a) => {
                self.state.bus.error(&a.id, &err).await;
                true
            }
            None => {
                let json = ServerMessage::Error {
                    code: err.code,
                    message: &err.message,
                    seq: 0,
                }
                .to_json();
                socket.send(Message::Text(json.into())).await.is_ok()
            }
        }
    }

    async fn handle(&mut self, socket: &mut WebSocket, text: &str) -> bool {
        let msg = match protocol::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(socket, e).await,
        };
        let st = self.state.clone();
        st.metrics.message_in(msg.kind());
        let cfg = &st.cfg;
        let bad = |m: &str| ProtocolError::new(ErrorCode::BadMessage, m);
        match msg {
            ClientMessage::Join { room, token, meta } => {
                if self.me.is_some() {
                    return self.error(socket, bad("already joined; leave first")).await;
                }
                if !valid_room(&room) {
                    return self
                        .error(
                            socket,
                            bad("room must be 1-64 characters of A-Z a-z 0-9 _ -"),
                        )
                        .await;
                }
                if meta
                    .as_ref()
                    .is_some_and(|m| m.get().len() > MAX_META_BYTES || !m.get().starts_with('{'))
                {
                    return self
                        .error(socket, bad("meta must be a JSON object of at most 1 KiB"))
                        .await;
                }
                let mut label = String::from("peer");
                if let Some(secret) = &cfg.jwt_secret {
                    match check_token(secret, token.as_deref(), &room) {
                        Ok(claims) => {
                            label = claims
                                .sub
                                .chars()
                                .filter(|c| c.is_ascii_alphanumeric())
                                .take(32)
                                .collect()
                        }
                        Err(e) => return self.error(socket, e).await,
                    }
                }
                let ice = ice_servers_json(cfg, &label, icebreaker_relay::server::unix_now());
                match st.bus.join(&room, meta, &ice, self.notify.clone()).await {
                    Ok(a) => {
                        debug!(id = %a.id, %room, "joined");
                        self.me = Some(a);
                        true
                    }
                    Err(e) => self.error(socket, e).await,
                }
            }
            ClientMessage::Signal { to, data } => {
                let Some(a) = &self.me else {
                    return self
                        .error(
                            socket,
                            ProtocolError::new(ErrorCode::NotJoined, "join a room first"),
                        )
                        .await;
                };
                let t0 = Instant::now();
                match st.bus.signal(&a.id, &to, &data).await {
                    Ok(()) => {
                        st.metrics
                            .forward_latency
                            .observe(t0.elapsed().as_secs_f64());
                        true
                    }
                    Err(e) => self.error(socket, e).await,
                }
            }
            ClientMessage::Leave => match self.me.take() {
                Some(a) => {
                    st.bus.leave(&a.id, LeaveReason::Left).await;
                    true
                }
                None => {
                    self.error(
                        socket,
                        ProtocolError::new(ErrorCode::NotJoined, "not in a room"),
                    )
                    .await
                }
            },
            ClientMessage::Ping => match &self.me {
                Some(a) => {
                    st.bus.pong(&a.id).await;
                    true
                }
                None => socket
                    .send(Message::Text(
                        ServerMessage::Pong { seq: 0 }.to_json().into(),
                    ))
                    .await
                    .is_ok(),
            },
            ClientMessage::Resume {
                id,
                token,
                last_seq,
            } => {
                if self.me.is_some() {
                    return self.error(socket, bad("already joined")).await;
                }
                match st
                    .bus
                    .resume(&id, &token, last_seq, self.notify.clone())
                    .await
                {
                    Ok((a, (_, resumed))) => {
                        st.metrics
                            .resumes
                            .get_or_create(&crate::metrics::ResultLabel { result: "ok" })
                            .inc();
                        debug!(id = %a.id, last_seq, "resumed");
                        self.me = Some(a);
                        // `resumed` first; the missed messages follow on the next wake.
                        socket.send(Message::Text(resumed)).await.is_ok()
                    }
                    Err(e) => {
                        st.metrics
                            .resumes
                            .get_or_create(&crate::metrics::ResultLabel { result: "failed" })
                            .inc();
                        self.error(socket, e).await
                    }
                }
            }
        }
    }
}

/// Writes every frame waiting for this connection. False: the socket failed, or the bus
/// detached the peer from this connection (too slow, or resumed elsewhere).
async fn flush(
    state: &AppState,
    conn: &Conn,
    socket: &mut WebSocket,
    last_written: &mut u64,
) -> bool {
    let Some(a) = &conn.me else { return true };
    loop {
        match state.bus.take(&a.id, a.conn, 64).await {
            None => {
                close(
                    socket,
                    1008,
                    "detached: too slow to receive, or resumed elsewhere",
                )
                .await;
                return false;
            }
            Some(frames) if frames.is_empty() => return true,
            Some(frames) => {
                for (seq, f) in frames {
                    if socket.send(Message::Text(f)).await.is_err() {
                        return false;
                    }
                    *last_written = seq;
                }
            }
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
}

/// The connection's task. Rare, large steps (handling a message, errors, flushing) are
/// boxed so that the state an idle connection keeps stays small.
pub async fn run(mut socket: WebSocket, state: Arc<AppState>, _slot: IpSlot) {
    let metrics = state.metrics.clone();
    metrics.connections.inc();
    let cfg = &state.cfg;
    let interval = cfg.heartbeat_interval;
    let mut bucket = TokenBucket::new(cfg.rate_limit, cfg.rate_burst, Instant::now());
    // The first ping comes soon after joining: its pong acknowledges `joined` and the
    // first messages, so an idle peer's replay buffer is emptied early, not after a full
    // interval.
    let first = interval.min(std::time::Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut last_written = 0u64;
    let mut conn = Conn {
        state: state.clone(),
        me: None,
        notify: Arc::new(Notify::new()),
    };
    let notify = conn.notify.clone();
    let end = loop {
        let ev = tokio::select! {
            m = socket.recv() => Event::In(m),
            _ = notify.notified() => Event::Wake,
            _ = heartbeat.tick() => Event::Heartbeat,
        };
        match ev {
            Event::In(None) | Event::In(Some(Err(_))) => break End::Dropped,
            Event::In(Some(Ok(msg))) => {
                last_seen = Instant::now();
                match msg {
                    Message::Text(t) => {
                        if t.len() > cfg.max_message_bytes {
                            let e = ProtocolError::new(
                                ErrorCode::TooLarge,
                                format!("messages are limited to {} bytes", cfg.max_message_bytes),
                            );
                            Box::pin(conn.error(&mut socket, e)).await;
                            // Flush what the error queued, then close with 1009 (message too big).
                            if Box::pin(flush(&state, &conn, &mut socket, &mut last_written)).await
                            {
                                Box::pin(close(&mut socket, 1009, "message too large")).await;
                            }
                            break End::Dropped;
                        }
                        if !bucket.take(Instant::now()) {
                            let e = ProtocolError::new(
                                ErrorCode::RateLimited,
                                "too many messages; slow down",
                            );
                            if !Box::pin(conn.error(&mut socket, e)).await {
                                break End::Dropped;
                            }
                            continue;
                        }
                        // Boxed: the handler's future is large and rarely alive, so it
                        // is not kept inline in every idle connection's state.
                        if !Box::pin(conn.handle(&mut socket, t.as_str())).await {
                            break End::Dropped;
                        }
                    }
                    Message::Binary(_) => {
                        let e = ProtocolError::new(
                            ErrorCode::BadMessage,
                            "binary frames are not part of protocol v1",
                        );
                        if !Box::pin(conn.error(&mut socket, e)).await {
                            break End::Dropped;
                        }
                    }
                    Message::Pong(p) => {
                        if let (Some(a), Ok(b)) = (&conn.me, <[u8; 8]>::try_from(&p[..])) {
                            state.bus.ack(&a.id, a.conn, u64::from_be_bytes(b)).await;
                        }
                    }
                    Message::Ping(_) => {}
                    Message::Close(_) => break End::Closed,
                }
            }
            Event::Wake => {
                if !Box::pin(flush(&state, &conn, &mut socket, &mut last_written)).await {
                    break End::Dropped;
                }
            }
            Event::Heartbeat => {
                if last_seen.elapsed() > 2 * interval {
                    metrics.heartbeat_timeouts.inc();
                    debug!("heartbeat timeout");
                    break End::Dropped;
                }
                // The payload names the last seq written: its pong acknowledges it.
                if socket
                    .send(Message::Ping(last_written.to_be_bytes().to_vec().into()))
                    .await
                    .is_err()
                {
                    break End::Dropped;
                }
            }
        }
    };
    if let Some(a) = conn.me.take() {
        match end {
            End::Closed => state.bus.leave(&a.id, LeaveReason::Left).await,
            End::Dropped => state.bus.detach(&a.id, a.conn).await,
        }
    }
    metrics.connections.dec();
}
