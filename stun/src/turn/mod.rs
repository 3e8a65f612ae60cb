//! The sans-IO TURN server (RFC 8656): [`server::Server`] takes a packet, its 5-tuple
//! and the time, and returns what to send; relayed sockets are opened and closed through
//! [`server::RelaySockets`], and what happens is reported to an [`Observer`]. The relay's
//! tokio drivers (`icebreaker-relay`) and the fake-clock tests drive the same core.

pub mod allocation;
pub mod policy;
pub mod ports;
pub mod quota;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

pub use policy::Refusal;

/// Client transport (RFC 8656: UDP, or TCP, which TLS connections are too; DTLS, RFC 7350).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams on the listen port.
    Udp,
    /// A stream connection to the listen port (RFC 8656 §3.1).
    Tcp,
    /// DTLS associations on a UDP port (RFC 7350): datagrams, so no ChannelData padding
    /// and no TCP relaying, but answers go back through the association.
    Dtls,
}

/// Identifies a client's transport association with the server (RFC 8656 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The server address the client talks to.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
}

/// What the TURN core needs to know: addresses, credentials, policy, lifetimes, limits.
/// Plain data; the relay binary fills it from flags, a file and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// (bind address, advertised address) of relayed sockets, IPv4.
    pub relay_v4: Option<(IpAddr, IpAddr)>,
    /// (bind address, advertised address) of relayed sockets, IPv6.
    pub relay_v6: Option<(IpAddr, IpAddr)>,
    /// Relayed port range, inclusive.
    pub relay_ports: (u16, u16),
    /// REALM of the long-term credentials.
    pub realm: String,
    /// Static long-term users (name, password).
    pub users: Vec<(String, String)>,
    /// TURN REST shared secrets; the first signs nothing, all verify (rotation).
    pub auth_secrets: Vec<String>,
    /// Peer ranges allowed beyond the safe default.
    pub allow_peer: Vec<IpNet>,
    /// Peer ranges always refused.
    pub deny_peer: Vec<IpNet>,
    /// Allocation lifetime when the client asks for none, and the minimum.
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a nonce stays valid before 438.
    pub nonce_lifetime: Duration,
    /// Allocations on the whole server (0: no limit); past it 508.
    pub max_allocations: u32,
    /// Allocations per user (0: no limit); past it 486.
    pub user_quota: u32,
    /// Bandwidth per allocation in bits/s (0: no limit).
    pub max_bps: u64,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// SOFTWARE in authenticated answers.
    pub software: String,
}

impl Default for Config {
    fn default() -> Self {
        let lo: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        Config {
            relay_v4: Some((lo, lo)),
            relay_v6: None,
            relay_ports: (49152, 65535),
            realm: "icebreaker".into(),
            users: Vec::new(),
            auth_secrets: Vec::new(),
            allow_peer: Vec::new(),
            deny_peer: Vec::new(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 0,
            user_quota: 0,
            max_bps: 0,
            max_permissions: 256,
            software: concat!("icebreaker-relay/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Why a packet was not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not STUN or ChannelData, or a message that does not parse.
    Malformed,
    /// FINGERPRINT present and wrong.
    BadFingerprint,
    /// A response or an indication other than Send from a client.
    UnexpectedMessage,
    /// ChannelData on a channel that is not bound.
    NoChannel,
    /// To or from a peer without a permission (or on an expired allocation).
    NoPermission,
    /// Too large to wrap in a Data indication or ChannelData.
    Oversized,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// To or from the relay's own listen address.
    OwnAddress,
}

impl DropReason {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::UnexpectedMessage => "unexpected_message",
            DropReason::NoChannel => "no_channel",
            DropReason::NoPermission => "no_permission",
            DropReason::Oversized => "oversized",
            DropReason::Bandwidth => "bandwidth",
            DropReason::OwnAddress => "own_address",
        }
    }
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeleteReason {
    /// Its lifetime ran out.
    Expired,
    /// Refresh with LIFETIME 0.
    Refresh,
    /// The client's TCP connection closed.
    ConnectionClosed,
    /// The server is stopping.
    Shutdown,
}

impl DeleteReason {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Expired => "expired",
            DeleteReason::Refresh => "refresh",
            DeleteReason::ConnectionClosed => "connection_closed",
            DeleteReason::Shutdown => "shutdown",
        }
    }
}

/// Which way a relayed packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client out of its relayed address.
    ToPeer,
    /// From a peer to the client.
    ToClient,
}

/// What happened to a peer data connection of a TCP allocation (RFC 6062).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionEvent {
    /// A Connect reached its peer.
    Connected,
    /// A Connect failed or timed out (447).
    ConnectFailed,
    /// A peer connected to a relayed address with a permission (ConnectionAttempt sent).
    Accepted,
    /// A peer connected to a relayed address without a permission, or past the cap: closed.
    Refused,
    /// A ConnectionBind joined a client data connection to it.
    Bound,
    /// No ConnectionBind came within 30 s: closed.
    Expired,
}

impl ConnectionEvent {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionEvent::Connected => "connected",
            ConnectionEvent::ConnectFailed => "connect_failed",
            ConnectionEvent::Accepted => "accepted",
            ConnectionEvent::Refused => "refused",
            ConnectionEvent::Bound => "bound",
            ConnectionEvent::Expired => "expired",
        }
    }
}

/// What the core reports as it runs: the relay turns it into Prometheus metrics. Every
/// method has an empty default, and `()` observes nothing (tests).
pub trait Observer {
    /// A request was answered: its method and the error code (0 for success).
    fn request(&self, method: crate::codec::Method, code: u16) {
        let _ = (method, code);
    }
    /// A packet was dropped.
    fn dropped(&self, reason: DropReason) {
        let _ = reason;
    }
    /// A permission or channel was refused for the peer it names.
    fn refused(&self, refusal: Refusal) {
        let _ = refusal;
    }
    /// An allocation was created.
    fn allocation_created(&self) {}
    /// An allocation ended.
    fn allocation_deleted(&self, reason: DeleteReason) {
        let _ = reason;
    }
    /// A packet of `bytes` application bytes was relayed.
    fn relayed(&self, direction: Direction, bytes: usize) {
        let _ = (direction, bytes);
    }
    /// Something happened to a TCP allocation's peer data connection.
    fn connection(&self, event: ConnectionEvent) {
        let _ = event;
    }
}

impl Observer for () {}
