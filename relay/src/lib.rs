//! Icebreaker's STUN/TURN relay (RFC 8489, RFC 8656).
//!
//! [`server::Server`] (from `icebreaker-stun`) is the sans-IO protocol core of one shard;
//! [`io`] drives shards with
//! tokio (one thread, one SO_REUSEPORT UDP socket and TCP listener per shard, so every
//! 5-tuple and its allocation stay on one core). [`run`] starts it all; the `icebreaker`
//! binary embeds the relay through the same call.

#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod io;
pub mod metrics;

/// The wire format and the sans-IO TURN core live in the I/O-free protocol crate; these
/// paths stay for the relay's users.
pub use icebreaker_stun::turn::{self, allocation, policy, ports, quota, server};
pub use icebreaker_stun::turn::{FiveTuple, Transport};
pub use icebreaker_stun::{auth, codec};

pub use config::{RelayArgs, RelayConfig};
pub use io::{run, RelayHandle};
