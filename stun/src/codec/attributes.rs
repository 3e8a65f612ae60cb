//! Typed attributes: one pass over a parsed [`Message`], one match arm per attribute type,
//! each value checked and decoded where it is read (the shape str0m's `Attributes::parse`
//! has). The first occurrence of an attribute counts; later duplicates are ignored (RFC 8489
//! §14). Adding an attribute means its constant in [`attr`], a field and one arm here.
//!
//! MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are not here: [`Message`] locates them while
//! parsing, because checking them needs the raw bytes around them.

use std::net::SocketAddr;

use super::attr::{self, decode_address, decode_error_code, decode_u32, decode_xor_address};
use super::{DecodeError, Message};

/// XOR-PEER-ADDRESS attributes one message may carry (CreatePermission names several
/// peers; real clients send one or two).
pub const MAX_PEERS: usize = 16;

/// The XOR-PEER-ADDRESS values of a message, in order; inline, so parsing allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Peers {
    addrs: [SocketAddr; MAX_PEERS],
    len: u8,
}

impl Default for Peers {
    fn default() -> Self {
        Peers {
            addrs: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_PEERS],
            len: 0,
        }
    }
}

impl Peers {
    /// The addresses, as they appeared.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..self.len as usize]
    }

    fn push(&mut self, a: SocketAddr) -> Result<(), DecodeError> {
        let slot = self
            .addrs
            .get_mut(self.len as usize)
            .ok_or(DecodeError::BadAttribute(
                "too many XOR-PEER-ADDRESS attributes",
            ))?;
        *slot = a;
        self.len += 1;
        Ok(())
    }
}

/// Every attribute this codebase reads, decoded.
#[derive(Debug, Clone, Default)]
pub struct Attributes<'a> {
    /// MAPPED-ADDRESS (RFC 3489 servers answer with it).
    pub mapped_address: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS: the client's address as the server saw it.
    pub xor_mapped_address: Option<SocketAddr>,
    /// XOR-RELAYED-ADDRESS: an allocation's relayed address.
    pub xor_relayed_address: Option<SocketAddr>,
    /// A second XOR-RELAYED-ADDRESS: a dual allocation's other family (RFC 8656 §7.2).
    pub xor_relayed_address_2: Option<SocketAddr>,
    /// XOR-PEER-ADDRESS, each one.
    pub xor_peer_addresses: Peers,
    /// USERNAME.
    pub username: Option<&'a str>,
    /// REALM.
    pub realm: Option<&'a str>,
    /// NONCE.
    pub nonce: Option<&'a str>,
    /// SOFTWARE.
    pub software: Option<&'a str>,
    /// ERROR-CODE: the code and its reason phrase.
    pub error_code: Option<(u16, &'a str)>,
    /// CHANNEL-NUMBER.
    pub channel_number: Option<u16>,
    /// LIFETIME in seconds.
    pub lifetime: Option<u32>,
    /// DATA.
    pub data: Option<&'a [u8]>,
    /// REQUESTED-ADDRESS-FAMILY: the family byte (1 IPv4, 2 IPv6).
    pub requested_address_family: Option<u8>,
    /// ADDITIONAL-ADDRESS-FAMILY: the family byte of a dual allocation's second address.
    pub additional_address_family: Option<u8>,
    /// ADDRESS-ERROR-CODE: the family that could not be allocated, code and reason.
    pub address_error_code: Option<(u8, u16, &'a str)>,
    /// EVEN-PORT: whether the R bit asks to reserve the next port.
    pub even_port: Option<bool>,
    /// REQUESTED-TRANSPORT: the IP protocol number (17 = UDP).
    pub requested_transport: Option<u8>,
    /// DONT-FRAGMENT is present.
    pub dont_fragment: bool,
    /// RESERVATION-TOKEN.
    pub reservation_token: Option<u64>,
    /// PRIORITY (ICE).
    pub priority: Option<u32>,
    /// USE-CANDIDATE (ICE) is present.
    pub use_candidate: bool,
    /// ICE-CONTROLLED tie breaker.
    pub ice_controlled: Option<u64>,
    /// ICE-CONTROLLING tie breaker.
    pub ice_controlling: Option<u64>,
    /// CONNECTION-ID (RFC 6062).
    pub connection_id: Option<u32>,
    /// RESPONSE-ORIGIN (RFC 5780).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780).
    pub other_address: Option<SocketAddr>,
    /// ALTERNATE-SERVER.
    pub alternate_server: Option<SocketAddr>,
}

fn text<'v>(v: &'v [u8], what: &'static str) -> Result<&'v str, DecodeError> {
    std::str::from_utf8(v).map_err(|_| DecodeError::BadAttribute(what))
}

fn u64_of(v: &[u8], what: &'static str) -> Result<u64, DecodeError> {
    let b: [u8; 8] = v.try_into().map_err(|_| DecodeError::BadAttribute(what))?;
    Ok(u64::from_be_bytes(b))
}

fn u32_of(v: &[u8], what: &'static str) -> Result<u32, DecodeError> {
    decode_u32(v).map_err(|_| DecodeError::BadAttribute(what))
}

fn first<T>(
    slot: &mut Option<T>,
    v: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<(), DecodeError> {
    if slot.is_none() {
        *slot = Some(v()?);
    }
    Ok(())
}

impl<'a> Attributes<'a> {
    /// Decodes the attributes of `msg`; the error names the first malformed one.
    pub fn parse(msg: &Message<'a>) -> Result<Attributes<'a>, DecodeError> {
        let tid = &msg.transaction_id;
        let xor = |v: &[u8], what| {
            decode_xor_address(v, tid).map_err(|_| DecodeError::BadAttribute(what))
        };
        let plain = |v: &[u8], what| decode_address(v).map_err(|_| DecodeError::BadAttribute(what));
        let mut a = Attributes::default();
        for (t, v) in msg.attributes() {
            match t {
                attr::MAPPED_ADDRESS => {
                    first(&mut a.mapped_address, || plain(v, "bad MAPPED-ADDRESS"))?
                }
                attr::XOR_MAPPED_ADDRESS => first(&mut a.xor_mapped_address, || {
                    xor(v, "bad XOR-MAPPED-ADDRESS")
                })?,
                attr::XOR_RELAYED_ADDRESS => {
                    let addr = xor(v, "bad XOR-RELAYED-ADDRESS")?;
                    match a.xor_relayed_address {
                        None => a.xor_relayed_address = Some(addr),
                        Some(_) => {
                            a.xor_relayed_address_2.get_or_insert(addr);
                        }
                    }
                }
                attr::XOR_PEER_ADDRESS => {
                    a.xor_peer_addresses.push(xor(v, "bad XOR-PEER-ADDRESS")?)?
                }
                attr::USERNAME => first(&mut a.username, || text(v, "USERNAME is not UTF-8"))?,
                attr::REALM => first(&mut a.realm, || text(v, "REALM is not UTF-8"))?,
                attr::NONCE => first(&mut a.nonce, || text(v, "NONCE is not UTF-8"))?,
                attr::SOFTWARE => first(&mut a.software, || text(v, "SOFTWARE is not UTF-8"))?,
                attr::ERROR_CODE => first(&mut a.error_code, || decode_error_code(v))?,
                attr::CHANNEL_NUMBER => first(&mut a.channel_number, || match v {
                    [h, l, _, _] => Ok(u16::from_be_bytes([*h, *l])),
                    _ => Err(DecodeError::BadAttribute(
                        "CHANNEL-NUMBER is missing or malformed",
                    )),
                })?,
                attr::LIFETIME => first(&mut a.lifetime, || u32_of(v, "bad LIFETIME"))?,
                attr::DATA => first(&mut a.data, || Ok(v))?,
                attr::REQUESTED_ADDRESS_FAMILY => {
                    first(&mut a.requested_address_family, || match v {
                        [f, _, _, _] => Ok(*f),
                        _ => Err(DecodeError::BadAttribute("bad REQUESTED-ADDRESS-FAMILY")),
                    })?
                }
                attr::ADDITIONAL_ADDRESS_FAMILY => {
                    first(&mut a.additional_address_family, || match v {
                        [f, _, _, _] => Ok(*f),
                        _ => Err(DecodeError::BadAttribute("bad ADDITIONAL-ADDRESS-FAMILY")),
                    })?
                }
                attr::ADDRESS_ERROR_CODE => first(&mut a.address_error_code, || match v {
                    // ERROR-CODE's layout with the family in its first byte.
                    [f, _, _, _, ..] => {
                        let (code, reason) = decode_error_code(v)?;
                        Ok((*f, code, reason))
                    }
                    _ => Err(DecodeError::BadAttribute("bad ADDRESS-ERROR-CODE")),
                })?,
                attr::EVEN_PORT => first(&mut a.even_port, || match v {
                    [r, ..] => Ok(r & 0x80 != 0),
                    [] => Err(DecodeError::BadAttribute("bad EVEN-PORT")),
                })?,
                attr::REQUESTED_TRANSPORT => first(&mut a.requested_transport, || match v {
                    [p, _, _, _] => Ok(*p),
                    _ => Err(DecodeError::BadAttribute("bad REQUESTED-TRANSPORT")),
                })?,
                attr::DONT_FRAGMENT => a.dont_fragment = true,
                attr::RESERVATION_TOKEN => first(&mut a.reservation_token, || {
                    u64_of(v, "bad RESERVATION-TOKEN")
                })?,
                attr::PRIORITY => first(&mut a.priority, || u32_of(v, "bad PRIORITY"))?,
                attr::USE_CANDIDATE => a.use_candidate = true,
                attr::ICE_CONTROLLED => {
                    first(&mut a.ice_controlled, || u64_of(v, "bad ICE-CONTROLLED"))?
                }
                attr::ICE_CONTROLLING => {
                    first(&mut a.ice_controlling, || u64_of(v, "bad ICE-CONTROLLING"))?
                }
                attr::CONNECTION_ID => {
                    first(&mut a.connection_id, || u32_of(v, "bad CONNECTION-ID"))?
                }
                attr::RESPONSE_ORIGIN => {
                    first(&mut a.response_origin, || plain(v, "bad RESPONSE-ORIGIN"))?
                }
                attr::OTHER_ADDRESS => {
                    first(&mut a.other_address, || plain(v, "bad OTHER-ADDRESS"))?
                }
                attr::ALTERNATE_SERVER => {
                    first(&mut a.alternate_server, || plain(v, "bad ALTERNATE-SERVER"))?
                }
                // Located by `Message::parse` (the checks need the bytes around them).
                attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT => {}
                // Not read here; comprehension-required unknowns are `Message::unknown_required`.
                _ => {}
            }
        }
        Ok(a)
    }
}
