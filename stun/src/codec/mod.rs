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

/// The fixed value in bytes 4..8 of every STUN header (RFC 8489 §5); RFC 3489 messages lack it.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of a STUN header: type, length, magic cookie, transaction id (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// Attributes a message may carry before we refuse it; real TURN messages use < 15.
pub const MAX_ATTRIBUTES: usize = 32;

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489): asks for the client's reflexive address (XOR-MAPPED-ADDRESS).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §7): creates an allocation with a relayed address.
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656 §8): extends an allocation's lifetime, or deletes it with LIFETIME 0.
    pub const REFRESH: Method = Method(0x004);
    /// Send (RFC 8656 §11): an indication carrying client data to a peer.
    pub const SEND: Method = Method(0x006);
    /// Data (RFC 8656 §11): an indication carrying peer data to the client.
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656 §10): installs or refreshes permissions for peer IPs.
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656 §12): binds a channel number to a peer transport address.
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// Connect (RFC 6062): asks for a TCP connection to a peer.
    pub const CONNECT: Method = Method(0x00A);
    /// ConnectionBind (RFC 6062): attaches a new client TCP connection to a peer connection.
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// ConnectionAttempt (RFC 6062): tells the client a peer opened a TCP connection.
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    /// A lowercase label for logs and metrics (`"unknown"` for any other method).
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

/// A STUN message class (RFC 8489 §5): the C1 and C0 bits of the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request: expects a success or error response.
    Request,
    /// An indication: never answered.
    Indication,
    /// A success response.
    Success,
    /// An error response, carrying ERROR-CODE.
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

/// Splits a 14-bit message type into method and class: the inverse of [`message_type`].
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

/// Why a packet is not a well-formed STUN message, or an attribute value is malformed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The top two bits are not 00.
    #[error("first two bits are not zero")]
    NotStun,
    /// The magic cookie is not [`MAGIC_COOKIE`] (an RFC 3489 message, or not STUN).
    #[error("wrong magic cookie")]
    BadCookie,
    /// A length, the header's or an attribute's, does not fit the packet; the text says how.
    #[error("length field disagrees with the packet ({0})")]
    BadLength(&'static str),
    /// More than [`MAX_ATTRIBUTES`] attributes to index.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// An attribute follows FINGERPRINT, which must come last (RFC 8489 §14.7).
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    /// An attribute value is malformed; the text names it.
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
    /// Top bits 00: a STUN message.
    Stun,
    /// Top bits 01: a ChannelData message (RFC 8656 §12.4).
    ChannelData,
    /// Anything else, or an empty packet.
    Other,
}

/// Tells what a client packet is from its first byte (see [`PacketKind`]).
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
/// The highest channel number accepted: RFC 5766's upper bound (see [`CHANNEL_MIN`]).
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
