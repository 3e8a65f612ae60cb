//! The server side of WebSocket (RFC 6455), by hand.
//!
//! Why not tungstenite here (the clients in tests and the peer CLI use it): the bar for
//! this service is memory per idle connection and CPU per forwarded signal, and both are
//! decided by buffering. tungstenite owns a read and a write buffer per connection and
//! writes from the connection's own task, so a signal from A to B costs a hand-over to B's
//! task (a wake-up, often across threads) and an idle connection keeps its buffers. Here a
//! connection reads into a per-thread scratch buffer and keeps only an unfinished frame;
//! a message to B is written into B's socket by whoever delivers it (see [`socket`]).
//! The framing itself is small: masked client frames in, unmasked final frames out, no
//! extensions.

pub mod frame;
pub mod socket;

use base64::Engine;
use sha1::{Digest, Sha1};

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
