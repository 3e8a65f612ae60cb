//! The relayed-port pool. Ports are handed out in random order (RFC 8656 §7.2 asks for
//! unpredictable relayed ports). The server keeps one pool for all shards (see
//! `Shared::ports`), so no shard answers 508 while another has ports left; a pool can
//! still be cut into disjoint slices by pair index.

use rand::seq::SliceRandom;

/// Free relayed ports in random order, plus a bitmap of them for constant-time lookups.
pub struct PortPool {
    free: Vec<u16>,
    is_free: Box<[u64; 1024]>,
}

impl PortPool {
    /// Ports `lo..=hi` whose pair index `(p - lo) / 2` falls to `shard` of `shards`
    /// (pairs, so EVEN-PORT with a reservation of p+1 stays inside one shard).
    pub fn new(lo: u16, hi: u16, shard: usize, shards: usize) -> Self {
        let mut free: Vec<u16> = (lo..=hi)
            .filter(|p| ((p - lo) as usize / 2) % shards.max(1) == shard)
            .collect();
        free.shuffle(&mut rand::thread_rng());
        let mut is_free = Box::new([0u64; 1024]);
        for &p in &free {
            is_free[p as usize / 64] |= 1 << (p % 64);
        }
        PortPool { free, is_free }
    }

    /// How many ports are free.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no port is free.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Whether port `p` is free in this pool.
    pub fn contains(&self, p: u16) -> bool {
        self.is_free[p as usize / 64] & (1 << (p % 64)) != 0
    }

    fn mark(&mut self, p: u16, free: bool) {
        if free {
            self.is_free[p as usize / 64] |= 1 << (p % 64);
        } else {
            self.is_free[p as usize / 64] &= !(1 << (p % 64));
        }
    }

    /// Any free port.
    pub fn take(&mut self) -> Option<u16> {
        let p = self.free.pop()?;
        self.mark(p, false);
        Some(p)
    }

    /// An even port; with `pair`, also takes p+1 (for EVEN-PORT with the R bit).
    pub fn take_even(&mut self, pair: bool) -> Option<u16> {
        let i = self
            .free
            .iter()
            .rposition(|&p| p % 2 == 0 && (!pair || (p < u16::MAX && self.contains(p + 1))))?;
        let p = self.free.swap_remove(i);
        self.mark(p, false);
        if pair {
            self.take_specific(p + 1);
        }
        Some(p)
    }

    /// Takes port `p` if it is free; `false` when it is not.
    pub fn take_specific(&mut self, p: u16) -> bool {
        if !self.contains(p) {
            return false;
        }
        if let Some(i) = self.free.iter().position(|&x| x == p) {
            self.free.swap_remove(i);
        }
        self.mark(p, false);
        true
    }

    /// Puts port `p` back at a random place; releasing a free port does nothing.
    pub fn release(&mut self, p: u16) {
        if self.contains(p) {
            return;
        }
        self.mark(p, true);
        self.free.push(p);
        // Keep the order unpredictable: swap the returned port to a random place.
        let n = self.free.len();
        let j = rand::random::<usize>() % n;
        self.free.swap(j, n - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_pairs_stay_together() {
        let a = PortPool::new(50000, 50099, 0, 2);
        let b = PortPool::new(50000, 50099, 1, 2);
        assert_eq!(a.len() + b.len(), 100);
        for p in 50000..=50099u16 {
            assert!(a.contains(p) ^ b.contains(p));
            if p % 2 == 0 {
                assert_eq!(a.contains(p), a.contains(p + 1));
            }
        }
    }

    #[test]
    fn take_release_even() {
        let mut pool = PortPool::new(50000, 50009, 0, 1);
        let e = pool.take_even(true).unwrap();
        assert_eq!(e % 2, 0);
        assert!(!pool.contains(e) && !pool.contains(e + 1));
        assert_eq!(pool.len(), 8);
        pool.release(e + 1);
        pool.release(e + 1);
        assert_eq!(pool.len(), 9);
        let mut n = 0;
        while pool.take().is_some() {
            n += 1;
        }
        assert_eq!(n, 9);
        assert!(pool.take_even(false).is_none());
    }
}
