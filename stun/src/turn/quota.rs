//! Allocation quotas shared by every shard: a total cap (`--max-allocations`, exceeded →
//! 508) and a per-user cap (`--user-quota`, exceeded → 486). Touched only when an
//! allocation is created or deleted, never per packet, so a mutex is fine here.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHashMap;

/// Why [`Quota::acquire`] refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The server-wide cap is reached (answered 508).
    #[error("the server holds its maximum number of allocations")]
    ServerFull,
    /// The user's cap is reached (answered 486).
    #[error("this user holds its maximum number of allocations")]
    UserQuota,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_user: FxHashMap<Box<str>, u32>,
}

/// Allocation counts checked against the server-wide and per-user caps, shared by every shard.
#[derive(Debug)]
pub struct Quota {
    max_total: AtomicU32,
    per_user: AtomicU32,
    counts: Mutex<Counts>,
}

impl Quota {
    /// `0` means unlimited for either cap.
    pub fn new(max_total: u32, per_user: u32) -> Self {
        Quota {
            max_total: AtomicU32::new(max_total),
            per_user: AtomicU32::new(per_user),
            counts: Mutex::default(),
        }
    }

    /// Allocations held now, all users together.
    pub fn held(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// New caps (a reload): what is held stays counted; only new allocations see them.
    pub fn set_limits(&self, max_total: u32, per_user: u32) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.per_user.store(per_user, Ordering::Relaxed);
    }

    /// Counts one more allocation for `user`, or says which cap it would exceed.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (max_total, per_user) = (
            self.max_total.load(Ordering::Relaxed),
            self.per_user.load(Ordering::Relaxed),
        );
        if max_total > 0 && c.total >= max_total {
            return Err(QuotaError::ServerFull);
        }
        let used = c.per_user.get(user).copied().unwrap_or(0);
        if per_user > 0 && used >= per_user {
            return Err(QuotaError::UserQuota);
        }
        c.total += 1;
        *c.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(())
    }

    /// Counts one allocation of `user` less (it was deleted).
    pub fn release(&self, user: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(user);
            }
        }
    }

    /// Allocations counted on the whole server.
    pub fn total(&self) -> u32 {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        let q = Quota::new(3, 2);
        q.acquire("a").unwrap();
        q.acquire("a").unwrap();
        assert_eq!(q.acquire("a"), Err(QuotaError::UserQuota));
        q.acquire("b").unwrap();
        assert_eq!(q.acquire("c"), Err(QuotaError::ServerFull));
        q.release("a");
        q.acquire("c").unwrap();
        assert_eq!(q.total(), 3);
    }
}
