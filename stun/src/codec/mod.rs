//! STUN/TURN wire format: messages (RFC 8489 §5–6), attributes, integrity and ChannelData
//! (RFC 8656 §12.4).
//!
//! Written by hand rather than with the `stun` crate because this is the relay's hot path:
//! parsing borrows the datagram and records attribute offsets in a fixed array, and the
//! writer appends into a reused buffer, so handling a packet allocates nothing.

pub mod attr;
mod attributes;
mod message;
mod writer;

pub use attributes::{Attributes, Peers, MAX_PEERS};
pub use message::{Attrs, Message};
pub use writer::{write_channel_data, MessageWriter};

use thiserror::Error;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// Attributes a message may carry before we refuse it; real TURN messages use < 15.
pub const MAX_ATTRIBUTES: usize = 32;

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    pub fn name(self) -> &'static str {
        match self {
            Method::BINDING => "binding",
            Method::ALLOCATE => "allocate",
            Method::REFRESH => "refresh",
            Method::SEND => "send",
            Method::DATA => "data",
            Method::CREATE_PERMISSION => "create_permission",
            Method::CHANNEL_BIND => "channel_bind",
            Method::CONNECT => "connect",
            Method::CONNECTION_BIND => "connection_bind",
            Method::CONNECTION_ATTEMPT => "connection_attempt",
            _ => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Packs method and class into the 14-bit message type (RFC 8489 §5, figure 3).
pub fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

pub fn split_message_type(t: u16) -> (Method, Class) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (Method(m), class)
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("first two bits are not zero")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("length field disagrees with the packet ({0})")]
    BadLength(&'static str),
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    #[error("malformed attribute: {0}")]
    BadAttribute(&'static str),
}

impl DecodeError {
    /// The error as a short reason phrase for an error response.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooShort => "shorter than a STUN header",
            DecodeError::NotStun => "not a STUN message",
            DecodeError::BadCookie => "wrong magic cookie",
            DecodeError::BadLength(r) | DecodeError::BadAttribute(r) => r,
            DecodeError::TooManyAttributes => "too many attributes",
            DecodeError::AfterFingerprint => "attribute after FINGERPRINT",
        }
    }
}

/// What the first bytes of a client packet say it is (RFC 8656 §12: the top two bits
/// tell STUN (0b00) from ChannelData (0b01)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(b: &[u8]) -> PacketKind {
    match b.first().map(|x| x >> 6) {
        Some(0) => PacketKind::Stun,
        Some(1) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Channel numbers clients may bind. RFC 8656 §12 narrowed the range to 0x4000–0x4FFF,
/// but RFC 5766 clients (coturn's own among them) still pick from 0x4000–0x7FFF; both are
/// ChannelData on the wire (top bits 01), so the server accepts the older range too.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// Splits a ChannelData message into channel number and application data. Over UDP the
/// datagram may carry padding after the data; over TCP the framer already cut the frame.
pub fn parse_channel_data(b: &[u8]) -> Option<(u16, &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let ch = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&ch) || b.len() < 4 + len {
        return None;
    }
    Some((ch, &b[4..4 + len]))
}

/// How many bytes the next frame on a TCP stream needs (RFC 8656 §12.5: ChannelData over
/// stream transports is padded to a multiple of 4). `None` means the stream is garbage.
pub fn tcp_frame_len(b: &[u8]) -> Option<Option<usize>> {
    if b.len() < 4 {
        return Some(None);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    match classify(b) {
        PacketKind::Stun if len.is_multiple_of(4) => Some(Some(HEADER_LEN + len)),
        PacketKind::ChannelData => Some(Some(4 + len.div_ceil(4) * 4)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod rfc5769;
#[cfg(test)]
mod tests;
