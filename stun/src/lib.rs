//! The STUN/TURN wire format, with no I/O: what the relay, `icebreaker-peer`'s doctor and
//! the tests share. [`codec`] parses and writes messages (RFC 8489, RFC 8656), attributes,
//! MESSAGE-INTEGRITY(-SHA256), FINGERPRINT and ChannelData; [`auth`] holds long-term keys,
//! TURN REST credentials and the relay's stateless nonces.

#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod codec;
pub mod turn;
