//! The Redis bus: several `icebreaker` nodes behind a load balancer share rooms. Redis
//! holds room membership, each peer's node, its seq counter and its recent outbox (a
//! list), so a peer can resume on any node; one Lua script (`cluster.lua`) does every
//! step that must be atomic across nodes (room capacity, seq + outbox + publish, resume,
//! exactly-once `peer-left`). Each node subscribes to its own channel; what pub/sub loses
//! (it is at most once) the node fetches from the outbox list ([`local`] decides when).
//! docs/scaling.md has the data model and the failure cases.
//!
//! Why redis-rs (`redis`): it is released every few weeks, its `ConnectionManager`
//! reconnects with backoff and pipelines concurrent calls over one connection, and
//! `Script` runs EVALSHA and reloads the script after a Redis restart; `fred`, the other
//! async client, has had no release since early 2025.

pub mod local;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use serde_json::value::RawValue;
use tracing::{info, warn};

use self::local::{Local, Received, UNKNOWN};
use super::Bus;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, LeaveReason, PeerInfo, ProtocolError, ServerMessage};
use crate::room::{random_id, AckBy, Attached, Frame, HubConfig, OutboxRef, PeerId, Signal};

/// How often a node refreshes its liveness key, and how long the key lives: a node that
/// stops refreshing is dead for everyone within `ALIVE_TTL`.
const ALIVE_EVERY: Duration = Duration::from_secs(1);
const ALIVE_TTL: Duration = Duration::from_secs(5);
/// Peers of a dead node removed per script run (keeps each run short for Redis).
const REAP_BATCH: usize = 500;

/// The Redis [`Bus`] of one cluster node.
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<str>,
    cfg: HubConfig,
    metrics: Metrics,
    local: Mutex<Local>,
    conn: ConnectionManager,
    client: redis::Client,
    script: Script,
    /// Commands reach Redis (set by the liveness loop and by failed calls).
    up: AtomicBool,
    /// Redis is back but this node is still writing its peers back: not yet whole, so
    /// `/healthz` keeps saying degraded (a load balancer sends no newcomers meanwhile).
    reregistering: AtomicBool,
    /// The last Redis error and when: a refusal Redis itself answered (OOM, READONLY,
    /// BUSY: reachable, but cross-node signals do not go through) keeps `/healthz`
    /// degraded for a while, and `/healthz` names it.
    server_error: Mutex<Option<(Instant, String)>>,
    /// Peers that left while Redis was away; Redis hears of them when it is back.
    gone_while_down: Mutex<Vec<(PeerId, LeaveReason)>>,
    last_reap: AtomicU64,
    started: Instant,
    /// Signals waiting for the next `deliver` run (see [`Inner::committer`]); bounded
    /// because every sender waits for its own (one batch per connection at a time, each
    /// within the connection's frame limit).
    commit: Mutex<Vec<Pending>>,
    commit_wake: tokio::sync::Notify,
}

/// One sender's batch waiting for a `deliver` run.
struct Pending {
    room: Vec<u8>,
    from: Vec<u8>,
    items: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
    tx: tokio::sync::oneshot::Sender<Option<Vec<Value>>>,
}

/// Most signals, and bytes, one `deliver` run carries: keeps each script run short
/// (Redis does nothing else meanwhile).
const COMMIT_ITEMS: usize = 256;
const COMMIT_BYTES: usize = 1 << 20;

/// What a peer is sent about its own requests (numbered like everything it receives).
enum ToSelf<'a> {
    Pong,
    Error(&'a ProtocolError),
}

impl ToSelf<'_> {
    fn message(&self, seq: u64) -> ServerMessage<'_> {
        match self {
            ToSelf::Pong => ServerMessage::Pong { seq },
            ToSelf::Error(e) => ServerMessage::Error {
                code: e.code,
                message: e.message.as_str().into(),
                seq,
            },
        }
    }
}

/// One record of a channel message (see `cluster.lua`).
struct Record<'a> {
    id: &'a str,
    seq: u64,
    t: u64,
    json: Bytes,
}

/// The records of a channel message, `P SEQ T LEN JSON` back to back; stops at the first
/// malformed one.
fn records(payload: &Bytes) -> impl Iterator<Item = Record<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = payload.get(at..)?;
        let mut fields = [0usize; 4];
        let mut pos = 0;
        for f in &mut fields {
            let sp = rest.get(pos..)?.iter().position(|&b| b == b' ')?;
            *f = pos + sp;
            pos += sp + 1;
        }
        let num = |a: usize, b: usize| -> Option<u64> {
            std::str::from_utf8(&rest[a..b]).ok()?.parse().ok()
        };
        let id = std::str::from_utf8(&rest[..fields[0]]).ok()?;
        let seq = num(fields[0] + 1, fields[1])?;
        let t = num(fields[1] + 1, fields[2])?;
        let len = num(fields[2] + 1, fields[3])? as usize;
        let start = at + fields[3] + 1;
        let end = start.checked_add(len).filter(|&e| e <= payload.len())?;
        at = end;
        Some(Record {
            id,
            seq,
            t,
            json: payload.slice(start..end),
        })
    })
}

/// The current time in µs since the epoch (the sender's stamp for forward latency).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unavailable,
        "this server lost its cluster store (Redis) and cannot do that now; try again in a few seconds",
    )
}

impl RedisBus {
    /// Connects to Redis at `url` as node `node` (unique among running nodes) and starts
    /// the liveness and subscriber tasks on the current runtime.
    pub async fn connect(
        url: &str,
        node: &str,
        cfg: HubConfig,
        metrics: Metrics,
    ) -> Result<Self, redis::RedisError> {
        // TCP_NODELAY: redis-rs leaves Nagle on, which holds a small command (a liveness
        // refresh, a fetch) behind an unacknowledged one on the multiplexed connection.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), mcfg).await?;
        let inner = Arc::new(Inner {
            node: node.into(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            local: Mutex::new(Local::new(cfg.clone(), metrics.clone())),
            conn,
            client,
            script: Script::new(include_str!("cluster.lua")),
            up: AtomicBool::new(false),
            reregistering: AtomicBool::new(false),
            server_error: Mutex::new(None),
            gone_while_down: Mutex::new(Vec::new()),
            last_reap: AtomicU64::new(0),
            started: Instant::now(),
            commit: Mutex::new(Vec::new()),
            commit_wake: tokio::sync::Notify::new(),
        });
        inner.alive().await?;
        // A node restarted under the same id left peers behind that nobody can resume
        // here (their state died with the process): they leave now, not never.
        let mut c = inner.conn.clone();
        let stale: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("ib:node:{node}:peers"))
            .query_async(&mut c)
            .await?;
        for p in &stale {
            let n = node.as_bytes();
            inner
                .eval("leave", &[p.as_bytes(), b"timeout", n, b""])
                .await?;
        }
        if !stale.is_empty() {
            info!(
                node,
                peers = stale.len(),
                "peers of this node's previous run removed"
            );
        }
        inner.up.store(true, Ordering::Relaxed);
        inner.metrics.redis_up.set(1);
        tokio::spawn(Inner::liveness(inner.clone()));
        tokio::spawn(Inner::subscriber(inner.clone()));
        tokio::spawn(Inner::committer(inner.clone()));
        info!(node, "cluster node registered in Redis");
        Ok(RedisBus { inner })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }
}

impl Inner {
    /// Runs `f` on the local core, then flushes the connections it queued output on.
    fn with_local<R>(&self, f: impl FnOnce(&mut Local) -> R) -> R {
        super::locked(&self.local, f)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts a failed Redis call and keeps it as the last error `/healthz` names.
    fn note_error(&self, e: &redis::RedisError) {
        self.metrics.redis_publish_errors.inc();
        *self.server_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), e.to_string()));
    }

    fn went_down(&self, e: &redis::RedisError) {
        self.note_error(e);
        if self.up.swap(false, Ordering::Relaxed) {
            warn!(error = %e, "lost Redis: rooms keep working on this node only");
            self.metrics.redis_up.set(0);
        }
    }

    /// One run of the cluster script: `op`, the common arguments, then `args`.
    async fn eval(&self, op: &str, args: &[&[u8]]) -> redis::RedisResult<Value> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(op)
            .arg(now_us())
            .arg(self.cfg.replay_limit.max(1))
            .arg(self.cfg.replay_bytes.max(1))
            .arg((self.cfg.resume_grace.as_millis() as u64).max(1000) * 2 + 60_000);
        for a in args {
            inv.arg(*a);
        }
        let mut c = self.conn.clone();
        let r = inv.invoke_async(&mut c).await;
        if let Err(e) = &r {
            if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                self.went_down(e);
            } else {
                self.note_error(e);
                warn!(error = %e, op, "cluster script failed");
            }
        }
        r
    }

    async fn alive(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(format!("ib:node:{}:alive", self.node))
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg("ib:nodes")
            .arg(&*self.node)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Refreshes this node's liveness key; when Redis comes back, re-registers.
    async fn liveness(self: Arc<Self>) {
        let mut t = tokio::time::interval(ALIVE_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            match self.alive().await {
                Ok(()) => {
                    if !self.up.load(Ordering::Relaxed) {
                        info!("Redis is back: re-registering this node's peers");
                        self.reregistering.store(true, Ordering::Relaxed);
                        self.up.store(true, Ordering::Relaxed);
                        self.metrics.redis_up.set(1);
                        self.metrics.redis_reconnects.inc();
                        self.clone().reregister().await;
                        self.reregistering.store(false, Ordering::Relaxed);
                        if self.is_up() {
                            info!("this node's peers are registered in Redis again");
                        }
                    }
                }
                Err(e) => self.went_down(&e),
            }
        }
    }

    /// After Redis was away (it may have restarted empty): write this node's peers back,
    /// tell it who left meanwhile, and catch up on what pub/sub may have lost.
    async fn reregister(self: Arc<Self>) {
        let regs = self.with_local(|l| l.registrations());
        for r in regs {
            let seq = r.seq.to_string();
            let mut args: Vec<Vec<u8>> = vec![
                r.id.as_bytes().to_vec(),
                r.room.as_bytes().to_vec(),
                self.node.as_bytes().to_vec(),
                r.token.as_bytes().to_vec(),
                r.meta.into_bytes(),
                seq.into_bytes(),
            ];
            for (s, j) in &r.frames {
                args.push(s.to_string().into_bytes());
                args.push(j.to_vec());
            }
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            match self.eval("register", &refs).await {
                Ok(Value::Int(-1)) => {
                    self.with_local(|l| l.take_over(&r.id));
                }
                Ok(Value::Int(had)) if had as u64 > r.seq => {
                    self.clone()
                        .fetch(r.id.clone(), r.seq + 1, Some(had as u64));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let gone = std::mem::take(
            &mut *self
                .gone_while_down
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (id, reason) in gone {
            let node = self.node.as_bytes();
            let _ = self
                .eval(
                    "leave",
                    &[id.as_bytes(), reason.as_str().as_bytes(), node, node],
                )
                .await;
        }
    }

    /// Receives this node's channel; resubscribes (with backoff) when the connection goes.
    async fn subscriber(self: Arc<Self>) {
        let channel = format!("ib:node:{}", self.node);
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let ps = async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(Duration::from_secs(2), ps).await {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    if !first {
                        self.metrics.redis_reconnects.inc();
                    }
                    // Whatever was published while nobody listened is in the outboxes.
                    let catch = self.with_local(|l| l.catch_up());
                    for (id, from) in catch {
                        self.clone().fetch(id, from, None);
                    }
                    first = false;
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        self.on_message(msg.get_payload_bytes());
                    }
                    warn!("Redis subscription lost; resubscribing");
                }
                Ok(Err(e)) => warn!(error = %e, "cannot subscribe to Redis; retrying"),
                Err(_) => warn!("subscribing to Redis timed out; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One message on this node's channel: records `P SEQ T LEN JSON` back to back (a
    /// message for P), or `P 0 0 8 takeover`. Every record is handed to the core under
    /// one lock; a malformed record ends the message (nothing after it can be framed).
    fn on_message(self: &Arc<Self>, payload: &[u8]) {
        let payload = Bytes::copy_from_slice(payload);
        let now = Instant::now();
        let sent_now = now_us();
        let mut fetches = Vec::new();
        let mut latencies = Vec::new();
        self.with_local(|l| {
            for r in records(&payload) {
                if r.seq == 0 {
                    l.take_over(r.id);
                    continue;
                }
                match l.receive(now, r.id, r.seq, r.json) {
                    Received::Delivered => {
                        latencies.push(sent_now.saturating_sub(r.t) as f64 / 1e6);
                    }
                    Received::Fetch { from, to } => fetches.push((PeerId::from(r.id), from, to)),
                    _ => {}
                }
            }
        });
        for lat in latencies {
            self.metrics.cross_node_latency.observe(lat);
        }
        for (id, from, to) in fetches {
            self.clone().fetch(id, from, Some(to));
        }
    }

    /// Runs `deliver` for one sender's batch, together with whatever other senders queue
    /// while a run is in flight (one script run and one round trip for all of them: see
    /// [`Inner::committer`]). `None`: Redis did not answer.
    async fn deliver(
        &self,
        room: &str,
        from: &str,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Option<Vec<Value>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let bytes =
            items.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>() + room.len() + from.len();
        {
            let mut q = self.commit.lock().unwrap_or_else(|e| e.into_inner());
            q.push(Pending {
                room: room.as_bytes().to_vec(),
                from: from.as_bytes().to_vec(),
                items,
                bytes,
                tx,
            });
        }
        self.commit_wake.notify_one();
        rx.await.ok().flatten()
    }

    /// The group commit behind [`Inner::deliver`]: takes everything queued (up to
    /// `COMMIT_ITEMS` signals / `COMMIT_BYTES`), runs it as one `deliver`, answers each
    /// sender with its seqs, and goes again while anything is queued. One run at a time
    /// keeps every sender's signals in the order it sent them.
    async fn committer(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.commit.lock().unwrap_or_else(|e| e.into_inner());
                let (mut n, mut b, mut take) = (0, 0, 0);
                for p in q.iter() {
                    if take > 0 && (n + p.items.len() > COMMIT_ITEMS || b + p.bytes > COMMIT_BYTES)
                    {
                        break;
                    }
                    n += p.items.len();
                    b += p.bytes;
                    take += 1;
                }
                q.drain(..take).collect::<Vec<_>>()
            };
            if batch.is_empty() {
                self.commit_wake.notified().await;
                continue;
            }
            let counts: Vec<Vec<u8>> = batch
                .iter()
                .map(|p| p.items.len().to_string().into_bytes())
                .collect();
            let mut args: Vec<&[u8]> = Vec::new();
            for (p, n) in batch.iter().zip(&counts) {
                args.extend_from_slice(&[&p.room, &p.from, n]);
                for (to, body) in &p.items {
                    args.push(to);
                    args.push(body);
                }
            }
            self.metrics
                .redis_batch_signals
                .observe(batch.iter().map(|p| p.items.len()).sum::<usize>() as f64);
            let r = self.eval("deliver", &args).await;
            let mut seqs = match r {
                Ok(Value::Array(v)) => Some(v.into_iter()),
                _ => None,
            };
            for p in batch {
                let mine = seqs
                    .as_mut()
                    .map(|it| it.by_ref().take(p.items.len()).collect());
                let _ = p.tx.send(mine);
            }
        }
    }

    /// Fetches `from..=to` (or everything from `from`) of `id`'s outbox in the background
    /// and hands it to the core, as often as the core asks.
    fn fetch(self: Arc<Self>, id: PeerId, from: u64, to: Option<u64>) {
        tokio::spawn(async move {
            let (mut from, mut to) = (from, to);
            loop {
                let mut c = self.conn.clone();
                // The whole list: it is bounded (the replay limit) and a fetch is rare
                // (a gap in pub/sub, a resubscribe, a takeover).
                let r: redis::RedisResult<Value> = redis::cmd("LRANGE")
                    .arg(format!("ib:peer:{id}:q"))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await;
                let items = match r {
                    Ok(v) => outbox_entries(v)
                        .into_iter()
                        .filter(|(s, _)| *s >= from && to.is_none_or(|t| *s <= t))
                        .collect(),
                    Err(e) => {
                        self.went_down(&e);
                        Vec::new()
                    }
                };
                let now = Instant::now();
                match self.with_local(|l| l.fetched(now, &id, items, to)) {
                    Received::Fetch { from: f, to: t } => {
                        (from, to) = (f, Some(t));
                    }
                    _ => return,
                }
            }
        });
    }

    /// The members of `room` and their metas, from Redis (when it answers).
    async fn members(&self, room: &str) -> Option<Vec<(String, String)>> {
        let mut c = self.conn.clone();
        let r: redis::RedisResult<Vec<(String, String)>> = redis::cmd("HGETALL")
            .arg(format!("ib:room:{room}"))
            .query_async(&mut c)
            .await;
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.went_down(&e);
                None
            }
        }
    }

    /// Removes a local peer: through Redis (everyone hears `peer-left`), or, when Redis
    /// is away, to its roommates on this node and to Redis later.
    async fn remove(&self, id: &str, reason: LeaveReason) {
        let Some((_, mates)) = self.with_local(|l| l.remove(id)) else {
            return;
        };
        let node = self.node.as_bytes();
        if self.is_up()
            && self
                .eval(
                    "leave",
                    &[id.as_bytes(), reason.as_str().as_bytes(), node, b""],
                )
                .await
                .is_ok()
        {
            return;
        }
        let now = Instant::now();
        self.with_local(|l| {
            for m in &mates {
                l.deliver_local(now, m, |seq| ServerMessage::PeerLeft {
                    id: id.into(),
                    reason,
                    seq,
                });
            }
        });
        self.gone_while_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id.into(), reason));
    }

    /// A message for the peer itself (pong, error), numbered by Redis when it answers.
    async fn to_self(&self, id: &str, msg: ToSelf<'_>) {
        if self.is_up() {
            let body = msg.message(0).to_json_unsequenced();
            if self
                .deliver("", "", vec![(id.as_bytes().to_vec(), body)])
                .await
                .is_some()
            {
                return;
            }
        }
        let now = Instant::now();
        self.with_local(|l| l.deliver_local(now, id, |seq| msg.message(seq)));
    }

    /// Dead nodes' peers whose grace has passed are removed (see `reap` in the script).
    async fn reap(&self) {
        let mut c = self.conn.clone();
        let nodes: redis::RedisResult<Vec<String>> = redis::cmd("SMEMBERS")
            .arg("ib:nodes")
            .query_async(&mut c)
            .await;
        let Ok(nodes) = nodes else { return };
        let grace = (self.cfg.resume_grace.as_millis() as u64).to_string();
        let batch = REAP_BATCH.to_string();
        for n in nodes.iter().filter(|n| **n != *self.node) {
            if let Ok(Value::Int(k)) = self
                .eval("reap", &[n.as_bytes(), grace.as_bytes(), batch.as_bytes()])
                .await
            {
                if k > 0 {
                    info!(node = %n, peers = k, "dead node's peers removed after their grace");
                    self.metrics.resume_grace_expired.inc_by(k as u64);
                }
            }
        }
    }
}

/// `(seq, json)` of each entry of an outbox list (`cluster.lua`: seq, json, seq, json, …).
fn outbox_entries(v: Value) -> Vec<Frame> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(seq), Some(json)) = (it.next(), it.next()) {
        let seq = match seq {
            Value::BulkString(b) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        };
        if let (Some(seq), Value::BulkString(json)) = (seq, json) {
            out.push((seq, Bytes::from(json)));
        }
    }
    out
}

/// Peer infos of `pairs` (id, meta) without `me`, borrowing their metas.
fn infos<'a>(
    pairs: &'a [(String, Option<Box<RawValue>>)],
    me: &str,
    polite: bool,
) -> Vec<PeerInfo<'a>> {
    pairs
        .iter()
        .filter(|(id, _)| id != me)
        .map(|(id, meta)| PeerInfo {
            id: id.as_str().into(),
            meta: meta.as_deref(),
            polite,
        })
        .collect()
}

/// `id, meta, id, meta, …` from a script reply (`""` meta: none).
fn parse_pairs(vals: &[Value]) -> Vec<(String, Option<Box<RawValue>>)> {
    vals.chunks_exact(2)
        .filter_map(|c| {
            let s = |v: &Value| match v {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            };
            let id = s(&c[0])?;
            let meta = s(&c[1]).filter(|m| !m.is_empty());
            Some((id, meta.and_then(|m| RawValue::from_string(m).ok())))
        })
        .collect()
}

#[async_trait]
impl Bus for RedisBus {
    async fn join(
        &self,
        room: &str,
        meta: Option<Box<RawValue>>,
        ice_servers: &RawValue,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        let me = &self.inner;
        if !me.is_up() {
            return Err(unavailable());
        }
        let id: PeerId = random_id().into();
        let token = format!("{}{}", random_id(), random_id());
        let attached = me.with_local(|l| l.reserve(id.clone(), 1, outbox));
        let peer_joined = ServerMessage::PeerJoined {
            id: (*id).into(),
            meta: meta.as_deref(),
            polite: true,
            seq: 0,
        }
        .to_json_unsequenced();
        let meta_s = meta.as_ref().map(|m| m.get()).unwrap_or("");
        let cap = me.cfg.room_capacity.to_string();
        let r = me
            .eval(
                "join",
                &[
                    room.as_bytes(),
                    id.as_bytes(),
                    token.as_bytes(),
                    me.node.as_bytes(),
                    meta_s.as_bytes(),
                    cap.as_bytes(),
                    &peer_joined,
                ],
            )
            .await;
        let vals = match r {
            Ok(Value::Array(v)) if matches!(v.first(), Some(Value::BulkString(b)) if b == b"ok") => {
                v
            }
            Ok(_) => {
                me.with_local(|l| l.cancel(&id));
                return Err(ProtocolError::new(
                    ErrorCode::RoomFull,
                    format!("room holds its maximum of {} peers", me.cfg.room_capacity),
                ));
            }
            Err(_) => {
                me.with_local(|l| l.cancel(&id));
                return Err(unavailable());
            }
        };
        let pairs = parse_pairs(&vals[1..]);
        let joined = ServerMessage::Joined {
            id: (*id).into(),
            room: room.into(),
            peers: infos(&pairs, &id, false),
            ice_servers,
            resume_token: token.as_str().into(),
            seq: 1,
        }
        .to_json();
        let now = Instant::now();
        let got = me.with_local(|l| {
            l.activate_joined(
                now,
                &id,
                room.into(),
                token.into(),
                meta,
                Bytes::from(joined),
            )
        });
        if let Some(Received::Fetch { from, to }) = got {
            me.clone().fetch(id, from, Some(to));
        }
        Ok(attached)
    }

    async fn signal(&self, from: &str, batch: &[Signal<'_>]) -> Vec<ProtocolError> {
        let me = &self.inner;
        let unknown = |to: &str| {
            ProtocolError::new(
                ErrorCode::UnknownPeer,
                format!("no peer {to:?} in your room"),
            )
        };
        let Some(room) = me.with_local(|l| l.room_of(from)) else {
            return batch.iter().map(|(to, _)| unknown(to)).collect();
        };
        if me.is_up() {
            let items: Vec<(Vec<u8>, Vec<u8>)> = batch
                .iter()
                .map(|(to, data)| {
                    let body = ServerMessage::Signal {
                        from: from.into(),
                        data,
                        seq: 0,
                    }
                    .to_json_unsequenced();
                    (to.as_bytes().to_vec(), body)
                })
                .collect();
            if let Some(seqs) = me.deliver(&room, from, items).await {
                return batch
                    .iter()
                    .zip(seqs)
                    .filter(|(_, s)| !matches!(s, Value::Int(n) if *n > 0))
                    .map(|((to, _), _)| unknown(to))
                    .collect();
            }
        }
        // Redis is away: only peers on this node can be reached.
        let now = Instant::now();
        me.with_local(|l| {
            let mates = l.roommates(from);
            let mut errors = Vec::new();
            for (to, data) in batch {
                let here = mates.iter().any(|m| **m == **to);
                if !here
                    || !l.deliver_local(now, to, |seq| ServerMessage::Signal {
                        from: from.into(),
                        data,
                        seq,
                    })
                {
                    errors.push(if l.knows(to) || to.as_ref() == from {
                        unknown(to)
                    } else {
                        unavailable()
                    });
                }
            }
            errors
        })
    }

    async fn pong(&self, id: &str) {
        self.inner.to_self(id, ToSelf::Pong).await;
    }

    async fn error(&self, id: &str, err: &ProtocolError) {
        self.inner.to_self(id, ToSelf::Error(err)).await;
    }

    async fn leave(&self, id: &str, reason: LeaveReason) {
        self.inner.remove(id, reason).await;
    }

    async fn detach(&self, id: &str, conn: u64) {
        let now = Instant::now();
        self.inner.with_local(|l| l.detach(now, id, conn));
    }

    async fn ack(&self, id: &str, conn: u64, seq: u64, by: AckBy) {
        let me = &self.inner;
        if let Some(seq) = me.with_local(|l| l.ack(id, conn, seq, by)) {
            if me.is_up() {
                let s = seq.to_string();
                let _ = me
                    .eval("ack", &[id.as_bytes(), me.node.as_bytes(), s.as_bytes()])
                    .await;
            }
        }
    }

    async fn resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        let me = &self.inner;
        if me.with_local(|l| l.knows(id)) {
            // It reconnected to the node that holds it: served from the local buffer.
            let room = match me.with_local(|l| l.check_resume(id, token, last_seq)) {
                Ok(room) => room,
                Err(e) => {
                    if e.message != UNKNOWN {
                        me.remove(id, LeaveReason::Timeout).await;
                    }
                    return Err(e);
                }
            };
            let pairs: Vec<(String, Option<Box<RawValue>>)> = match me.members(&room).await {
                Some(m) => m
                    .into_iter()
                    .map(|(id, meta)| {
                        let meta = Some(meta)
                            .filter(|m| !m.is_empty())
                            .and_then(|m| RawValue::from_string(m).ok());
                        (id, meta)
                    })
                    .collect(),
                None => me.with_local(|l| {
                    l.roommates(id)
                        .iter()
                        .map(|m| (m.to_string(), None))
                        .collect()
                }),
            };
            let resumed = ServerMessage::Resumed {
                id: id.into(),
                peers: infos(&pairs, id, true),
                seq: last_seq,
            }
            .to_json();
            return me
                .with_local(|l| l.resume(id, last_seq, Bytes::from(resumed), outbox))
                .ok_or_else(|| ProtocolError::new(ErrorCode::ResumeFailed, UNKNOWN));
        }
        if !me.is_up() {
            return Err(unavailable());
        }
        // Its node died (or it came through another node): take it over through Redis.
        let pid: PeerId = id.into();
        let attached = me.with_local(|l| l.reserve(pid.clone(), last_seq, outbox));
        let last = last_seq.to_string();
        let r = me
            .eval(
                "resume",
                &[
                    id.as_bytes(),
                    token.as_bytes(),
                    last.as_bytes(),
                    me.node.as_bytes(),
                ],
            )
            .await;
        let fail = |m: &str| ProtocolError::new(ErrorCode::ResumeFailed, m);
        let vals = match r {
            Ok(Value::Array(v)) => v,
            _ => {
                me.with_local(|l| l.cancel(id));
                return Err(unavailable());
            }
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            Some(Value::SimpleString(s)) => Some(s.clone()),
            Some(Value::Int(n)) => Some(n.to_string()),
            _ => None,
        };
        match text(vals.first()).as_deref() {
            Some("ok") => {}
            Some("unservable") => {
                me.with_local(|l| l.cancel(id));
                return Err(fail(&text(vals.get(1)).unwrap_or_default()));
            }
            _ => {
                me.with_local(|l| l.cancel(id));
                return Err(fail(UNKNOWN));
            }
        }
        let room = text(vals.get(2)).unwrap_or_default();
        let pairs = parse_pairs(&vals[3.min(vals.len())..]);
        let own_meta = pairs
            .iter()
            .find(|(p, _)| p == id)
            .and_then(|(_, m)| m.clone());
        let resumed = ServerMessage::Resumed {
            id: id.into(),
            peers: infos(&pairs, id, true),
            seq: last_seq,
        }
        .to_json();
        me.with_local(|l| {
            l.activate_resumed(
                id,
                room.into(),
                token.into(),
                own_meta,
                Bytes::from(resumed),
            )
        });
        me.clone().fetch(pid, last_seq + 1, None);
        Ok(attached)
    }

    async fn tick(&self, now: Instant) {
        let me = &self.inner;
        let expired = me.with_local(|l| l.expired(now));
        for id in expired {
            me.metrics.resume_grace_expired.inc();
            me.remove(&id, LeaveReason::Timeout).await;
        }
        let secs = now.saturating_duration_since(me.started).as_secs();
        if me.is_up() && me.last_reap.swap(secs, Ordering::Relaxed) != secs {
            me.reap().await;
        }
    }

    fn counts(&self) -> (usize, usize) {
        self.inner.with_local(|l| l.counts())
    }

    fn degraded(&self) -> Option<String> {
        let me = &self.inner;
        if !me.is_up() {
            // Name the last error: "connection refused" and "OOM command not allowed" call
            // for different fixes.
            let why = me
                .server_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(_, w)| format!(" ({w})"))
                .unwrap_or_default();
            Some(format!(
                "node {} cannot use Redis{why}: rooms work on this node only",
                me.node
            ))
        } else if me.reregistering.load(Ordering::Relaxed) {
            Some(format!(
                "node {} is registering its peers in Redis again",
                me.node
            ))
        } else {
            // Degraded while Redis refused work in the last few seconds (a load balancer
            // then sends newcomers elsewhere); whole again once calls succeed that long.
            let e = me.server_error.lock().unwrap_or_else(|p| p.into_inner());
            match &*e {
                Some((at, why)) if at.elapsed() < SERVER_ERROR_HOLD => Some(format!(
                    "node {}: Redis refuses work ({why}): signals to other nodes fail",
                    me.node
                )),
                _ => None,
            }
        }
    }
}

/// How long one error answered by Redis keeps `/healthz` degraded.
const SERVER_ERROR_HOLD: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &[u8]) -> Vec<(String, u64, u64, Vec<u8>)> {
        let b = Bytes::copy_from_slice(p);
        records(&b)
            .map(|r| (r.id.to_string(), r.seq, r.t, r.json.to_vec()))
            .collect()
    }

    #[test]
    fn channel_records_back_to_back_with_spaces_in_json() {
        let got = parse(b"abc 7 1000 12 {\"a\": \"b c\"}xyz 0 0 8 takeoverq 8 5 2 {}");
        assert_eq!(
            got,
            vec![
                ("abc".into(), 7, 1000, b"{\"a\": \"b c\"}".to_vec()),
                ("xyz".into(), 0, 0, b"takeover".to_vec()),
                ("q".into(), 8, 5, b"{}".to_vec()),
            ]
        );
    }

    #[test]
    fn a_malformed_record_ends_the_message() {
        // Length past the end, a non-number, a missing field: nothing from there on.
        assert_eq!(parse(b"a 1 2 99 {}").len(), 0);
        assert_eq!(parse(b"a 1 2 2 {}b x 2 2 {}c 3 4 2 {}").len(), 1);
        assert_eq!(parse(b"a 1 2").len(), 0);
        assert_eq!(parse(b"").len(), 0);
        assert_eq!(parse(b"a 1 2 18446744073709551615 {}").len(), 0);
    }

    #[test]
    fn arbitrary_channel_bytes_never_panic_and_stay_in_bounds() {
        // Pieces of real records shuffled with noise; every record parsed must lie inside
        // the payload and carry exactly LEN bytes.
        let pieces: [&[u8]; 8] = [
            b"p",
            b" ",
            b"12",
            b"0",
            b"8 ",
            b"{}",
            b"\xff",
            b"99999999999999999999",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = Vec::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.extend_from_slice(pieces[(x % 8) as usize]);
            }
            let b = Bytes::from(p);
            for r in records(&b) {
                assert!(r.json.len() <= b.len());
            }
        }
    }
}
