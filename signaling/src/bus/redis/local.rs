//! The I/O-free half of the Redis bus: the peers this node carries. In a cluster Redis
//! hands out every peer's seqs (so a peer can resume on any node), and its messages arrive
//! over pub/sub, which may lose some (at most once) and, after a reconnect or a resume,
//! overlaps with what is fetched from the peer's outbox list. This core turns that into
//! what a client must see: every seq once, in order. It keeps what a [`crate::room::Hub`]
//! keeps per peer (replay buffer, acknowledgements, the connection) so that a peer that
//! reconnects to the same node resumes without Redis, and rooms keep working on this node
//! while Redis is away (then this core numbers the messages itself).
//!
//! No sockets, no clock of its own: the driver (`super::RedisBus`) passes `now`, does the
//! Redis calls the results ask for ([`Received::Fetch`]) and flushes touched outboxes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::bus::Touches;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ProtocolError, ServerMessage};
use crate::room::{
    token_matches, touch, AckBy, Attached, Delivery, Detach, Frame, HubConfig, Mailbox, OutboxRef,
    PeerId,
};

/// What became of a message that arrived for a local peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Handed to its connection (with any queued messages it unblocked).
    Delivered,
    /// Already delivered (or older than the peer's start): dropped.
    Duplicate,
    /// Not a peer of this node (left, or taken over by another node).
    Unknown,
    /// Held back behind a gap: fetch seqs `from..=to` from the peer's outbox list and
    /// hand them to [`Local::fetched`]. Asked once per gap.
    Fetch {
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// Held back behind a gap that is already being fetched.
    Held,
}

struct LocalPeer {
    room: Arc<str>,
    token: Box<str>,
    meta: Option<Box<RawValue>>,
    /// False between reserving the peer and its `joined`/`resumed`: arrivals wait.
    ready: bool,
    /// Arrived ahead of a gap, by seq.
    pending: BTreeMap<u64, Bytes>,
    /// A fetch of a gap is under way.
    fetching: bool,
    /// Its seq (the highest handed to the client), replay buffer and connection.
    mb: Mailbox,
}

/// What a node re-writes into Redis for one of its peers after Redis came back.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The peer.
    pub id: PeerId,
    /// Its room.
    pub room: Arc<str>,
    /// Its resume token.
    pub token: Box<str>,
    /// Its meta, `""` for none.
    pub meta: String,
    /// The last seq it was handed.
    pub seq: u64,
    /// Its unacknowledged messages (the join's own `joined`, seq 1, excluded).
    pub frames: Vec<Frame>,
}

/// The peers one node carries.
pub struct Local {
    cfg: HubConfig,
    metrics: Metrics,
    peers: HashMap<PeerId, Box<LocalPeer>>,
    /// This node's members of each room (the room's full membership is in Redis).
    rooms: HashMap<Arc<str>, Vec<PeerId>>,
    next_conn: u64,
    touched: Vec<OutboxRef>,
}

impl Local {
    /// No peers yet.
    pub fn new(cfg: HubConfig, metrics: Metrics) -> Self {
        Local {
            cfg,
            metrics,
            peers: HashMap::new(),
            rooms: HashMap::new(),
            next_conn: 1,
            touched: Vec::new(),
        }
    }

    /// Rooms with a peer on this node, and this node's peers.
    pub fn counts(&self) -> (usize, usize) {
        (self.rooms.len(), self.peers.len())
    }

    /// Whether this node carries `id` (ready or not).
    pub fn knows(&self, id: &str) -> bool {
        self.peers.contains_key(id)
    }

    /// The room of a ready peer.
    pub fn room_of(&self, id: &str) -> Option<Arc<str>> {
        self.peers
            .get(id)
            .filter(|p| p.ready)
            .map(|p| p.room.clone())
    }

    /// This node's other members of `id`'s room.
    pub fn roommates(&self, id: &str) -> Vec<PeerId> {
        let Some(room) = self.room_of(id) else {
            return Vec::new();
        };
        self.rooms
            .get(&room)
            .map(|m| m.iter().filter(|m| &***m != id).cloned().collect())
            .unwrap_or_default()
    }

    /// A peer this node is about to carry (a join or resume whose Redis step is under
    /// way): messages that arrive for it meanwhile wait. `seq` is the last one it has.
    pub fn reserve(&mut self, id: PeerId, seq: u64, outbox: OutboxRef) -> Attached {
        let conn = self.next_conn;
        self.next_conn += 1;
        let peer = LocalPeer {
            room: "".into(),
            token: "".into(),
            meta: None,
            ready: false,
            pending: BTreeMap::new(),
            fetching: false,
            mb: Mailbox::new(seq, outbox, conn),
        };
        if let Some(old) = self.peers.insert(id.clone(), Box::new(peer)) {
            // Cannot happen with random ids; if it did, the old one is gone.
            self.forget(&id, &old.room);
        } else {
            self.metrics.peers.inc();
        }
        Attached { id, conn }
    }

    /// The Redis step of a reservation failed: forget the peer, nobody heard of it.
    pub fn cancel(&mut self, id: &str) {
        if let Some(p) = self.peers.remove(id) {
            self.metrics.peers.dec();
            self.forget(id, &p.room);
        }
    }

    fn forget(&mut self, id: &str, room: &Arc<str>) {
        if let Some(m) = self.rooms.get_mut(room) {
            m.retain(|m| &**m != id);
            if m.is_empty() {
                self.rooms.remove(room);
                self.metrics.rooms.dec();
            }
        }
    }

    /// A reserved peer joined: `joined` (seq 1) goes out first, then what waited.
    pub fn activate_joined(
        &mut self,
        now: Instant,
        id: &str,
        room: Arc<str>,
        token: Box<str>,
        meta: Option<Box<RawValue>>,
        joined: Bytes,
    ) -> Option<Received> {
        self.activate(id, room, token, meta)?;
        if let Some(p) = self.peers.get_mut(id) {
            p.mb.seq = 0;
        }
        self.push(now, id, 1, joined, Delivery::Live, "joined");
        if let Some(p) = self.peers.get_mut(id) {
            p.mb.forget_joined();
        }
        Some(self.drain(now, id))
    }

    /// A reserved peer resumed: `resumed` goes out first; then the driver fetches what
    /// follows `last_seq` from Redis ([`Local::fetched`]), merged with what arrives live.
    pub fn activate_resumed(
        &mut self,
        id: &str,
        room: Arc<str>,
        token: Box<str>,
        meta: Option<Box<RawValue>>,
        resumed: Bytes,
    ) {
        if self.activate(id, room, token, meta).is_none() {
            return;
        }
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.fetching = true;
        if let Some(o) = &p.mb.outbox {
            o.push(p.mb.seq, &resumed, Delivery::Replay);
            touch(&mut self.touched, o);
        }
        self.metrics.message_out("resumed");
    }

    fn activate(
        &mut self,
        id: &str,
        room: Arc<str>,
        token: Box<str>,
        meta: Option<Box<RawValue>>,
    ) -> Option<()> {
        let p = self.peers.get_mut(id)?;
        p.room = room.clone();
        p.token = token;
        p.meta = meta;
        p.ready = true;
        let members = self.rooms.entry(room).or_default();
        if members.is_empty() {
            self.metrics.rooms.inc();
        }
        members.push(id.into());
        Some(())
    }

    /// A message for `id` with its seq (from pub/sub, or a fetch with `Delivery::Replay`).
    pub fn receive(&mut self, now: Instant, id: &str, seq: u64, json: Bytes) -> Received {
        let Some(p) = self.peers.get_mut(id) else {
            return Received::Unknown;
        };
        if seq <= p.mb.seq || p.pending.contains_key(&seq) {
            return Received::Duplicate;
        }
        if !p.ready || p.fetching || seq != p.mb.seq + 1 {
            p.pending.insert(seq, json);
            if p.pending.len() > self.cfg.replay_limit {
                // Nobody fills the gap in time: the peer has lost messages.
                let to = p.pending.keys().next().map_or(seq, |s| s - 1);
                self.lose(now, id, to);
                return self.drain(now, id);
            }
            if !p.ready || p.fetching {
                return Received::Held;
            }
            // A gap: ask for it once; what arrives meanwhile waits behind it.
            return self.drain(now, id);
        }
        let kind = kind_of(&json);
        self.push(now, id, seq, json, Delivery::Live, kind);
        self.drain(now, id)
    }

    /// What a fetch of `id`'s outbox returned (seq order). `want_to`: the last seq it had
    /// to cover; what it could not cover is lost, and the client is cut off so that its
    /// resume fails cleanly instead of skipping messages.
    pub fn fetched(
        &mut self,
        now: Instant,
        id: &str,
        items: Vec<Frame>,
        want_to: Option<u64>,
    ) -> Received {
        let Some(p) = self.peers.get_mut(id) else {
            return Received::Unknown;
        };
        p.fetching = false;
        for (seq, json) in items {
            if seq > p.mb.seq {
                p.pending.insert(seq, json);
            }
        }
        // The resume case (no `want_to`): what was fetched must follow on directly.
        let hole = match p.pending.keys().next() {
            Some(&first) if first > p.mb.seq + 1 => Some(first - 1),
            _ => None,
        };
        let lost = match (want_to, hole) {
            (Some(to), _) if to > p.mb.seq && !p.pending.contains_key(&(p.mb.seq + 1)) => Some(to),
            (None, Some(h)) => Some(h),
            _ => None,
        };
        if let Some(to) = lost {
            self.lose(now, id, to);
        }
        self.drain(now, id)
    }

    /// Seqs up to `to` will never arrive: skip them, and cut the connection off so that
    /// the client resumes (and learns with `resume-failed` that it must start over).
    fn lose(&mut self, now: Instant, id: &str, to: u64) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        if to <= p.mb.seq {
            return;
        }
        // A fetch still under way for the given-up gap brings only what is now old.
        p.fetching = false;
        while p.pending.first_key_value().is_some_and(|(s, _)| *s <= to) {
            p.pending.pop_first();
        }
        p.mb.lose(now, to);
    }

    /// Hands over what waited and now follows on; reports a gap still in the way.
    fn drain(&mut self, now: Instant, id: &str) -> Received {
        loop {
            let Some(p) = self.peers.get_mut(id) else {
                return Received::Unknown;
            };
            if !p.ready || p.fetching {
                return Received::Held;
            }
            let Some((&seq, _)) = p.pending.first_key_value() else {
                return Received::Delivered;
            };
            if seq != p.mb.seq + 1 {
                p.fetching = true;
                return Received::Fetch {
                    from: p.mb.seq + 1,
                    to: seq - 1,
                };
            }
            let json = p.pending.pop_first().map(|(_, j)| j).expect("first");
            let kind = kind_of(&json);
            self.push(now, id, seq, json, Delivery::Live, kind);
        }
    }

    /// Numbers and hands over a message itself, for when Redis is away (the only source
    /// of seqs then is this node); false when the peer is not here or not ready.
    pub fn deliver_local<'m>(
        &mut self,
        now: Instant,
        id: &str,
        build: impl FnOnce(u64) -> ServerMessage<'m>,
    ) -> bool {
        let Some(p) = self.peers.get(id).filter(|p| p.ready) else {
            return false;
        };
        let msg = build(p.mb.seq + 1);
        let seq = msg.seq();
        self.push(
            now,
            id,
            seq,
            Bytes::from(msg.to_json()),
            Delivery::Live,
            msg.kind(),
        );
        true
    }

    /// Keeps `json` for a local resume and queues it on the peer's connection.
    fn push(
        &mut self,
        now: Instant,
        id: &str,
        seq: u64,
        json: Bytes,
        delivery: Delivery,
        kind: &'static str,
    ) {
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        p.mb.push(now, seq, json, delivery, &self.cfg, &mut self.touched);
        self.metrics.message_out(kind);
    }

    /// Connection `conn` of `id` is gone: the peer waits for its resume grace.
    pub fn detach(&mut self, now: Instant, id: &str, conn: u64) {
        if let Some(p) = self.peers.get_mut(id) {
            p.mb.detach(now, conn);
        }
    }

    /// Acknowledged up to `seq` (see [`AckBy`]); returns the seq the buffer was trimmed
    /// to, for the driver to trim the outbox list in Redis too.
    pub fn ack(&mut self, id: &str, conn: u64, seq: u64, by: AckBy) -> Option<u64> {
        self.peers.get_mut(id)?.mb.ack(conn, seq, by)
    }

    /// Checks a resume of a peer this node carries: `Ok(room)` if `token` is its token and
    /// everything after `last_seq` is still buffered here. The driver then builds
    /// `resumed` (the room's members live in Redis) and calls [`Local::resume`].
    pub fn check_resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
    ) -> Result<Arc<str>, ProtocolError> {
        let fail = |m: &str| Err(ProtocolError::new(ErrorCode::ResumeFailed, m));
        let Some(p) = self.peers.get(id).filter(|p| p.ready) else {
            return fail(UNKNOWN);
        };
        if !token_matches(&p.token, token) {
            return fail(UNKNOWN);
        }
        if let Some(why) = p.mb.unservable(last_seq) {
            return fail(why);
        }
        Ok(p.room.clone())
    }

    /// A new connection takes over `id` (checked by [`Local::check_resume`]): `resumed`,
    /// then every buffered message after `last_seq`.
    pub fn resume(
        &mut self,
        id: &str,
        last_seq: u64,
        resumed: Bytes,
        outbox: OutboxRef,
    ) -> Option<Attached> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let p = self.peers.get_mut(id)?;
        p.mb.attach(conn, outbox, last_seq, &resumed, &mut self.touched);
        self.metrics.message_out("resumed");
        Some(Attached {
            id: id.into(),
            conn,
        })
    }

    /// Another node resumed `id`: its connection here (if any) closes; no `peer-left`.
    pub fn take_over(&mut self, id: &str) -> bool {
        let Some(p) = self.peers.remove(id) else {
            return false;
        };
        if let Some(o) = &p.mb.outbox {
            o.detach(Detach::Replaced);
        }
        self.metrics.peers.dec();
        self.forget(id, &p.room);
        true
    }

    /// The peer leaves this node (it left, or its grace ran out): returns its room and the
    /// local roommates that must hear `peer-left` when Redis cannot tell them.
    pub fn remove(&mut self, id: &str) -> Option<(Arc<str>, Vec<PeerId>)> {
        let mates = self.roommates(id);
        let p = self.peers.remove(id)?;
        self.metrics.peers.dec();
        self.forget(id, &p.room);
        Some((p.room.clone(), mates))
    }

    /// Peers detached for longer than the resume grace.
    pub fn expired(&self, now: Instant) -> Vec<PeerId> {
        let grace = self.cfg.resume_grace;
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.mb.detached_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every ready peer and the seq it waits for next: after pub/sub was away, the driver
    /// fetches from there on.
    pub fn catch_up(&mut self) -> Vec<(PeerId, u64)> {
        self.peers
            .iter_mut()
            .filter(|(_, p)| p.ready && !p.fetching)
            .map(|(id, p)| {
                p.fetching = true;
                (id.clone(), p.mb.seq + 1)
            })
            .collect()
    }

    /// What Redis needs to know again about every ready peer (after it restarted).
    pub fn registrations(&self) -> Vec<Registration> {
        self.peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(id, p)| Registration {
                id: id.clone(),
                room: p.room.clone(),
                token: p.token.clone(),
                meta: p
                    .meta
                    .as_ref()
                    .map(|m| m.get().to_string())
                    .unwrap_or_default(),
                seq: p.mb.seq,
                frames: p.mb.after(1).cloned().collect(),
            })
            .collect()
    }
}

/// The driver flushes what the core touched with no lock held.
impl Touches for Local {
    fn take_touched(&mut self, out: &mut Vec<OutboxRef>) {
        out.append(&mut self.touched);
    }
}

pub use crate::room::UNKNOWN;

/// The `type` of a framed message, for the per-type counter (`{"type":"signal",…`).
fn kind_of(json: &[u8]) -> &'static str {
    const KINDS: [&str; 7] = [
        "signal",
        "peer-joined",
        "peer-left",
        "pong",
        "error",
        "joined",
        "resumed",
    ];
    let rest = json.strip_prefix(b"{\"type\":\"").unwrap_or_default();
    KINDS
        .into_iter()
        .find(|k| rest.starts_with(k.as_bytes()) && rest.get(k.len()) == Some(&b'"'))
        .unwrap_or("other")
}

#[cfg(test)]
mod tests;
