//! Parsing: a `Message` borrows the packet and indexes its attributes without copying.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::attr;
use super::{
    split_message_type, Class, DecodeError, Method, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES,
};

/// One attribute's position: type, value offset, value length.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    typ: u16,
    off: u16,
    len: u16,
}

/// Attribute index kept inline (no heap): `MAX_ATTRIBUTES` slots.
#[derive(Debug, Clone)]
pub struct Attrs {
    slots: [Slot; MAX_ATTRIBUTES],
    n: u8,
}

/// A parsed STUN message borrowing its packet: the header fields, an index of its
/// attributes, and where MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT sit.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    /// The method, from the message type (RFC 8489 §5).
    pub method: Method,
    /// Request, indication, success or error response, from the message type.
    pub class: Class,
    /// The 96-bit transaction id: responses echo it, and IPv6 XOR-*-ADDRESS values are XORed
    /// with it.
    pub transaction_id: [u8; 12],
    attrs: Attrs,
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// Parses one whole STUN message (the packet must be exactly the message: over UDP
    /// a datagram, over TCP one frame).
    pub fn parse(raw: &'a [u8]) -> Result<Self, DecodeError> {
        if raw.len() < HEADER_LEN {
            return Err(DecodeError::TooShort);
        }
        if raw[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        let typ = u16::from_be_bytes([raw[0], raw[1]]);
        let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
        if u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie);
        }
        if !len.is_multiple_of(4) {
            return Err(DecodeError::BadLength("not a multiple of 4"));
        }
        if HEADER_LEN + len != raw.len() {
            return Err(DecodeError::BadLength("does not match the packet size"));
        }
        let (method, class) = split_message_type(typ);
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&raw[8..20]);

        let mut attrs = Attrs {
            slots: [Slot::default(); MAX_ATTRIBUTES],
            n: 0,
        };
        let (mut integrity, mut integrity_sha256, mut fingerprint) = (None, None, None);
        let mut pos = HEADER_LEN;
        while pos < raw.len() {
            if fingerprint.is_some() {
                return Err(DecodeError::AfterFingerprint);
            }
            if raw.len() - pos < 4 {
                return Err(DecodeError::BadLength("truncated attribute header"));
            }
            let t = u16::from_be_bytes([raw[pos], raw[pos + 1]]);
            let l = u16::from_be_bytes([raw[pos + 2], raw[pos + 3]]) as usize;
            let padded = l.div_ceil(4) * 4;
            if raw.len() - pos - 4 < padded {
                return Err(DecodeError::BadLength("attribute runs past the message"));
            }
            match t {
                attr::MESSAGE_INTEGRITY => {
                    if l != 20 {
                        return Err(DecodeError::BadAttribute(
                            "MESSAGE-INTEGRITY must be 20 bytes",
                        ));
                    }
                    integrity.get_or_insert(pos);
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    if !(16..=32).contains(&l) || !l.is_multiple_of(4) {
                        return Err(DecodeError::BadAttribute(
                            "bad MESSAGE-INTEGRITY-SHA256 length",
                        ));
                    }
                    integrity_sha256.get_or_insert(pos);
                }
                attr::FINGERPRINT => {
                    if l != 4 {
                        return Err(DecodeError::BadAttribute("FINGERPRINT must be 4 bytes"));
                    }
                    fingerprint = Some(pos);
                }
                _ => {}
            }
            // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY (other than the SHA-256
            // variant and FINGERPRINT) are ignored, so they are not indexed at all.
            let after_integrity =
                integrity.is_some_and(|p| p < pos) || integrity_sha256.is_some_and(|p| p < pos);
            let protected = matches!(t, attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT);
            if !after_integrity || protected {
                let n = attrs.n as usize;
                if n == MAX_ATTRIBUTES {
                    return Err(DecodeError::TooManyAttributes);
                }
                attrs.slots[n] = Slot {
                    typ: t,
                    off: (pos + 4) as u16,
                    len: l as u16,
                };
                attrs.n += 1;
            }
            pos += 4 + padded;
        }
        Ok(Message {
            raw,
            method,
            class,
            transaction_id,
            attrs,
            integrity,
            integrity_sha256,
            fingerprint,
        })
    }

    /// The whole packet the message was parsed from.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Every indexed attribute as (type, value), in order.
    pub fn attributes(&self) -> impl Iterator<Item = (u16, &'a [u8])> + '_ {
        let raw = self.raw;
        self.attrs.slots[..self.attrs.n as usize]
            .iter()
            .map(move |s| (s.typ, &raw[s.off as usize..s.off as usize + s.len as usize]))
    }

    /// The first attribute of type `t` (RFC 8489 §14: later duplicates are ignored).
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs.slots[..self.attrs.n as usize]
            .iter()
            .find(|s| s.typ == t)
            .map(|s| &self.raw[s.off as usize..s.off as usize + s.len as usize])
    }

    /// Every attribute of type `t`, in order (CreatePermission carries several peers).
    pub fn get_all(&self, t: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        let raw = self.raw;
        self.attrs.slots[..self.attrs.n as usize]
            .iter()
            .filter(move |s| s.typ == t)
            .map(move |s| &raw[s.off as usize..s.off as usize + s.len as usize])
    }

    /// Whether the message has an attribute of type `t` (one [`Message::get`] would return).
    pub fn has(&self, t: u16) -> bool {
        self.get(t).is_some()
    }

    /// Comprehension-required attribute types we do not understand (for a 420 response).
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs.slots[..self.attrs.n as usize]
            .iter()
            .map(|s| s.typ)
            .filter(|&t| t < 0x8000 && !attr::is_understood(t))
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present: the sender claims
    /// long-term credentials.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Whether only MESSAGE-INTEGRITY-SHA256 protects the message, so the answer is signed
    /// with SHA-256 too.
    pub fn uses_sha256(&self) -> bool {
        self.integrity.is_none() && self.integrity_sha256.is_some()
    }

    /// Whether FINGERPRINT is present (checked by [`Message::verify_fingerprint`]).
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// The first attribute of type `t` decoded as an XOR-*-ADDRESS with this message's
    /// transaction id (RFC 8489 §14.2); `None` when absent.
    pub fn xor_address(&self, t: u16) -> Option<Result<std::net::SocketAddr, DecodeError>> {
        self.get(t)
            .map(|v| attr::decode_xor_address(v, &self.transaction_id))
    }

    /// The first attribute of type `t` as UTF-8 text (USERNAME, REALM, NONCE, SOFTWARE); `None`
    /// when absent.
    pub fn text(&self, t: u16) -> Option<Result<&'a str, DecodeError>> {
        self.get(t).map(|v| {
            std::str::from_utf8(v).map_err(|_| DecodeError::BadAttribute("text is not UTF-8"))
        })
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) or, when only that is present,
    /// MESSAGE-INTEGRITY-SHA256 against `key` (RFC 8489 §14.5–14.6). The HMAC covers the
    /// message up to the attribute, with the header length adjusted to end after it.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        if let Some(pos) = self.integrity {
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key size");
            self.feed_prefix(&mut mac, pos, 24);
            mac.verify_truncated_left(&self.raw[pos + 4..pos + 24])
                .is_ok()
        } else if let Some(pos) = self.integrity_sha256 {
            let l = u16::from_be_bytes([self.raw[pos + 2], self.raw[pos + 3]]) as usize;
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key size");
            self.feed_prefix(&mut mac, pos, 4 + l);
            mac.verify_truncated_left(&self.raw[pos + 4..pos + 4 + l])
                .is_ok()
        } else {
            false
        }
    }

    fn feed_prefix<M: Mac>(&self, mac: &mut M, pos: usize, attr_len: usize) {
        let len = (pos + attr_len - HEADER_LEN) as u16;
        mac.update(&self.raw[0..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.raw[4..pos]);
    }

    /// Checks FINGERPRINT when present; a message without one passes.
    pub fn verify_fingerprint(&self) -> bool {
        let Some(pos) = self.fingerprint else {
            return true;
        };
        let got = u32::from_be_bytes([
            self.raw[pos + 4],
            self.raw[pos + 5],
            self.raw[pos + 6],
            self.raw[pos + 7],
        ]);
        fingerprint(self.raw, pos) == got
    }
}

/// CRC-32 of the message up to `pos` (with the length covering the FINGERPRINT
/// attribute), XORed with 0x5354554e (RFC 8489 §14.7).
pub(super) fn fingerprint(raw: &[u8], pos: usize) -> u32 {
    let len = (pos + 8 - HEADER_LEN) as u16;
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[0..2]);
    h.update(&len.to_be_bytes());
    h.update(&raw[4..pos]);
    h.finalize() ^ 0x5354_554E
}
