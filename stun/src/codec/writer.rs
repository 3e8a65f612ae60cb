//! Building messages into a caller-owned buffer (reused across packets: no allocation once
//! it has grown to the largest message).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use super::message::fingerprint;
use super::{attr, message_type, Class, Method, HEADER_LEN, MAGIC_COOKIE};

/// Builds one STUN message in a caller's buffer: the header, attributes in order, then
/// optionally MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT; finishing sets the header length.
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    tid: [u8; 12],
}

impl<'b> MessageWriter<'b> {
    /// Clears `buf` and writes a header for `method`/`class`.
    pub fn new(buf: &'b mut Vec<u8>, method: Method, class: Class, tid: [u8; 12]) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        MessageWriter { buf, tid }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute with zero padding to a 4-byte boundary.
    pub fn attr(&mut self, t: u16, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        let pad = (4 - v.len() % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// Appends an attribute holding one big-endian 32-bit value (LIFETIME).
    pub fn u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.attr(t, &v.to_be_bytes())
    }

    /// Appends an XOR-*-ADDRESS attribute of type `t` for `a` (RFC 8489 §14.2).
    pub fn xor_address(&mut self, t: u16, a: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = attr::encode_address(a, Some(&self.tid), &mut v);
        self.attr(t, &v[..n])
    }

    /// Appends a plain address attribute of type `t` for `a` (MAPPED-ADDRESS style).
    pub fn address(&mut self, t: u16, a: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = attr::encode_address(a, None, &mut v);
        self.attr(t, &v[..n])
    }

    /// ERROR-CODE: class in the hundreds digit, number below (RFC 8489 §14.8).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        self.coded(attr::ERROR_CODE, 0, code, reason)
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.11): why a dual allocation's `family` (1 IPv4,
    /// 2 IPv6) was not allocated; ERROR-CODE's layout with the family in the first byte.
    pub fn address_error_code(&mut self, family: u8, code: u16, reason: &str) -> &mut Self {
        self.coded(attr::ADDRESS_ERROR_CODE, family, code, reason)
    }

    fn coded(&mut self, t: u16, first: u8, code: u16, reason: &str) -> &mut Self {
        let reason = &reason.as_bytes()[..reason.len().min(763)];
        let len = 4 + reason.len();
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        self.buf
            .extend_from_slice(&[first, 0, (code / 100) as u8, (code % 100) as u8]);
        self.buf.extend_from_slice(reason);
        let pad = (4 - len % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// Appends UNKNOWN-ATTRIBUTES (RFC 8489 §14.13) listing `types`; only the first 16 fit.
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let mut v = [0u8; 2 * 16];
        let n = types.len().min(16);
        for (i, t) in types[..n].iter().enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        self.attr(attr::UNKNOWN_ATTRIBUTES, &v[..2 * n])
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1), or MESSAGE-INTEGRITY-SHA256 when `sha256`.
    pub fn integrity(&mut self, key: &[u8], sha256: bool) -> &mut Self {
        let pos = self.buf.len();
        let attr_len = if sha256 { 36 } else { 24 };
        let len = (pos + attr_len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        if sha256 {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key size");
            mac.update(self.buf);
            let tag = mac.finalize().into_bytes();
            self.attr(attr::MESSAGE_INTEGRITY_SHA256, &tag);
        } else {
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key size");
            mac.update(self.buf);
            let tag = mac.finalize().into_bytes();
            self.attr(attr::MESSAGE_INTEGRITY, &tag);
        }
        self
    }

    /// Appends FINGERPRINT and finishes the message.
    pub fn finish_with_fingerprint(mut self) -> &'b [u8] {
        let pos = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.set_len();
        let crc = fingerprint(self.buf, pos);
        self.buf[pos..pos + 2].copy_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf[pos + 2..pos + 4].copy_from_slice(&4u16.to_be_bytes());
        self.buf[pos + 4..pos + 8].copy_from_slice(&crc.to_be_bytes());
        self.buf
    }

    /// Sets the header length and returns the message, without FINGERPRINT.
    pub fn finish(mut self) -> &'b [u8] {
        self.set_len();
        self.buf
    }
}

/// Writes a ChannelData header + data into `buf`, padded to 4 bytes when `pad` (TCP).
pub fn write_channel_data(buf: &mut Vec<u8>, channel: u16, data: &[u8], pad: bool) {
    buf.clear();
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u16).to_be_bytes());
    buf.extend_from_slice(data);
    if pad {
        let p = (4 - data.len() % 4) % 4;
        buf.extend_from_slice(&[0u8; 3][..p]);
    }
}
