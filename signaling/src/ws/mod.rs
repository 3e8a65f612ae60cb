//! The server side of WebSocket (RFC 6455), with no I/O and nothing of rooms or protocol
//! v1: [`handshake`] checks an upgrade request, [`reader`] turns client bytes into whole
//! messages, control frames and violations, [`frame`] parses and writes frame headers, and
//! [`close`] names the close codes. The connection driver (`crate::session`) owns the
//! socket and feeds these.
//!
//! Why not tungstenite here (the clients in tests and the peer CLI use it): the bar for
//! this service is memory per idle connection and CPU per forwarded signal, and both are
//! decided by buffering. tungstenite owns a read and a write buffer per connection and
//! writes from the connection's own task. Here a connection reads into a per-thread scratch
//! buffer and keeps only an unfinished frame, and a message is written into the
//! recipient's socket by whoever delivers it. The framing itself is small: masked client
//! frames in, unmasked final frames out, no extensions.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod reader;

pub use close::CloseCode;
pub use handshake::{accept, Refusal};
pub use reader::{Reader, Violation, WsEvent};
