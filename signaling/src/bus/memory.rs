//! The in-process bus: one [`Hub`] behind a mutex. Every operation is a few map lookups
//! and socket writes, so the lock is held for microseconds.

use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::Bus;
use crate::protocol::{LeaveReason, ProtocolError, ServerMessage};
use crate::room::{Attached, Hub, OutboxRef, Signal};

pub struct MemoryBus {
    hub: Mutex<Hub>,
}

impl MemoryBus {
    pub fn new(hub: Hub) -> Self {
        MemoryBus {
            hub: Mutex::new(hub),
        }
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock cannot leave the hub half-updated in a way that
        // matters more than stopping service would, so keep serving.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
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
        self.hub()
            .join(Instant::now(), room, meta, ice_servers, outbox)
    }

    async fn signal(&self, from: &str, batch: &[Signal<'_>]) -> Vec<ProtocolError> {
        self.hub().signals(Instant::now(), from, batch)
    }

    async fn pong(&self, id: &str) {
        self.hub()
            .notify(Instant::now(), id, |seq| ServerMessage::Pong { seq });
    }

    async fn error(&self, id: &str, err: &ProtocolError) {
        self.hub()
            .notify(Instant::now(), id, |seq| ServerMessage::Error {
                code: err.code,
                message: &err.message,
                seq,
            });
    }

    async fn leave(&self, id: &str, reason: LeaveReason) {
        self.hub().remove(Instant::now(), id, reason);
    }

    async fn detach(&self, id: &str, conn: u64) {
        self.hub().detach(Instant::now(), id, conn);
    }

    async fn ack(&self, id: &str, conn: u64, seq: u64) {
        self.hub().ack(id, conn, seq);
    }

    async fn resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        self.hub()
            .resume(Instant::now(), id, token, last_seq, outbox)
    }

    async fn tick(&self, now: Instant) {
        self.hub().handle_timeout(now);
    }

    fn counts(&self) -> (usize, usize) {
        let h = self.hub();
        (h.room_count(), h.peer_count())
    }
}
