//! The seam between connections and room state. Connections only talk to a [`Bus`]; the
//! in-process [`memory::MemoryBus`] is the default, and a Redis implementation (several
//! nodes sharing rooms) replaces it behind the same trait.

pub mod memory;
pub mod redis;

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::protocol::{LeaveReason, ProtocolError};
use crate::room::{AckBy, Attached, OutboxRef, Signal};

/// Room state that queues output on connections while it is locked (the hub, the Redis
/// bus's local peers) and hands over which ones, to be flushed once it is released.
pub(crate) trait Touches {
    /// Moves the connections with queued output into `out`, each once.
    fn take_touched(&mut self, out: &mut Vec<OutboxRef>);
}

thread_local! {
    /// The queues one operation touched (kept allocated per thread).
    static TOUCHED: RefCell<Vec<OutboxRef>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the state behind `lock`, then flushes the connections it queued output on,
/// with the lock released: no socket write ever happens under it.
pub(crate) fn locked<T: Touches, R>(lock: &Mutex<T>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut touched = TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let r = {
        // A panic while holding the lock cannot leave the state half-updated in a way
        // that matters more than stopping service would, so keep serving.
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut state);
        state.take_touched(&mut touched);
        r
    };
    for o in touched.drain(..) {
        o.flush();
    }
    TOUCHED.with(|t| *t.borrow_mut() = touched);
    r
}

/// What connections ask of room state: join, signal, acknowledge, resume and leave.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Adds a new peer to `room`, carried by `outbox`: it gets `joined` (with
    /// `ice_servers`), the peers already there get `peer-joined`.
    async fn join(
        &self,
        room: &str,
        meta: Option<Box<RawValue>>,
        ice_servers: &RawValue,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError>;
    /// Forwards signals a connection read together, in order (each `(to, data)`); returns
    /// the errors for the sender, in order.
    async fn signal(&self, from: &str, batch: &[Signal<'_>]) -> Vec<ProtocolError>;
    /// Answers the peer's application-level ping, sequenced with the rest.
    async fn pong(&self, id: &str);
    /// Tells the peer what went wrong, sequenced with the rest.
    async fn error(&self, id: &str, err: &ProtocolError);
    /// Removes the peer from its room; the others get `peer-left` with `reason`.
    async fn leave(&self, id: &str, reason: LeaveReason);
    /// Connection `conn` of peer `id` is gone without a `leave`: the peer stays for its
    /// resume grace (a stale `conn` is ignored).
    async fn detach(&self, id: &str, conn: u64);
    /// Everything up to `seq` reached the peer (see [`AckBy`]); its replay buffer is trimmed.
    async fn ack(&self, id: &str, conn: u64, seq: u64, by: AckBy);
    /// `outbox` takes over peer `id` if `token` is its resume token: it gets `resumed`,
    /// then every message after `last_seq`, in order.
    async fn resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError>;
    /// Expires detached peers; the server calls it about once a second.
    async fn tick(&self, now: Instant);
    /// Rooms and peers right now (peers within their resume grace included).
    fn counts(&self) -> (usize, usize);
    /// Why this node serves only part of what it should right now (a cluster node that
    /// lost Redis); `/healthz` reports it.
    fn degraded(&self) -> Option<String> {
        None
    }
}
