//! Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 6062 §6.2) and the address encodings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{DecodeError, MAGIC_COOKIE};

/// MAPPED-ADDRESS (RFC 8489 §14.1).
pub const MAPPED_ADDRESS: u16 = 0x0001;
/// CHANGE-REQUEST (RFC 5780 §7.2); not in [`is_understood`], so a request with it gets 420.
pub const CHANGE_REQUEST: u16 = 0x0003;
/// USERNAME (RFC 8489 §14.3).
pub const USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY, HMAC-SHA1 (RFC 8489 §14.5).
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE (RFC 8489 §14.8).
pub const ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CHANNEL-NUMBER (RFC 8656 §18.1).
pub const CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME (RFC 8656 §18.2).
pub const LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS (RFC 8656 §18.3).
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA (RFC 8656 §18.4).
pub const DATA: u16 = 0x0013;
/// REALM (RFC 8489 §14.9).
pub const REALM: u16 = 0x0014;
/// NONCE (RFC 8489 §14.10).
pub const NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT (RFC 8656 §18.7).
pub const EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT (RFC 8656 §18.8).
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT (RFC 8656 §18.9).
pub const DONT_FRAGMENT: u16 = 0x001A;
/// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// PASSWORD-ALGORITHM (RFC 8489 §14.12).
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH (RFC 8489 §14.4).
pub const USERHASH: u16 = 0x001E;
/// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// RESERVATION-TOKEN (RFC 8656 §18.10).
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// PRIORITY, ICE (RFC 8445 §16.1).
pub const PRIORITY: u16 = 0x0024;
/// USE-CANDIDATE, ICE (RFC 8445 §16.1).
pub const USE_CANDIDATE: u16 = 0x0025;
/// CONNECTION-ID, TURN over TCP (RFC 6062 §6.2.1).
pub const CONNECTION_ID: u16 = 0x002A;
/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
/// ALTERNATE-DOMAIN (RFC 8489 §14.16).
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
/// ICMP (RFC 8656 §18.13).
pub const ICMP: u16 = 0x8004;
/// SOFTWARE (RFC 8489 §14.14).
pub const SOFTWARE: u16 = 0x8022;
/// ALTERNATE-SERVER (RFC 8489 §14.15).
pub const ALTERNATE_SERVER: u16 = 0x8023;
/// FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT: u16 = 0x8028;
/// ICE-CONTROLLED, ICE (RFC 8445 §16.1).
pub const ICE_CONTROLLED: u16 = 0x8029;
/// ICE-CONTROLLING, ICE (RFC 8445 §16.1).
pub const ICE_CONTROLLING: u16 = 0x802A;
/// RESPONSE-ORIGIN (RFC 5780 §7.3).
pub const RESPONSE_ORIGIN: u16 = 0x802B;
/// OTHER-ADDRESS (RFC 5780 §7.4).
pub const OTHER_ADDRESS: u16 = 0x802C;

/// Comprehension-required attributes (type < 0x8000) this server understands. Anything
/// else in that range makes a request fail with 420 (RFC 8489 §7.3.1): a client that
/// relies on an extension we do not implement must learn so instead of being ignored.
pub fn is_understood(t: u16) -> bool {
    matches!(
        t,
        MAPPED_ADDRESS
            | USERNAME
            | MESSAGE_INTEGRITY
            | ERROR_CODE
            | UNKNOWN_ATTRIBUTES
            | CHANNEL_NUMBER
            | LIFETIME
            | XOR_PEER_ADDRESS
            | DATA
            | REALM
            | NONCE
            | XOR_RELAYED_ADDRESS
            | REQUESTED_ADDRESS_FAMILY
            | EVEN_PORT
            | REQUESTED_TRANSPORT
            | CONNECTION_ID
            | DONT_FRAGMENT
            | MESSAGE_INTEGRITY_SHA256
            | XOR_MAPPED_ADDRESS
            | RESERVATION_TOKEN
            | PRIORITY
            | USE_CANDIDATE
    )
}

/// Address family byte for IPv4, in address values and REQUESTED-ADDRESS-FAMILY (RFC 8489 §14.1).
pub const FAMILY_IPV4: u8 = 0x01;
/// Address family byte for IPv6, in address values and REQUESTED-ADDRESS-FAMILY (RFC 8489 §14.1).
pub const FAMILY_IPV6: u8 = 0x02;

/// Decodes a plain (MAPPED-ADDRESS style) address value.
pub fn decode_address(v: &[u8]) -> Result<SocketAddr, DecodeError> {
    if v.len() < 4 {
        return Err(DecodeError::BadAttribute("address too short"));
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip = match (v[1], v.len()) {
        (FAMILY_IPV4, 8) => IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
        (FAMILY_IPV6, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(DecodeError::BadAttribute("bad address family or length")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2): the port is XORed with the top of the
/// magic cookie, IPv4 with the cookie, IPv6 with cookie ‖ transaction id.
pub fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Result<SocketAddr, DecodeError> {
    let plain = decode_address(v)?;
    let port = plain.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match plain.ip() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ MAGIC_COOKIE)),
        IpAddr::V6(a) => {
            let mut o = a.octets();
            let mask = xor_mask_v6(tid);
            for (b, m) in o.iter_mut().zip(mask) {
                *b ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

fn xor_mask_v6(tid: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    mask
}

/// Encodes an address value, XORed when `tid` is given. Returns the bytes used in `out`.
pub fn encode_address(addr: SocketAddr, tid: Option<&[u8; 12]>, out: &mut [u8; 20]) -> usize {
    let xor_port = if tid.is_some() {
        (MAGIC_COOKIE >> 16) as u16
    } else {
        0
    };
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ xor_port).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => {
            out[1] = FAMILY_IPV4;
            let x = if tid.is_some() { MAGIC_COOKIE } else { 0 };
            out[4..8].copy_from_slice(&(u32::from(a) ^ x).to_be_bytes());
            8
        }
        IpAddr::V6(a) => {
            out[1] = FAMILY_IPV6;
            let mut o = a.octets();
            if let Some(tid) = tid {
                for (b, m) in o.iter_mut().zip(xor_mask_v6(tid)) {
                    *b ^= m;
                }
            }
            out[4..20].copy_from_slice(&o);
            20
        }
    }
}

/// ERROR-CODE value (RFC 8489 §14.8).
pub fn decode_error_code(v: &[u8]) -> Result<(u16, &str), DecodeError> {
    if v.len() < 4 {
        return Err(DecodeError::BadAttribute("ERROR-CODE too short"));
    }
    let code = (v[2] & 0x07) as u16 * 100 + v[3] as u16;
    let reason = std::str::from_utf8(&v[4..])
        .map_err(|_| DecodeError::BadAttribute("ERROR-CODE reason is not UTF-8"))?;
    Ok((code, reason))
}

/// Decodes a value that is exactly one big-endian 32-bit integer (LIFETIME, PRIORITY,
/// CONNECTION-ID).
pub fn decode_u32(v: &[u8]) -> Result<u32, DecodeError> {
    let b: [u8; 4] = v
        .try_into()
        .map_err(|_| DecodeError::BadAttribute("expected a 32-bit value"))?;
    Ok(u32::from_be_bytes(b))
}
