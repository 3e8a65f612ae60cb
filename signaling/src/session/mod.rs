//! One WebSocket connection: reads frames and turns them into bus calls. Messages *to*
//! this connection's peer are written into its socket by the bus directly (see
//! [`socket`]); this task only writes what the kernel could not take at once,
//! and its own pings, pongs and close frames. It holds per-connection state only (rate
//! bucket, heartbeat, an unfinished frame, which peer it carries).

pub mod socket;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::auth::check_token;
use crate::http::AppState;
use crate::ice::ice_servers_json;
use crate::limits::TokenBucket;
use crate::protocol::{
    valid_room, ClientMessage, ErrorCode, LeaveReason, ProtocolError, ServerMessage, MAX_META_BYTES,
};
use crate::room::{AckBy, Attached, Detach, OutboxRef, Pushed, Signal};
use crate::ws::{CloseCode, Reader, Violation, WsEvent};
use socket::{Stream, WsSocket};

/// Bytes read per wake-up (a per-thread buffer, so it costs idle connections nothing).
const SCRATCH_BYTES: usize = 256 * 1024;
/// Reads up to this size are handled from a copy, so the scratch is free while they are.
const COPY_OUT_BYTES: usize = 16 * 1024;
/// How long a closing connection waits for its last bytes to drain, and then for the
/// client's FIN, so that the client reads our close frame rather than a reset.
const LINGER: Duration = Duration::from_secs(5);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The thread's read buffer; a task that awaits while holding it and moves threads just
/// makes the next reader on this thread allocate a new one.
fn take_scratch() -> Vec<u8> {
    let mut b = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if b.len() < SCRATCH_BYTES {
        b = vec![0; SCRATCH_BYTES];
    }
    b
}

fn put_scratch(b: Vec<u8>) {
    SCRATCH.with(|s| *s.borrow_mut() = b);
}

/// The connection's clock: tokio's, so that the session tests can run it paused (the
/// rate bucket and heartbeat then follow virtual time).
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What a waiting connection woke up for (see the loop in [`run`]).
enum Wait {
    Shutdown,
    Heartbeat,
    Woken,
    /// Pending output was written (`true`), or the socket broke.
    Flushed(bool),
    /// The socket has something to read (`true`), or failed.
    Readable(bool),
}

/// How a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client sent a close frame: it left.
    Closed(Option<CloseCode>),
    /// The socket broke, went silent, or broke the protocol: keep the peer for the grace.
    Dropped,
    /// We close it with this code (too large, bad frames); the peer is kept for the grace.
    Close(CloseCode, &'static str),
    /// The bus detached the peer from this connection.
    Detached(Detach),
    ShuttingDown,
}

struct Conn<S: Stream> {
    state: Arc<AppState>,
    sock: Arc<WsSocket<S>>,
    me: Option<Attached>,
    /// The client's address (its per-IP slot travels in the socket).
    ip: IpAddr,
    /// The `Host` the client reached us with over TLS (for its `turns:` URLs).
    tls_host: Option<String>,
    bucket: TokenBucket,
    last_seen: Instant,
    /// The WebSocket read side (a fragmented message in progress, if any).
    reader: Reader,
}

/// Signals read in one wake-up, borrowed from the read buffer and forwarded together
/// (see [`Conn::forward`]).
type Batch<'b> = Vec<Signal<'b>>;

impl<S: Stream> Conn<S> {
    /// Forwards the signals read so far, in one bus call: each recipient's socket is then
    /// written once for all of them.
    async fn forward(&mut self, batch: &mut Batch<'_>) {
        if batch.is_empty() {
            return;
        }
        let Some(a) = &self.me else {
            batch.clear();
            return;
        };
        let t0 = Instant::now();
        let errors = self.state.bus.signal(&a.id, batch).await;
        self.state
            .metrics
            .forward_latency
            .observe(t0.elapsed().as_secs_f64());
        batch.clear();
        for e in errors {
            self.report(e).await;
        }
    }

    /// An error for the client, after the signals before it.
    async fn error(&mut self, err: ProtocolError, batch: &mut Batch<'_>) -> bool {
        self.forward(batch).await;
        self.report(err).await
    }

    /// An error goes through the peer's sequenced stream once joined; before that it is
    /// written directly with `seq` 0.
    async fn report(&mut self, err: ProtocolError) -> bool {
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
                    message: err.message.as_str().into(),
                    seq: 0,
                }
                .to_json();
                // Over the output bound the socket is closing (1008): still usable.
                self.sock.send_unsequenced(&json) != Pushed::Gone
            }
        }
    }

    fn outbox(&self) -> OutboxRef {
        self.sock.clone()
    }

    /// One client message. False: the connection is unusable.
    async fn handle<'b>(&mut self, text: &'b str, batch: &mut Batch<'b>) -> bool {
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(e, batch).await,
        };
        self.state.metrics.message_in(msg.kind());
        let msg = match msg {
            ClientMessage::Signal { to, data } if self.me.is_some() => {
                batch.push((to, data));
                return true;
            }
            other => other,
        };
        // Anything else comes after the signals before it; from here on `report`.
        self.forward(batch).await;
        let st = self.state.clone();
        let cfg = st.cfg();
        let bad = |m: &str| ProtocolError::new(ErrorCode::BadMessage, m);
        match msg {
            ClientMessage::Join { room, token, meta } => {
                if self.me.is_some() {
                    return self.report(bad("already joined; leave first")).await;
                }
                if !st.per_ip.allow_join(self.ip, Instant::now()) {
                    st.metrics.rate_limited("join");
                    return self
                        .report(ProtocolError::new(
                            ErrorCode::RateLimited,
                            "too many joins from your address; slow down",
                        ))
                        .await;
                }
                if !valid_room(&room) {
                    return self
                        .report(bad("room must be 1-64 characters of A-Z a-z 0-9 _ -"))
                        .await;
                }
                if meta
                    .as_ref()
                    .is_some_and(|m| m.get().len() > MAX_META_BYTES || !m.get().starts_with('{'))
                {
                    return self
                        .report(bad("meta must be a JSON object of at most 1 KiB"))
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
                        Err(e) => return self.report(e).await,
                    }
                }
                let ice = ice_servers_json(
                    &cfg,
                    &label,
                    icebreaker_relay::server::unix_now(),
                    self.tls_host.as_deref(),
                );
                match st
                    .bus
                    .join(&room, meta.map(|m| m.to_owned()), &ice, self.outbox())
                    .await
                {
                    Ok(a) => {
                        debug!(id = %a.id, %room, "joined");
                        self.me = Some(a);
                        true
                    }
                    Err(e) => self.report(e).await,
                }
            }
            ClientMessage::Signal { .. } => {
                self.report(ProtocolError::new(
                    ErrorCode::NotJoined,
                    "join a room first",
                ))
                .await
            }
            ClientMessage::Leave => match self.me.take() {
                Some(a) => {
                    st.bus.leave(&a.id, LeaveReason::Left).await;
                    true
                }
                None => {
                    self.report(ProtocolError::new(ErrorCode::NotJoined, "not in a room"))
                        .await
                }
            },
            ClientMessage::Ping { last_seq } => match &self.me {
                Some(a) => {
                    if let Some(seq) = last_seq {
                        st.bus.ack(&a.id, a.conn, seq, AckBy::Client).await;
                    }
                    st.bus.pong(&a.id).await;
                    true
                }
                None => {
                    self.sock
                        .send_unsequenced(&ServerMessage::Pong { seq: 0 }.to_json())
                        != Pushed::Gone
                }
            },
            ClientMessage::Resume {
                id,
                token,
                last_seq,
            } => {
                if self.me.is_some() {
                    return self.report(bad("already joined")).await;
                }
                match st.bus.resume(&id, &token, last_seq, self.outbox()).await {
                    Ok(a) => {
                        st.metrics
                            .resumes
                            .get_or_create(&crate::metrics::ResultLabel { result: "ok" })
                            .inc();
                        debug!(id = %a.id, last_seq, "resumed");
                        // The bus wrote `resumed` and the missed messages already.
                        self.me = Some(a);
                        true
                    }
                    Err(e) => {
                        st.metrics
                            .resumes
                            .get_or_create(&crate::metrics::ResultLabel { result: "failed" })
                            .inc();
                        self.report(e).await
                    }
                }
            }
        }
    }

    /// A complete data message: text, or `None` for binary.
    async fn message<'b>(
        &mut self,
        text: Option<&'b str>,
        now: Instant,
        batch: &mut Batch<'b>,
    ) -> Option<End> {
        // Every data frame counts against the rate, binary ones too (they are refused,
        // but the refusal is a reply that costs output).
        if !self.bucket.take(now) {
            self.state
                .metrics
                .rate_limited(if text.is_none() { "binary" } else { "text" });
            let e = ProtocolError::new(ErrorCode::RateLimited, "too many messages; slow down");
            return (!self.error(e, batch).await).then_some(End::Dropped);
        }
        let Some(text) = text else {
            let e = ProtocolError::new(
                ErrorCode::BadMessage,
                "binary frames are not part of protocol v1",
            );
            return (!self.error(e, batch).await).then_some(End::Dropped);
        };
        (!self.handle(text, batch).await).then_some(End::Dropped)
    }

    async fn too_large(&mut self, batch: &mut Batch<'_>) -> End {
        let max = self.state.cfg().max_message_bytes;
        let e = ProtocolError::new(
            ErrorCode::TooLarge,
            format!("messages are limited to {max} bytes"),
        );
        self.error(e, batch).await;
        End::Close(CloseCode::TooBig, "message too large")
    }

    async fn event<'b>(
        &mut self,
        event: WsEvent<'b>,
        now: Instant,
        batch: &mut Batch<'b>,
    ) -> Option<End> {
        match event {
            WsEvent::Text(Cow::Borrowed(text)) => self.message(Some(text), now, batch).await,
            WsEvent::Text(Cow::Owned(text)) => {
                // An assembled message lives only here: what came before goes first, and a
                // signal in it is forwarded on its own.
                self.forward(batch).await;
                let mut own = Batch::new();
                let end = self.message(Some(&text), now, &mut own).await;
                self.forward(&mut own).await;
                end
            }
            WsEvent::Binary(_) => self.message(None, now, batch).await,
            // Pings count against the rate too; one over it gets no pong (RFC 6455 §5.5.3
            // lets an endpoint answer only the latest of several pings).
            WsEvent::Ping(_) if !self.bucket.take(now) => {
                self.state.metrics.rate_limited("ping");
                None
            }
            WsEvent::Ping(payload) => {
                (self.sock.pong(payload) == Pushed::Gone).then_some(End::Dropped)
            }
            // Unsolicited pongs cost a bus call each: rate-limited like the rest.
            WsEvent::Pong(_) if !self.bucket.take(now) => {
                self.state.metrics.rate_limited("pong");
                None
            }
            WsEvent::Pong(payload) => {
                if let (Some(a), Ok(b)) = (&self.me, <[u8; 8]>::try_from(payload)) {
                    self.state
                        .bus
                        .ack(&a.id, a.conn, u64::from_be_bytes(b), AckBy::Transport)
                        .await;
                }
                None
            }
            WsEvent::Close(code) => Some(End::Closed(code)),
        }
    }

    /// Reads what the socket has and handles every complete frame in it; an unfinished
    /// frame is kept in `leftover` (the only read buffer a connection owns).
    async fn readable(&mut self, leftover: &mut Vec<u8>) -> Option<End> {
        let mut buf = take_scratch();
        let mut filled = leftover.len();
        buf[..filled].copy_from_slice(leftover);
        let read = self.sock.try_read(&mut buf[filled..]);
        match read {
            Ok(None) => {
                put_scratch(buf);
                None
            }
            Ok(Some(0)) | Err(_) => {
                put_scratch(buf);
                Some(End::Dropped)
            }
            Ok(Some(n)) => {
                filled += n;
                if filled <= COPY_OUT_BYTES {
                    // Handling the frames may wait (a cluster bus awaits Redis): the
                    // scratch goes back first, or every reader that runs meanwhile on
                    // this thread would zero a fresh 256 KiB (a third of a cluster
                    // node's CPU in perf). What was read is small; a copy is cheap.
                    let mut own = buf[..filled].to_vec();
                    put_scratch(buf);
                    self.frames(&mut own, leftover).await
                } else {
                    let end = self.frames(&mut buf[..filled], leftover).await;
                    put_scratch(buf);
                    end
                }
            }
        }
    }

    async fn frames(&mut self, buf: &mut [u8], leftover: &mut Vec<u8>) -> Option<End> {
        let now = clock();
        self.last_seen = now;
        let mut batch = Batch::new();
        // The reader is moved out while its events borrow `buf` and `self` handles them.
        let mut reader = std::mem::replace(&mut self.reader, Reader::new(0));
        let mut events = reader.events(buf);
        let end = loop {
            match events.next() {
                None => break None,
                Some(Ok(ev)) => {
                    if let Some(end) = self.event(ev, now, &mut batch).await {
                        break Some(end);
                    }
                }
                Some(Err(Violation::TooLarge(_))) => break Some(self.too_large(&mut batch).await),
                Some(Err(v)) => {
                    debug!(error = %v, "bad frame");
                    break Some(End::Close(v.close_code(), v.reason()));
                }
            }
        };
        self.forward(&mut batch).await;
        let rest = events.rest();
        if end.is_none() {
            leftover.clear();
            if !rest.is_empty() {
                leftover.extend_from_slice(rest);
            } else if leftover.capacity() > 0 {
                *leftover = Vec::new();
            }
        }
        self.reader = reader;
        end
    }
}

/// The connection's task. `early`: bytes the client sent right behind its handshake;
/// `tls_host`: the `Host` header of a connection over TLS.
pub async fn run<S: Stream>(
    sock: Arc<WsSocket<S>>,
    early: bytes::Bytes,
    state: Arc<AppState>,
    ip: IpAddr,
    tls_host: Option<String>,
) {
    // Borrowed, not cloned: this future lives as long as the connection (a clone of the
    // metrics handles is 280 bytes per connection).
    let metrics = &state.metrics;
    metrics.connections.inc();
    let cfg = state.cfg();
    let interval = cfg.heartbeat_interval;
    // The first ping comes soon after joining: its pong acknowledges `joined` and the
    // first messages, so an idle peer's replay buffer is emptied early, not after a full
    // interval.
    let first = interval.min(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = Conn {
        state: state.clone(),
        sock: sock.clone(),
        me: None,
        ip,
        tls_host,
        bucket: TokenBucket::new(cfg.rate_limit, cfg.rate_burst, clock()),
        last_seen: clock(),
        reader: Reader::new(cfg.max_message_bytes),
    };
    let mut leftover = Vec::new();
    let mut end = None;
    // Copied out and dropped: `early` may share hyper's whole read buffer.
    let mut buf = early.to_vec();
    drop(early);
    if !buf.is_empty() {
        end = Box::pin(conn.frames(&mut buf, &mut leftover)).await;
    }
    drop(buf);
    let end = match end {
        Some(e) => e,
        None => {
            // One hand-written poll over everything a connection waits for, rather than a
            // `select!` of futures: those (readiness waiters, a flush, two `Notified`s)
            // were 520 bytes of every idle connection's task; polls keep no state.
            let mut shutdown = std::pin::pin!(state.shutdown.cancelled());
            loop {
                let (pending, closing, broken) = sock.status();
                if broken {
                    break End::Dropped;
                }
                if let Some(why) = closing {
                    break End::Detached(why);
                }
                let event = std::future::poll_fn(|cx| {
                    // Ordered so that reads, the only source without a natural limit,
                    // come last and cannot starve the rest.
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::Shutdown);
                    }
                    if heartbeat.poll_tick(cx).is_ready() {
                        return Poll::Ready(Wait::Heartbeat);
                    }
                    if sock.poll_woken(cx).is_ready() {
                        return Poll::Ready(Wait::Woken);
                    }
                    if pending {
                        if let Poll::Ready(r) = sock.poll_flush(cx) {
                            return Poll::Ready(Wait::Flushed(r.is_ok()));
                        }
                    }
                    sock.poll_readable(cx).map(|r| Wait::Readable(r.is_ok()))
                })
                .await;
                match event {
                    Wait::Shutdown => break End::ShuttingDown,
                    Wait::Readable(false) | Wait::Flushed(false) => break End::Dropped,
                    Wait::Readable(true) => {
                        // Boxed: handling messages is a large future, alive only briefly.
                        if let Some(e) = Box::pin(conn.readable(&mut leftover)).await {
                            break e;
                        }
                    }
                    Wait::Flushed(true) | Wait::Woken => {}
                    Wait::Heartbeat => {
                        if clock().saturating_duration_since(conn.last_seen) > 2 * interval {
                            metrics.heartbeat_timeouts.inc();
                            debug!("heartbeat timeout");
                            break End::Dropped;
                        }
                        sock.trim();
                        // The payload names the last seq written: its pong acknowledges it.
                        if sock.ping(false) == Pushed::Gone {
                            break End::Dropped;
                        }
                    }
                }
            }
        }
    };
    debug!(?end, "connection ends");
    let me = conn.me.take();
    match (&end, me) {
        (End::Closed(_), Some(a)) => state.bus.leave(&a.id, LeaveReason::Left).await,
        // Also when the bus detached it already (then this one is a no-op): a socket cut
        // off for its control replies has not told the bus yet.
        (_, Some(a)) => state.bus.detach(&a.id, a.conn).await,
        (_, None) => {}
    }
    if end == End::Detached(Detach::TooSlow) {
        metrics.slow_consumers.inc();
    }
    drop(conn);
    Box::pin(close(&sock, end)).await;
    metrics.connections.dec();
}

/// Writes the close frame (after what is pending), then shuts the socket down gently:
/// FIN, and reads until the client's FIN, so unread input does not turn into a reset that
/// would destroy the close frame before the client reads it.
async fn close<S: Stream>(sock: &WsSocket<S>, end: End) {
    let (code, reason) = match end {
        // Broken or silent (docs/protocol.md: dropped without a close frame); the peer
        // resumes on a new socket.
        End::Dropped => {
            sock.shutdown_write();
            return;
        }
        // Echo the client's code (RFC 6455 §5.5.1); codes it may not send become 1000.
        End::Closed(c) => (CloseCode::reply_to(c), ""),
        End::Close(c, r) => (c, r),
        End::Detached(Detach::TooSlow) => (CloseCode::Policy, "detached: too slow to receive"),
        End::Detached(Detach::Replaced) => (CloseCode::Policy, "detached: resumed elsewhere"),
        End::ShuttingDown => (CloseCode::GoingAway, "server shutting down"),
    };
    sock.close(code, reason);
    let _ = tokio::time::timeout(LINGER, sock.flush()).await;
    sock.shutdown_write();
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut budget = 1 << 20;
        while budget > 0 {
            if sock.readable().await.is_err() {
                return;
            }
            match sock.try_read(&mut buf) {
                Ok(Some(0)) | Err(_) => return,
                Ok(Some(n)) => budget -= n.min(budget),
                Ok(None) => {}
            }
        }
    })
    .await;
}
