//! Icebreaker's STUN/TURN relay (RFC 8489, RFC 8656).
//!
//! [`server::Server`] is the sans-IO protocol core of one shard; [`io`] drives shards with
//! tokio (one thread, one SO_REUSEPORT UDP socket and TCP listener per shard, so every
//! 5-tuple and its allocation stay on one core). [`run`] starts it all; the `icebreaker`
//! binary embeds the relay through the same call.

pub mod allocation;
pub mod config;
pub mod io;
pub mod metrics;
pub mod policy;
pub mod ports;
pub mod quota;
pub mod server;

use std::net::SocketAddr;

/// The wire format lives in its own I/O-free crate; these paths stay for the relay's users.
pub use icebreaker_stun::{auth, codec};

pub use config::{RelayArgs, RelayConfig};
pub use io::{run, RelayHandle};

/// Client transport (RFC 8656: UDP, TCP; TLS and DTLS come later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Identifies a client's transport association with the server (RFC 8656 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}
