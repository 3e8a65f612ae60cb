//! The in-process bus: rooms spread over several [`Hub`]s by a hash of the room name, each
//! behind its own mutex, so connections on different serving threads that talk in
//! different rooms never wait for one another. A peer lives in its room's hub, and its id
//! names that hub ([`shard_of`]), so every operation on a peer finds its lock at once.
//! Under a lock an operation only updates maps and appends framed messages to the
//! recipients' queues; the queues it touched are written after the lock is released.

use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::Bus;
use crate::metrics::Metrics;
use crate::protocol::{LeaveReason, ProtocolError, ServerMessage};
use crate::room::{shard_of, AckBy, Attached, Hub, HubConfig, OutboxRef, Signal};

/// The in-process [`Bus`]: rooms spread over up to 64 hubs, each behind its own mutex.
pub struct MemoryBus {
    hubs: Vec<Mutex<Hub>>,
}

impl MemoryBus {
    /// `shards` hubs (1 to 64) with the same configuration.
    pub fn new(cfg: HubConfig, shards: usize, metrics: Metrics) -> Self {
        let hubs = (0..shards.clamp(1, 64))
            .map(|shard| {
                Mutex::new(Hub::new(
                    HubConfig {
                        shard,
                        ..cfg.clone()
                    },
                    metrics.clone(),
                ))
            })
            .collect();
        MemoryBus { hubs }
    }

    fn room_shard(&self, room: &str) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(room);
        (h % self.hubs.len() as u64) as usize
    }

    /// The hub of peer `id`; an id no hub made (a forged resume) goes to hub 0, which
    /// does not know it either.
    fn peer_shard(&self, id: &str) -> usize {
        shard_of(id).filter(|&s| s < self.hubs.len()).unwrap_or(0)
    }

    /// Runs `f` on hub `shard`, then flushes what it queued, outside the lock.
    fn with_hub<R>(&self, shard: usize, f: impl FnOnce(&mut Hub) -> R) -> R {
        super::locked(&self.hubs[shard], f)
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
        self.with_hub(self.room_shard(room), |h| {
            h.join(Instant::now(), room, meta, ice_servers, outbox)
        })
    }

    async fn signal(&self, from: &str, batch: &[Signal<'_>]) -> Vec<ProtocolError> {
        self.with_hub(self.peer_shard(from), |h| {
            h.signals(Instant::now(), from, batch)
        })
    }

    async fn pong(&self, id: &str) {
        self.with_hub(self.peer_shard(id), |h| {
            h.notify(Instant::now(), id, |seq| ServerMessage::Pong { seq })
        });
    }

    async fn error(&self, id: &str, err: &ProtocolError) {
        self.with_hub(self.peer_shard(id), |h| {
            h.notify(Instant::now(), id, |seq| ServerMessage::Error {
                code: err.code,
                message: err.message.as_str().into(),
                seq,
            })
        });
    }

    async fn leave(&self, id: &str, reason: LeaveReason) {
        self.with_hub(self.peer_shard(id), |h| {
            h.remove(Instant::now(), id, reason)
        });
    }

    async fn detach(&self, id: &str, conn: u64) {
        self.with_hub(self.peer_shard(id), |h| h.detach(Instant::now(), id, conn));
    }

    async fn ack(&self, id: &str, conn: u64, seq: u64, by: AckBy) {
        self.with_hub(self.peer_shard(id), |h| h.ack(id, conn, seq, by));
    }

    async fn resume(
        &self,
        id: &str,
        token: &str,
        last_seq: u64,
        outbox: OutboxRef,
    ) -> Result<Attached, ProtocolError> {
        self.with_hub(self.peer_shard(id), |h| {
            h.resume(Instant::now(), id, token, last_seq, outbox)
        })
    }

    async fn tick(&self, now: Instant) {
        for shard in 0..self.hubs.len() {
            self.with_hub(shard, |h| h.handle_timeout(now));
        }
    }

    fn counts(&self) -> (usize, usize) {
        (0..self.hubs.len())
            .map(|s| self.with_hub(s, |h| (h.room_count(), h.peer_count())))
            .fold((0, 0), |(r, p), (a, b)| (r + a, p + b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use crate::room::{Delivery, Detach, Outbox, Pushed};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Default)]
    struct Queue(Mutex<Vec<serde_json::Value>>);

    impl Outbox for Queue {
        fn push(&self, _seq: u64, json: &bytes::Bytes, _d: Delivery) -> Pushed {
            self.0
                .lock()
                .unwrap()
                .push(serde_json::from_slice(json).unwrap());
            Pushed::Ok
        }
        fn flush(&self) {}
        fn request_ack(&self) {}
        fn detach(&self, _why: Detach) {}
    }

    /// Rooms spread over the hubs; each peer's id names its room's hub, so signals,
    /// resumes and leaves find it, and counts add up over all hubs.
    #[test]
    fn rooms_spread_over_shards_and_peers_are_found_by_id() {
        let cfg = HubConfig {
            room_capacity: 4,
            resume_grace: Duration::from_secs(30),
            replay_limit: 64,
            replay_bytes: 1 << 20,
            shard: 0,
        };
        let bus = MemoryBus::new(cfg, 8, Metrics::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ice = RawValue::from_string("[]".into()).unwrap();
        rt.block_on(async {
            let mut used = std::collections::HashSet::new();
            for r in 0..40 {
                let room = format!("room-{r}");
                let (qa, qb) = (Arc::new(Queue::default()), Arc::new(Queue::default()));
                let a = bus.join(&room, None, &ice, qa.clone()).await.unwrap();
                let b = bus.join(&room, None, &ice, qb.clone()).await.unwrap();
                let shard = bus.room_shard(&room);
                assert_eq!(
                    (shard_of(&a.id), shard_of(&b.id)),
                    (Some(shard), Some(shard))
                );
                used.insert(shard);
                let data = RawValue::from_string("{\"x\":1}".into()).unwrap();
                let errs = bus
                    .signal(&b.id, &[(a.id.to_string().into(), &*data)])
                    .await;
                assert!(errs.is_empty(), "{errs:?}");
                let got = qa.0.lock().unwrap().last().cloned().unwrap();
                assert_eq!(
                    (got["type"].as_str(), got["from"].as_str()),
                    (Some("signal"), Some(&*b.id))
                );
                if r % 2 == 0 {
                    bus.leave(&b.id, LeaveReason::Left).await;
                }
            }
            assert!(used.len() >= 6, "40 rooms over 8 hubs used {}", used.len());
            assert_eq!(bus.counts(), (40, 60));
            // A forged id is refused like an unknown one.
            let e = bus
                .resume("zzzzzzzzzzzz", "t", 0, Arc::new(Queue::default()))
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::ResumeFailed);
        });
    }
}
