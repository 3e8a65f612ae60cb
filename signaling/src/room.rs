//! Rooms, membership, per-peer sequence numbers and resume buffers: a plain state machine.
//! It never touches a socket or a clock of its own; callers pass `now`. A message to a peer
//! is appended, framed, to the queue of the connection that carries it ([`Outbox::push`]),
//! and the hub notes whom it touched; the caller writes those queues
//! ([`crate::bus::locked`], [`Outbox::flush`]) after releasing whatever lock guards the hub,
//! so no socket write ever happens under it.
//!
//! Resume works like this: every message to a peer gets the next `seq` and is kept in
//! the peer's replay buffer until it is acknowledged. A client that says what it has
//! processed (`last_seq` in its `ping`) is trimmed on that alone. For one that never does,
//! a WebSocket pong is the acknowledgement (its payload names the last seq written before
//! the ping; TCP is ordered, so the client's socket had everything up to it), which a live
//! but abandoned socket also sends. A peer whose socket drops stays in its room for the
//! resume grace; `resume` with its token replays exactly what it has not acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, LeaveReason, PeerInfo, ProtocolError, ServerMessage};

/// A peer's id: random URL-safe base64 whose first character names its hub's shard.
pub type PeerId = Arc<str>;
/// One serialized server message (JSON) and its seq.
pub type Frame = (u64, Bytes);

/// Why a connection no longer carries its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// Its output piled up past the limit: the client does not read fast enough.
    TooSlow,
    /// Another connection resumed the peer.
    Replaced,
}

/// What became of a message handed to an [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written, or queued behind earlier output.
    Ok,
    /// Over the connection's output limit: cut it off.
    TooSlow,
    /// The connection is broken or closing.
    Gone,
}

/// How a message reaches a connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// New traffic: refused when too much output already waits (a slow consumer).
    Live,
    /// Replayed on resume: not refused, since the replay buffer is bounded already.
    Replay,
}

/// Where acknowledged messages come from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckBy {
    /// The client says it processed everything up to here (`last_seq` in `ping`).
    Client,
    /// A WebSocket pong: the client's socket received everything up to here.
    Transport,
}

/// The connection that currently carries a peer: a queue of framed output.
pub trait Outbox: Send + Sync {
    /// Appends one sequenced message to the queue. No I/O: the caller flushes later, so a
    /// batch costs one write per connection, and none happens under the hub's lock.
    fn push(&self, seq: u64, json: &Bytes, delivery: Delivery) -> Pushed;
    /// Writes what is queued (called with no lock held).
    fn flush(&self);
    /// Queues a request to acknowledge everything pushed so far (a WebSocket ping naming
    /// the last seq; its pong comes back to [`Hub::ack`]).
    fn request_ack(&self);
    /// The connection no longer carries the peer and should close.
    fn detach(&self, why: Detach);
    /// What the peer keeps alive for as long as it exists, attached or not: its client's
    /// per-IP slot, so a peer kept for its resume grace counts against its IP's limit.
    fn hold(&self) -> Option<Hold> {
        None
    }
}

/// See [`Outbox::hold`].
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// A shared handle to the connection that carries a peer.
pub type OutboxRef = Arc<dyn Outbox>;

/// One signal as a connection read it: recipient and the opaque `data`.
pub type Signal<'a> = (std::borrow::Cow<'a, str>, &'a RawValue);

/// Messages between requests for an acknowledgement (see [`Outbox::request_ack`]).
const ACK_EVERY: u64 = 32;

/// What a [`Hub`] enforces.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Peers per room; a join beyond it gets `room-full`.
    pub room_capacity: usize,
    /// How long a detached peer is kept for a resume.
    pub resume_grace: Duration,
    /// Unacknowledged messages kept per peer, and their bytes; beyond either the oldest
    /// go and a later resume that needs them fails (`resume-failed`) instead of silently
    /// skipping.
    pub replay_limit: usize,
    /// Bytes of unacknowledged messages kept per peer (see `replay_limit`).
    pub replay_bytes: usize,
    /// Which shard of rooms this hub holds (0..64); its peer ids carry it.
    pub shard: usize,
}

/// The shard a peer id was made by (its first base64 character), if it names one.
pub fn shard_of(id: &str) -> Option<usize> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let c = *id.as_bytes().first()?;
    ALPHABET.iter().position(|&a| a == c)
}

/// One answer for an unknown id and a wrong token: a failed resume must not tell a
/// prober which peer ids exist.
pub const UNKNOWN: &str = "no such peer with that token (it left, or its resume grace ran out)";

/// 9 random bytes, URL-safe base64 (peer ids, resume token halves).
pub fn random_id() -> String {
    let b: [u8; 9] = rand::random();
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
}

/// Compares a resume token in constant time (no early exit on the first difference).
pub fn token_matches(expected: &str, got: &str) -> bool {
    expected.len() == got.len()
        && expected
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
}

struct Peer {
    room: Arc<str>,
    meta: Option<Box<RawValue>>,
    resume_token: Box<str>,
    mb: Mailbox,
}

/// A peer's server side of resume, the same in the hub and in the Redis bus's local
/// peers: its seq, what it has not acknowledged (bounded in count and bytes), how it
/// acknowledges, and the connection that carries it.
pub(crate) struct Mailbox {
    /// The last seq handed to the connection (or, before that, the one it starts after).
    pub(crate) seq: u64,
    buffer: VecDeque<Frame>,
    buffer_bytes: usize,
    /// The seq after which the connection was last asked to acknowledge.
    ack_asked: u64,
    /// Highest seq that will never be replayed (dropped unacknowledged, or lost).
    pub(crate) lost_up_to: u64,
    /// The client acknowledges by itself (`last_seq` in `ping`): pongs no longer trim.
    client_acks: bool,
    pub(crate) outbox: Option<OutboxRef>,
    /// Released when the peer goes (see [`Outbox::hold`]).
    _hold: Option<Hold>,
    /// Which connection holds the peer; a stale connection's detach or ack is ignored.
    pub(crate) conn: u64,
    pub(crate) detached_at: Option<Instant>,
}

/// Notes that `o` has queued output (each connection once per round).
pub(crate) fn touch(touched: &mut Vec<OutboxRef>, o: &OutboxRef) {
    if !touched.iter().any(|t| Arc::ptr_eq(t, o)) {
        touched.push(o.clone());
    }
}

impl Mailbox {
    /// Carried by `outbox` as connection `conn`, starting after `seq`.
    pub(crate) fn new(seq: u64, outbox: OutboxRef, conn: u64) -> Self {
        Mailbox {
            seq,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            ack_asked: seq,
            lost_up_to: 0,
            client_acks: false,
            _hold: outbox.hold(),
            outbox: Some(outbox),
            conn,
            detached_at: None,
        }
    }

    /// Keeps `json` (serialized with `seq`, the next one) in the replay buffer, the oldest
    /// going first past the limits, and hands it to the connection. A connection that
    /// cannot keep up is cut off (it counts it) and the peer waits for its resume.
    pub(crate) fn push(
        &mut self,
        now: Instant,
        seq: u64,
        json: Bytes,
        delivery: Delivery,
        cfg: &HubConfig,
        touched: &mut Vec<OutboxRef>,
    ) {
        self.seq = seq;
        self.buffer_bytes += json.len();
        // Kept once, in the replay buffer; the socket writes from it (no clone: cloning
        // a `Bytes` made from a `String` allocates its shared header).
        self.buffer.push_back((seq, json));
        while self.buffer.len() > 1
            && (self.buffer.len() > cfg.replay_limit || self.buffer_bytes > cfg.replay_bytes)
        {
            let Some((s, m)) = self.buffer.pop_front() else {
                break;
            };
            self.lost_up_to = self.lost_up_to.max(s);
            self.buffer_bytes = self.buffer_bytes.saturating_sub(m.len());
        }
        let Some((_, json)) = self.buffer.back() else {
            return;
        };
        // Ask for an acknowledgement every so many messages, not only at the heartbeat:
        // a busy peer's replay buffer then stays short (and its memory hot).
        let ask = seq.saturating_sub(self.ack_asked) >= ACK_EVERY;
        if ask {
            self.ack_asked = seq;
        }
        let Some(o) = &self.outbox else {
            return;
        };
        touch(touched, o);
        let r = o.push(seq, json, delivery);
        if ask && r == Pushed::Ok && !self.client_acks {
            o.request_ack();
        }
        if r != Pushed::Ok {
            if let Some(o) = self.outbox.take() {
                o.detach(Detach::TooSlow);
            }
            self.detached_at.get_or_insert(now);
        }
    }

    /// Drops `joined` (seq 1) once it is written: it is never replayed, since a resume
    /// needs its token and so comes with `last_seq` ≥ 1. Kept until the first ack it cost
    /// each new connection its size (a few hundred bytes, with the ICE servers) through a
    /// join burst.
    pub(crate) fn forget_joined(&mut self) {
        if let Some((1, j)) = self.buffer.front() {
            self.buffer_bytes = self.buffer_bytes.saturating_sub(j.len());
            self.buffer.pop_front();
            self.lost_up_to = self.lost_up_to.max(1);
        }
    }

    /// Connection `conn` is gone: the peer waits for its resume grace.
    pub(crate) fn detach(&mut self, now: Instant, conn: u64) {
        if self.conn == conn {
            self.outbox = None;
            self.detached_at.get_or_insert(now);
        }
    }

    /// Everything up to `seq` is acknowledged through connection `conn`: by the client
    /// itself, or by a pong (which counts only for clients that never acknowledge by
    /// themselves). Returns the seq the buffer was trimmed to, if anything went.
    pub(crate) fn ack(&mut self, conn: u64, seq: u64, by: AckBy) -> Option<u64> {
        match by {
            AckBy::Client => self.client_acks = true,
            AckBy::Transport if self.client_acks => return None,
            AckBy::Transport => {}
        }
        // Nobody can have processed what was never sent.
        let seq = seq.min(self.seq);
        if self.conn != conn || self.buffer.front().is_none_or(|(s, _)| *s > seq) {
            return None;
        }
        while self.buffer.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, m)) = self.buffer.pop_front() {
                self.buffer_bytes = self.buffer_bytes.saturating_sub(m.len());
            }
        }
        if self.buffer.is_empty() {
            self.buffer = VecDeque::new();
        }
        Some(seq)
    }

    /// Why a resume after `last_seq` cannot be served from here, if it cannot.
    pub(crate) fn unservable(&self, last_seq: u64) -> Option<&'static str> {
        if last_seq > self.seq {
            Some("last_seq is ahead of what the server sent")
        } else if last_seq < self.lost_up_to
            || self.buffer.front().is_some_and(|(s, _)| *s > last_seq + 1)
        {
            Some("messages after last_seq are no longer buffered")
        } else {
            None
        }
    }

    /// A new connection `conn` takes over (checked with [`Mailbox::unservable`]):
    /// `resumed`, then every buffered message after `last_seq`. A connection that still
    /// held the peer learns it is replaced.
    pub(crate) fn attach(
        &mut self,
        conn: u64,
        outbox: OutboxRef,
        last_seq: u64,
        resumed: &Bytes,
        touched: &mut Vec<OutboxRef>,
    ) {
        if let Some(old) = self.outbox.replace(outbox.clone()) {
            old.detach(Detach::Replaced);
        }
        self.conn = conn;
        self.detached_at = None;
        // The new connection's slot replaces the old one.
        self._hold = outbox.hold();
        outbox.push(last_seq, resumed, Delivery::Replay);
        for (seq, m) in self.buffer.iter().filter(|(s, _)| *s > last_seq) {
            outbox.push(*seq, m, Delivery::Replay);
        }
        touch(touched, &outbox);
    }

    /// The unacknowledged messages after `seq`, oldest first.
    pub(crate) fn after(&self, seq: u64) -> impl Iterator<Item = &Frame> {
        self.buffer.iter().filter(move |(s, _)| *s > seq)
    }

    /// Messages up to `to` will never come: skip them, and cut the connection off so that
    /// the client resumes (and learns with `resume-failed` that it must start over).
    pub(crate) fn lose(&mut self, now: Instant, to: u64) {
        self.seq = to;
        self.lost_up_to = to;
        if let Some(o) = self.outbox.take() {
            o.detach(Detach::TooSlow);
        }
        self.detached_at.get_or_insert(now);
    }
}

#[derive(Default)]
struct Room {
    members: Vec<PeerId>,
}

/// One shard of rooms and the peers in them.
pub struct Hub {
    cfg: HubConfig,
    metrics: Metrics,
    rooms: HashMap<Arc<str>, Room>,
    /// Boxed: the map's table then holds a pointer per peer, not the whole struct, which
    /// matters with tens of thousands of idle peers and a table that grows by doubling.
    peers: HashMap<PeerId, Box<Peer>>,
    next_conn: u64,
    /// Connections with queued output since they were last taken (see `bus::locked`).
    touched: Vec<OutboxRef>,
}

/// What a successful join or resume hands back to the connection.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The peer the connection now carries.
    pub id: PeerId,
    /// Which connection carries it; passed back on `detach` and `ack`, so a replaced
    /// connection's calls are ignored.
    pub conn: u64,
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig, metrics: Metrics) -> Self {
        Hub {
            cfg,
            metrics,
            rooms: HashMap::new(),
            peers: HashMap::new(),
            next_conn: 1,
            touched: Vec::new(),
        }
    }

    /// Rooms with at least one peer.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Peers, attached or within their resume grace.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A peer id whose first character names this hub's shard (see [`shard_of`]).
    fn new_peer_id(&self) -> String {
        let mut b: [u8; 9] = rand::random();
        b[0] = (b[0] & 0x03) | ((self.cfg.shard as u8 & 0x3F) << 2);
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
    }

    /// Queues a message to `id` with its next seq; returns false when the peer is gone.
    fn deliver<'m>(
        &mut self,
        now: Instant,
        id: &str,
        build: impl FnOnce(u64) -> ServerMessage<'m>,
    ) -> bool {
        let Some(p) = self.peers.get(id) else {
            return false;
        };
        let msg = build(p.mb.seq + 1);
        self.enqueue(now, id, msg.kind(), Bytes::from(msg.to_json()))
    }

    /// Keeps `json` (serialized with the peer's next seq) in the replay buffer and hands
    /// it to the peer's connection; false when the peer is gone.
    fn enqueue(&mut self, now: Instant, id: &str, kind: &'static str, json: Bytes) -> bool {
        let Some(p) = self.peers.get_mut(id) else {
            return false;
        };
        let seq = p.mb.seq + 1;
        p.mb.push(now, seq, json, Delivery::Live, &self.cfg, &mut self.touched);
        self.metrics.message_out(kind);
        true
    }

    fn peer_infos<'a>(
        &'a self,
        members: &'a [PeerId],
        me: &str,
        polite: bool,
    ) -> Vec<PeerInfo<'a>> {
        members
            .iter()
            .filter(|m| &***m != me)
            .filter_map(|m| {
                self.peers.get(m).map(|p| PeerInfo {
                    id: (**m).into(),
                    meta: p.meta.as_deref(),
                    polite,
                })
            })
            .collect()
    }

    /// A new peer joins `room`: it gets `joined` (with the peers already there; it is the
    /// impolite side towards each), and they get `peer-joined` (they are polite).
    pub fn join(
        &mut self,
        now: Instant,
        room: &str,
        meta: Option<Box<RawValue>>,
        ice_servers: &RawValue,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        let members = self.rooms.get(room).map(|r| r.members.len()).unwrap_or(0);
        if members >= self.cfg.room_capacity {
            return Err(ProtocolError::new(
                ErrorCode::RoomFull,
                format!("room holds its maximum of {} peers", self.cfg.room_capacity),
            ));
        }
        let id: PeerId = self.new_peer_id().into();
        let token: Box<str> = format!("{}{}", random_id(), random_id()).into();
        let room_name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => room.into(),
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        self.peers.insert(
            id.clone(),
            Box::new(Peer {
                room: room_name.clone(),
                meta,
                resume_token: token.clone(),
                mb: Mailbox::new(0, outbox, conn),
            }),
        );
        let others: Vec<PeerId> = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let joined = ServerMessage::Joined {
            id: (*id).into(),
            room: (*room_name).into(),
            peers: self.peer_infos(&others, &id, false),
            ice_servers,
            resume_token: (*token).into(),
            seq: 1,
        }
        .to_json();
        self.enqueue(now, &id, "joined", Bytes::from(joined));
        if let Some(p) = self.peers.get_mut(&id) {
            p.mb.forget_joined();
        }
        // Borrow the newcomer's meta outside the map while the others are told.
        let meta = self.peers.get_mut(&id).and_then(|p| p.meta.take());
        for o in &others {
            self.deliver(now, o, |seq| ServerMessage::PeerJoined {
                id: (*id).into(),
                meta: meta.as_deref(),
                polite: true,
                seq,
            });
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.meta = meta;
        }
        let room = self.rooms.entry(room_name).or_default();
        if room.members.is_empty() {
            self.metrics.rooms.inc();
        }
        room.members.push(id.clone());
        self.metrics.peers.inc();
        Ok(Attached { id, conn })
    }

    /// Forwards `data` from one peer to another in the same room, in order.
    pub fn signal(
        &mut self,
        now: Instant,
        from: &str,
        to: &str,
        data: &RawValue,
    ) -> Result<(), ProtocolError> {
        let room = self.peers.get(from).map(|p| p.room.clone());
        let same_room = match (&room, self.peers.get(to)) {
            (Some(r), Some(t)) => *r == t.room && from != to,
            _ => false,
        };
        if !same_room {
            return Err(ProtocolError::new(
                ErrorCode::UnknownPeer,
                format!("no peer {to:?} in your room"),
            ));
        }
        self.deliver(now, to, |seq| ServerMessage::Signal {
            from: from.into(),
            data,
            seq,
        });
        Ok(())
    }

    /// Signals a connection read together, forwarded in order; each recipient's queue is
    /// then written once for the lot. Returns the errors for the sender, in order.
    pub fn signals(
        &mut self,
        now: Instant,
        from: &str,
        batch: &[Signal<'_>],
    ) -> Vec<ProtocolError> {
        let mut errors = Vec::new();
        for (to, data) in batch {
            if let Err(e) = self.signal(now, from, to, data) {
                errors.push(e);
            }
        }
        errors
    }

    /// A message for the peer itself (pong, error), sequenced like any other.
    pub fn notify<'m>(
        &mut self,
        now: Instant,
        id: &str,
        build: impl FnOnce(u64) -> ServerMessage<'m>,
    ) -> bool {
        self.deliver(now, id, build)
    }

    /// The peer leaves (or is removed); the others hear `peer-left`.
    pub fn remove(&mut self, now: Instant, id: &str, reason: LeaveReason) {
        let Some(p) = self.peers.remove(id) else {
            return;
        };
        let mut others = Vec::new();
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.members.retain(|m| &**m != id);
            others = r.members.clone();
            if r.members.is_empty() {
                self.rooms.remove(&p.room);
                self.metrics.rooms.dec();
            }
        }
        // Gauges move by one (several hubs, one per shard of rooms, share them).
        self.metrics.peers.dec();
        for o in &others {
            self.deliver(now, o, |seq| ServerMessage::PeerLeft {
                id: id.into(),
                reason,
                seq,
            });
        }
    }

    /// The connection `conn` of `id` is gone without a `leave`: keep the peer for the
    /// resume grace.
    pub fn detach(&mut self, now: Instant, id: &str, conn: u64) {
        if let Some(p) = self.peers.get_mut(id) {
            p.mb.detach(now, conn);
        }
    }

    /// Everything up to `seq` is acknowledged: by the client itself, or by a pong (which
    /// counts only for clients that never acknowledge by themselves).
    pub fn ack(&mut self, id: &str, conn: u64, seq: u64, by: AckBy) {
        if let Some(p) = self.peers.get_mut(id) {
            p.mb.ack(conn, seq, by);
        }
    }

    /// A new connection takes over `id`: it gets `resumed`, then every message after
    /// `last_seq`, in order.
    /// With the right token but a `last_seq` that cannot be served, a detached peer is
    /// removed at once (the others get `peer-left`): its owner starts over with a fresh
    /// join, and the old id would otherwise linger until its grace ran out.
    pub fn resume(
        &mut self,
        now: Instant,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        let fail = |m: &str| Err(ProtocolError::new(ErrorCode::ResumeFailed, m));
        let Some(p) = self.peers.get(id) else {
            return fail(UNKNOWN);
        };
        if !token_matches(&p.resume_token, token) {
            return fail(UNKNOWN);
        }
        let unservable = p.mb.unservable(last_seq);
        if let Some(why) = unservable {
            if p.mb.outbox.is_none() {
                self.remove(now, id, LeaveReason::Timeout);
            }
            return fail(why);
        }
        let members = self
            .rooms
            .get(&p.room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        // Politeness towards each peer depends on who joined first; the client kept it
        // from `joined`/`peer-joined`, so `resumed` lists peers for presence only.
        let json = Bytes::from(
            ServerMessage::Resumed {
                id: id.into(),
                peers: self.peer_infos(&members, id, true),
                seq: last_seq,
            }
            .to_json(),
        );
        let conn = self.next_conn;
        self.next_conn += 1;
        let p = self.peers.get_mut(id).expect("checked");
        p.mb.attach(conn, outbox, last_seq, &json, &mut self.touched);
        self.metrics.message_out("resumed");
        Ok(Attached {
            id: id.into(),
            conn,
        })
    }

    /// Peers detached longer than the grace are removed (`peer-left`, reason timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        let grace = self.cfg.resume_grace;
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.mb.detached_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.metrics.resume_grace_expired.inc();
            self.remove(now, &id, LeaveReason::Timeout);
        }
    }
}

/// The caller [`Outbox::flush`]es what the hub touched once it has released it.
impl crate::bus::Touches for Hub {
    fn take_touched(&mut self, out: &mut Vec<OutboxRef>) {
        out.append(&mut self.touched);
    }
}

/// What the room tests and the Redis bus's core tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::{Delivery, Detach, Frame, Outbox, Pushed};

    /// A connection that keeps what it is sent until the test takes it; with a `limit` it
    /// refuses live messages beyond that many, like a socket whose client stopped reading.
    #[derive(Default)]
    pub(crate) struct TestBox {
        pub(crate) frames: Mutex<Vec<Frame>>,
        pub(crate) detached: Mutex<Vec<Detach>>,
        pub(crate) limit: usize,
    }

    impl Outbox for TestBox {
        fn push(&self, seq: u64, json: &Bytes, d: Delivery) -> Pushed {
            let mut f = self.frames.lock().unwrap();
            if d == Delivery::Live && self.limit > 0 && f.len() >= self.limit {
                return Pushed::TooSlow;
            }
            f.push((seq, json.clone()));
            Pushed::Ok
        }
        fn flush(&self) {}
        fn request_ack(&self) {}
        fn detach(&self, why: Detach) {
            self.detached.lock().unwrap().push(why);
        }
    }

    /// A [`TestBox`] holding at most `limit` undrained live messages (0: any number).
    pub(crate) fn boxed(limit: usize) -> Arc<TestBox> {
        Arc::new(TestBox {
            limit,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{boxed, TestBox};
    use super::*;

    fn hub(capacity: usize) -> Hub {
        Hub::new(
            HubConfig {
                room_capacity: capacity,
                resume_grace: Duration::from_secs(30),
                replay_limit: 64,
                replay_bytes: 1 << 20,
                shard: 5,
            },
            Metrics::default(),
        )
    }

    /// A joined or resumed peer as a test sees it: its id and connection.
    struct Conn {
        id: PeerId,
        conn: u64,
        out: Arc<TestBox>,
    }

    fn ice() -> Box<RawValue> {
        RawValue::from_string("[]".into()).unwrap()
    }

    fn drain(_h: &mut Hub, a: &Conn) -> Vec<serde_json::Value> {
        std::mem::take(&mut *a.out.frames.lock().unwrap())
            .into_iter()
            .map(|(seq, f)| {
                let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
                assert_eq!(v["seq"].as_u64(), Some(seq), "pushed with its own seq");
                v
            })
            .collect()
    }

    fn detached(a: &Conn) -> Option<Detach> {
        a.out.detached.lock().unwrap().last().copied()
    }

    fn join(h: &mut Hub, now: Instant, room: &str) -> Conn {
        let out = boxed(0);
        let a = h.join(now, room, None, &ice(), out.clone()).unwrap();
        Conn {
            id: a.id,
            conn: a.conn,
            out,
        }
    }

    fn resume(h: &mut Hub, id: &str, token: &str, last: u64) -> Result<Conn, ProtocolError> {
        let out = boxed(0);
        let a = h.resume(Instant::now(), id, token, last, out.clone())?;
        Ok(Conn {
            id: a.id,
            conn: a.conn,
            out,
        })
    }

    /// The resume token a `joined` carries.
    fn token_of(joined: &serde_json::Value) -> String {
        joined["resume_token"]
            .as_str()
            .expect("joined carries a resume token")
            .to_string()
    }

    #[test]
    fn join_signal_leave() {
        let now = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, now, "r");
        let b = join(&mut h, now, "r");
        assert_eq!((shard_of(&a.id), shard_of(&b.id)), (Some(5), Some(5)));
        let ma = drain(&mut h, &a);
        assert_eq!(ma[0]["type"], "joined");
        assert_eq!(ma[1]["type"], "peer-joined");
        assert_eq!(ma[1]["polite"], true);
        assert_eq!(ma[1]["seq"], 2);
        let mb = drain(&mut h, &b);
        assert_eq!(mb[0]["peers"][0]["id"], &*a.id);
        assert_eq!(mb[0]["peers"][0]["polite"], false);
        let data = RawValue::from_string(r#"{"sdp":1}"#.into()).unwrap();
        h.signal(now, &b.id, &a.id, &data).unwrap();
        let ma = drain(&mut h, &a);
        assert_eq!(ma.len(), 1, "only the new message");
        assert_eq!(ma[0]["from"], &*b.id);
        assert_eq!(ma[0]["data"]["sdp"], 1);
        assert_eq!(
            h.signal(now, &b.id, "nobody", &data).unwrap_err().code,
            ErrorCode::UnknownPeer
        );
        assert_eq!(
            h.signal(now, &b.id, &b.id, &data).unwrap_err().code,
            ErrorCode::UnknownPeer
        );
        h.remove(now, &b.id, LeaveReason::Left);
        let ma = drain(&mut h, &a);
        assert_eq!(
            (ma[0]["type"].as_str(), ma[0]["reason"].as_str()),
            (Some("peer-left"), Some("left"))
        );
        assert!(drain(&mut h, &b).is_empty(), "nothing more for who left");
        h.remove(now, &a.id, LeaveReason::Left);
        assert_eq!((h.room_count(), h.peer_count()), (0, 0));
    }

    #[test]
    fn rooms_are_isolated_and_capped() {
        let now = Instant::now();
        let mut h = hub(2);
        let a = join(&mut h, now, "r1");
        let b = join(&mut h, now, "r2");
        let data = RawValue::from_string("{}".into()).unwrap();
        assert_eq!(
            h.signal(now, &a.id, &b.id, &data).unwrap_err().code,
            ErrorCode::UnknownPeer
        );
        let _c = join(&mut h, now, "r1");
        let e = h.join(now, "r1", None, &ice(), boxed(0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::RoomFull);
    }

    /// A socket that still pongs after its client stopped processing (a frozen tab, an
    /// app that lost its state) must not trim what the client never saw, once the client
    /// acknowledges by itself.
    #[test]
    fn client_acks_win_over_pongs_from_an_abandoned_socket() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let b = join(&mut h, t0, "r");
        let seen = drain(&mut h, &a);
        let token = token_of(&seen[0]);
        let processed = seen.last().unwrap()["seq"].as_u64().unwrap();
        h.ack(&a.id, a.conn, processed, AckBy::Client);
        for i in 0..5 {
            let d = RawValue::from_string(format!("{{\"n\":{i}}}")).unwrap();
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        // The socket received all five (its pong says so), the client processed none.
        let received = drain(&mut h, &a).last().unwrap()["seq"].as_u64().unwrap();
        h.ack(&a.id, a.conn, received, AckBy::Transport);
        // An ack past what was sent counts only up to what was sent.
        h.ack(&a.id, a.conn, processed, AckBy::Client);
        let att = resume(&mut h, &a.id, &token, processed).unwrap();
        let got = drain(&mut h, &att);
        assert_eq!(got[0]["type"], "resumed");
        let ns: Vec<u64> = got[1..]
            .iter()
            .map(|m| m["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, vec![0, 1, 2, 3, 4], "every unprocessed message, once");
    }

    #[test]
    fn resume_replays_exactly_the_unacknowledged() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let b = join(&mut h, t0, "r");
        let seen = drain(&mut h, &a);
        let last = seen.last().unwrap()["seq"].as_u64().unwrap();
        h.ack(&a.id, a.conn, last, AckBy::Transport);
        h.detach(t0, &a.id, a.conn);
        for i in 0..5 {
            let d = RawValue::from_string(format!("{{\"n\":{i}}}")).unwrap();
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        assert_eq!(
            resume(&mut h, &a.id, "bad", last).err().unwrap().code,
            ErrorCode::ResumeFailed
        );
        let token = token_of(&seen[0]);
        let att = resume(&mut h, &a.id, &token, last).unwrap();
        let mut got = drain(&mut h, &att);
        let r = got.remove(0);
        assert_eq!(
            (r["type"].as_str(), r["seq"].as_u64()),
            (Some("resumed"), Some(last))
        );
        let ns: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, vec![0, 1, 2, 3, 4]);
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (last + 1..=last + 5).collect::<Vec<_>>());
        // The old connection's late detach does not detach the new one.
        h.detach(t0, &a.id, a.conn);
        h.signal(
            t0,
            &b.id,
            &a.id,
            &RawValue::from_string("{}".into()).unwrap(),
        )
        .unwrap();
        assert_eq!(drain(&mut h, &att).len(), 1);
        assert_ne!(att.conn, a.conn);
    }

    #[test]
    fn grace_expiry_sends_peer_left_timeout() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let b = join(&mut h, t0, "r");
        drain(&mut h, &b);
        h.detach(t0, &a.id, a.conn);
        h.handle_timeout(t0 + Duration::from_secs(29));
        assert!(
            drain(&mut h, &b).is_empty(),
            "no peer-left during the grace"
        );
        h.handle_timeout(t0 + Duration::from_secs(30));
        let m = drain(&mut h, &b);
        assert_eq!(
            (m[0]["type"].as_str(), m[0]["reason"].as_str()),
            (Some("peer-left"), Some("timeout"))
        );
        let e = resume(&mut h, &a.id, "x", 0).err().unwrap();
        assert_eq!(e.code, ErrorCode::ResumeFailed);
    }

    #[test]
    fn acknowledged_messages_leave_the_buffer_and_delivery_goes_on() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let b = join(&mut h, t0, "r");
        let seen = drain(&mut h, &a);
        h.ack(
            &a.id,
            a.conn,
            seen.last().unwrap()["seq"].as_u64().unwrap(),
            AckBy::Transport,
        );
        assert_eq!(h.peers[&a.id].mb.buffer_bytes, 0);
        let d = RawValue::from_string("{\"x\":1}".into()).unwrap();
        for _ in 0..3 {
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        assert_eq!(drain(&mut h, &a).len(), 3);
        let p = &h.peers[&a.id];
        assert_eq!(p.mb.buffer.len(), 3);
        assert_eq!(
            p.mb.buffer_bytes,
            p.mb.buffer.iter().map(|(_, m)| m.len()).sum::<usize>()
        );
    }

    #[test]
    fn replay_buffer_is_bounded_in_bytes() {
        let t0 = Instant::now();
        let mut h = Hub::new(
            HubConfig {
                room_capacity: 16,
                resume_grace: Duration::from_secs(30),
                replay_limit: 1000,
                replay_bytes: 10_000,
                shard: 0,
            },
            Metrics::default(),
        );
        let a = join(&mut h, t0, "r");
        let b = join(&mut h, t0, "r");
        let d = RawValue::from_string(format!("\"{}\"", "x".repeat(1000))).unwrap();
        for _ in 0..50 {
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        assert_eq!(drain(&mut h, &a).len(), 2 + 50, "all delivered");
        let p = &h.peers[&a.id];
        assert!(
            p.mb.buffer_bytes <= 10_000 && p.mb.buffer.len() < 11,
            "{}",
            p.mb.buffer_bytes
        );
        assert!(p.mb.lost_up_to > 0);
    }

    #[test]
    fn joined_is_written_but_not_kept_for_replay() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let token = token_of(&drain(&mut h, &a)[0]);
        let p = &h.peers[&a.id];
        assert_eq!((p.mb.buffer.len(), p.mb.buffer_bytes), (0, 0));
        let b = join(&mut h, t0, "r");
        drain(&mut h, &b);
        assert_eq!(h.peers[&a.id].mb.buffer.len(), 1, "peer-joined is kept");
        // Nobody holds the token without having processed `joined`: last_seq 0 is refused
        // (and, the token being right, the peer goes), where 1 replays `peer-joined`.
        h.detach(t0, &a.id, a.conn);
        let a2 = resume(&mut h, &a.id, &token, 1).unwrap();
        let replay = drain(&mut h, &a2);
        assert_eq!(
            replay
                .iter()
                .map(|m| m["type"].as_str())
                .collect::<Vec<_>>(),
            [Some("resumed"), Some("peer-joined")]
        );
        let e = resume(&mut h, &a.id, &token, 0).err().unwrap();
        assert_eq!(e.code, ErrorCode::ResumeFailed);
    }

    #[test]
    fn a_live_connection_learns_it_is_replaced_by_a_resume() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let a = join(&mut h, t0, "r");
        let token = token_of(&drain(&mut h, &a)[0]);
        let a2 = resume(&mut h, &a.id, &token, 1).unwrap();
        assert_eq!(detached(&a), Some(Detach::Replaced));
        assert_eq!(detached(&a2), None);
    }

    #[test]
    fn slow_consumer_is_cut_off_then_resumes_until_the_buffer_overflows() {
        let t0 = Instant::now();
        let mut h = hub(16);
        let out = boxed(32);
        let a = h.join(t0, "r", None, &ice(), out.clone()).unwrap();
        let a = Conn {
            id: a.id,
            conn: a.conn,
            out,
        };
        let b = join(&mut h, t0, "r");
        let joined = a.out.frames.lock().unwrap()[0].1.clone();
        let token = token_of(&serde_json::from_slice(&joined).unwrap());
        let d = RawValue::from_string("{}".into()).unwrap();
        // A never reads: its connection holds 32 messages, then it is cut off.
        for _ in 0..40 {
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        assert_eq!(detached(&a), Some(Detach::TooSlow));
        // Still within the replay buffer (64): resume works and replays all 40.
        let att = resume(&mut h, &a.id, &token, 2).unwrap();
        assert_eq!(drain(&mut h, &att).len(), 1 + 40);
        // Detached again, 100 more overflow the buffer: resume now fails.
        h.detach(t0, &a.id, att.conn);
        for _ in 0..100 {
            h.signal(t0, &b.id, &a.id, &d).unwrap();
        }
        drain(&mut h, &b);
        let e = resume(&mut h, &a.id, &token, 42).err().unwrap();
        assert_eq!(e.code, ErrorCode::ResumeFailed);
        // The token was right: the old id goes now, not when its grace runs out.
        let left = drain(&mut h, &b);
        assert_eq!(
            (left[0]["type"].as_str(), left[0]["id"].as_str()),
            (Some("peer-left"), Some(&*a.id))
        );
        assert_eq!(h.peer_count(), 1);
    }
}
