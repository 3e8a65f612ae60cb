//! Input limits: a per-connection message rate (token bucket), and per client IP a cap on
//! everything it holds (open connections, and peers kept for their resume grace after
//! their connection dropped) and a join rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second; each event takes one.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Takes a token if one is there at `now`; false: over the rate.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Back to a full bucket by `now`: forgetting it changes nothing.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

struct IpEntry {
    /// Slots alive: connections, and detached peers within their resume grace.
    held: usize,
    joins: TokenBucket,
}

/// What one client IP holds. The guard ([`IpSlot`]) gives its slot back on drop; it is
/// shared (`Arc`) between a connection and the peer it joins, so a peer whose connection
/// dropped keeps counting until the hub forgets it.
#[derive(Clone)]
pub struct PerIp {
    inner: Arc<Mutex<HashMap<IpAddr, IpEntry>>>,
    join_rate: f64,
    join_burst: f64,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp::new(f64::INFINITY, f64::INFINITY)
    }
}

/// One slot a client IP holds, given back on drop (shared in an `Arc` by a connection and
/// the peer it joins).
pub struct IpSlot {
    /// The client IP holding the slot.
    pub ip: IpAddr,
    per_ip: PerIp,
}

impl PerIp {
    /// `join_rate` joins per second per IP, bursts of `join_burst`.
    pub fn new(join_rate: f64, join_burst: f64) -> Self {
        PerIp {
            inner: Arc::default(),
            join_rate,
            join_burst,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'m>(
        &self,
        m: &'m mut HashMap<IpAddr, IpEntry>,
        ip: IpAddr,
        now: Instant,
    ) -> &'m mut IpEntry {
        m.entry(ip).or_insert_with(|| IpEntry {
            held: 0,
            joins: TokenBucket::new(self.join_rate, self.join_burst, now),
        })
    }

    /// A slot for a new connection from `ip`, unless it already holds `max`.
    pub fn acquire(&self, ip: IpAddr, max: usize) -> Option<Arc<IpSlot>> {
        let mut m = self.map();
        let e = self.entry(&mut m, ip, Instant::now());
        if e.held >= max {
            return None;
        }
        e.held += 1;
        Some(Arc::new(IpSlot {
            ip,
            per_ip: self.clone(),
        }))
    }

    /// May `ip` join a room now (its join rate)?
    pub fn allow_join(&self, ip: IpAddr, now: Instant) -> bool {
        let mut m = self.map();
        self.entry(&mut m, ip, now).joins.take(now)
    }

    /// Slots `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.map().get(&ip).map_or(0, |e| e.held)
    }

    /// Forgets IPs that hold nothing and whose join bucket is full again (called on the
    /// one-second tick), so the map stays as large as the set of active clients.
    pub fn sweep(&self, now: Instant) {
        self.map()
            .retain(|_, e| e.held > 0 || !e.joins.is_full(now));
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.per_ip.map();
        if let Some(e) = m.get_mut(&self.ip) {
            e.held = e.held.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket() {
        let t = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t);
        assert!(b.take(t) && b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(100)));
        assert!(!b.take(t + Duration::from_millis(100)));
    }

    #[test]
    fn per_ip() {
        let p = PerIp::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = p.acquire(ip, 2).unwrap();
        let b = p.acquire(ip, 2).unwrap();
        assert!(p.acquire(ip, 2).is_none());
        drop(a);
        assert!(p.acquire(ip, 2).is_some());
        // A slot shared by a connection and its peer counts once, until both let go.
        let peer_hold = b.clone();
        drop(b);
        assert_eq!(p.held(ip), 1);
        drop(peer_hold);
        assert_eq!(p.held(ip), 0);
    }

    #[test]
    fn join_rate_survives_reconnects() {
        let t = Instant::now();
        let p = PerIp::new(2.0, 2.0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(p.allow_join(ip, t) && p.allow_join(ip, t));
        assert!(!p.allow_join(ip, t));
        // Holding nothing does not reset the bucket: a sweep keeps the drained entry.
        p.sweep(t);
        assert!(!p.allow_join(ip, t));
        assert!(p.allow_join(ip, t + Duration::from_millis(500)));
        p.sweep(t + Duration::from_secs(5));
        assert!(
            p.inner.lock().unwrap().is_empty(),
            "forgotten once refilled"
        );
    }
}
