//! The in-process bus: one [`Hub`] behind a mutex. Under the lock an operation only
//! updates maps and appends framed messages to the recipients' queues; the queues it
//! touched are written after the lock is released, so serving threads never wait for
//! one another's socket writes.

use std::cell::RefCell;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::Bus;
use crate::protocol::{LeaveReason, ProtocolError, ServerMessage};
use crate::room::{AckBy, Attached, Hub, OutboxRef, Signal};

pub struct MemoryBus {
    hub: Mutex<Hub>,
}

thread_local! {
    /// The queues one operation touched (kept allocated per thread).
    static TOUCHED: RefCell<Vec<OutboxRef>> = const { RefCell::new(Vec::new()) };
}

impl MemoryBus {
    pub fn new(hub: Hub) -> Self {
        MemoryBus {
            hub: Mutex::new(hub),
        }
    }

    /// Runs `f` on the hub, then flushes what it queued, outside the lock.
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        let mut touched = TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let r = {
            // A panic while holding the lock cannot leave the hub half-updated in a way
            // that matters more than stopping service would, so keep serving.
            let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            let r = f(&mut hub);
            hub.take_touched(&mut touched);
            r
        };
        for o in touched.drain(..) {
            o.flush();
        }
        TOUCHED.with(|t| *t.borrow_mut() = touched);
        r
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn join(
        &self,
        room: &str,
        meta: Option<Box<RawValue>>,
        ice_servers: &RawValue,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        self.with_hub(|h| h.join(Instant::now(), room, meta, ice_servers, outbox))
    }

    async fn signal(&self, from: &str, batch: &[Signal<'_>]) -> Vec<ProtocolError> {
        self.with_hub(|h| h.signals(Instant::now(), from, batch))
    }

    async fn pong(&self, id: &str) {
        self.with_hub(|h| h.notify(Instant::now(), id, |seq| ServerMessage::Pong { seq }));
    }

    async fn error(&self, id: &str, err: &ProtocolError) {
        self.with_hub(|h| {
            h.notify(Instant::now(), id, |seq| ServerMessage::Error {
                code: err.code,
                message: &err.message,
                seq,
            })
        });
    }

    async fn leave(&self, id: &str, reason: LeaveReason) {
        self.with_hub(|h| h.remove(Instant::now(), id, reason));
    }

    async fn detach(&self, id: &str, conn: u64) {
        self.with_hub(|h| h.detach(Instant::now(), id, conn));
    }

    async fn ack(&self, id: &str, conn: u64, seq: u64, by: AckBy) {
        self.with_hub(|h| h.ack(id, conn, seq, by));
    }

    async fn resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        self.with_hub(|h| h.resume(Instant::now(), id, token, last_seq, outbox))
    }

    async fn tick(&self, now: Instant) {
        self.with_hub(|h| h.handle_timeout(now));
    }

    fn counts(&self) -> (usize, usize) {
        self.with_hub(|h| (h.room_count(), h.peer_count()))
    }
}
