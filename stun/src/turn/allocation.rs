//! One allocation (RFC 8656 §2.2): its relayed address, lifetime, permissions and channel
//! bindings. Plain data; the server decides when to create, refresh and drop it.
//!
//! Permissions and channels live in small vectors: a real client has a handful (one per
//! remote candidate), a linear scan over them beats hashing, and an idle allocation stays
//! a few hundred bytes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{DropReason, FiveTuple};
use crate::auth::Key;

/// A permission (RFC 8656 §9): lets packets to and from one peer IP through until it expires.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    /// The peer IP it covers (any port).
    pub ip: IpAddr,
    /// When it lapses unless CreatePermission or ChannelBind refreshes it.
    pub expires: Instant,
}

/// A channel binding (RFC 8656 §12): a channel number standing for one peer transport address.
#[derive(Debug, Clone, Copy)]
pub struct Channel {
    /// The channel number, within [`crate::codec::CHANNEL_MIN`]..=[`crate::codec::CHANNEL_MAX`].
    pub number: u16,
    /// The peer transport address the channel stands for.
    pub peer: SocketAddr,
    /// When the binding lapses unless a ChannelBind refreshes it.
    pub expires: Instant,
}

/// Channels one allocation may hold; a browser uses one per remote candidate pair, and the
/// cap bounds the per-packet channel scan.
pub const MAX_CHANNELS: usize = 256;

/// Peer data connections one TCP allocation may hold at once (RFC 6062): each is a socket
/// on the server, so a client cannot open them without bound.
pub const MAX_CONNECTIONS: usize = 64;

/// Why [`Allocation::can_bind`] refuses a ChannelBind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelBindError {
    /// The channel number is bound to a different peer.
    #[error("channel number is bound to another peer")]
    NumberInUse,
    /// The peer is bound to a different channel number.
    #[error("peer is bound to another channel number")]
    PeerInUse,
    /// The allocation already holds [`MAX_CHANNELS`] channels.
    #[error("too many channels on this allocation")]
    TooMany,
}

/// Per-allocation bandwidth cap (`--max-bps`), in bytes, refilled continuously. Bursts of
/// up to one second's worth are allowed, so media's frame bursts are not cut. UDP data
/// over the cap is dropped ([`TokenBucket::take`]); TCP data (RFC 6062) is paced instead
/// ([`TokenBucket::charge`]), since TCP's own flow control then holds the sender back.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_sec: u64,
    /// Negative after [`TokenBucket::charge`] took more than there was: a debt paid back
    /// by waiting.
    tokens: i64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `bits_per_sec` (at least one byte per second).
    pub fn new(bits_per_sec: u64, now: Instant) -> Self {
        let bytes_per_sec = (bits_per_sec / 8).clamp(1, i64::MAX as u64);
        TokenBucket {
            bytes_per_sec,
            tokens: bytes_per_sec as i64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(1) {
            let add = (elapsed.as_micros() as u64).saturating_mul(self.bytes_per_sec) / 1_000_000;
            let add = i64::try_from(add).unwrap_or(i64::MAX);
            self.tokens = self
                .tokens
                .saturating_add(add)
                .min(self.bytes_per_sec as i64);
            self.last = now;
        }
    }

    /// Refills for the time since the last refill, then takes `n` bytes; `false` (taking
    /// nothing) when too few are left.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` bytes already carried, going into debt if need be, and says how long to
    /// wait before carrying more (zero while within the cap).
    pub fn charge(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_sub(n);
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        let micros = self.tokens.unsigned_abs().saturating_mul(1_000_000) / self.bytes_per_sec;
        Duration::from_micros(micros.max(1_000))
    }
}

/// One client's allocation (RFC 8656): its relayed address, owner, lifetime, permissions
/// and channels.
#[derive(Debug)]
pub struct Allocation {
    /// The client's 5-tuple, which owns the allocation and receives its relayed data.
    pub five_tuple: FiveTuple,
    /// Where the relayed socket is bound.
    pub relay: SocketAddr,
    /// What clients are told (differs behind NAT: `--external-ip`).
    pub advertised: SocketAddr,
    /// A dual allocation's IPv6 relayed socket (ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §7.2):
    /// (bound, advertised). Peers of either family are reached from the socket of theirs.
    pub additional: Option<(SocketAddr, SocketAddr)>,
    /// The USERNAME that created it; requests from another user get 441.
    pub username: Box<str>,
    /// The long-term key the creating Allocate was authenticated with.
    pub key: Key,
    /// When it ends unless a Refresh extends it.
    pub expires: Instant,
    /// Transaction of the Allocate that created it: a retransmission gets the same answer
    /// instead of 437 (RFC 8656 §7.2).
    pub allocate_tid: [u8; 12],
    /// Installed permissions; expired ones stay until [`Allocation::prune`].
    pub permissions: Vec<Permission>,
    /// Channel bindings; expired ones stay until [`Allocation::prune`].
    pub channels: Vec<Channel>,
    /// The bandwidth cap, when `max_bps` is set.
    pub bucket: Option<TokenBucket>,
    /// A TCP allocation (RFC 6062): the relayed address is a TCP listener, and data flows
    /// over data connections, never in Send/Data indications or channels.
    pub tcp: bool,
    /// A TCP allocation's peer data connections (connecting, pending or bound), with the
    /// peer each one is for.
    pub connections: Vec<(super::server::ConnectionId, SocketAddr)>,
}

impl Allocation {
    /// The relayed socket that talks to `peer`: the one of its address family, if the
    /// allocation has one.
    pub fn relay_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        if peer.is_ipv6() == self.relay.is_ipv6() {
            return Some(self.relay);
        }
        self.additional
            .map(|(bound, _)| bound)
            .filter(|b| b.is_ipv6() == peer.is_ipv6())
    }

    /// Whether a live permission covers peer `ip`.
    pub fn is_permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission; `false` when `limit` is reached.
    pub fn permit(&mut self, ip: IpAddr, expires: Instant, limit: usize) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return true;
        }
        if self.permissions.len() >= limit {
            return false;
        }
        self.permissions.push(Permission { ip, expires });
        true
    }

    /// Checks the rebind rules of RFC 8656 §11.2 without changing anything.
    pub fn can_bind(
        &self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), ChannelBindError> {
        for c in self.channels.iter().filter(|c| c.expires > now) {
            if c.number == number && c.peer != peer {
                return Err(ChannelBindError::NumberInUse);
            }
            if c.peer == peer && c.number != number {
                return Err(ChannelBindError::PeerInUse);
            }
        }
        if self.channels.len() >= MAX_CHANNELS && !self.channels.iter().any(|c| c.number == number)
        {
            return Err(ChannelBindError::TooMany);
        }
        Ok(())
    }

    /// Binds or refreshes channel `number` to `peer` until `expires`; check
    /// [`Allocation::can_bind`] first.
    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        match self.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => {
                c.peer = peer;
                c.expires = expires;
            }
            None => self.channels.push(Channel {
                number,
                peer,
                expires,
            }),
        }
    }

    /// The peer a live channel `number` is bound to (for ChannelData from the client).
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`, if any (its data then goes to the client as ChannelData).
    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }

    /// Drops expired permissions and channels (their lookups already ignore them; this
    /// frees the memory).
    pub fn prune(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }

    /// The checks every relayed packet passes, in order: a permission for the peer's IP
    /// (RFC 8656 §9), at most `max_len` bytes, the bandwidth cap. `Err` names the drop reason.
    pub fn admit(
        &mut self,
        peer: IpAddr,
        len: usize,
        max_len: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        if !self.is_permitted(peer, now) {
            return Err(DropReason::NoPermission);
        }
        if len > max_len {
            return Err(DropReason::Oversized);
        }
        if let Some(b) = &mut self.bucket {
            if !b.take(len, now) {
                return Err(DropReason::Bandwidth);
            }
        }
        Ok(())
    }

    /// The lifetime left at `now` (zero once expired).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }
}
