//! `icebreaker`: WebRTC signaling over WebSocket (protocol v1, see docs/protocol.md),
//! TURN credentials for the bundled relay, and the web client.

#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod http;
pub mod ice;
pub mod limits;
pub mod metrics;
/// Protocol v1 lives in its own crate (one definition for server, peer and load client).
pub use icebreaker_protocol as protocol;
/// The PROXY protocol reader is shared with the relay.
pub use icebreaker_service::proxy;
pub mod room;
pub mod session;
pub mod ws;
