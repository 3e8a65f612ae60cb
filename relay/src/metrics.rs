//! Prometheus metrics. Per-packet counters are labelled by shard so each shard bumps its
//! own cache line (no cross-core contention on the hot path); sum over `shard` in queries.

use icebreaker_stun::codec::Method;
use icebreaker_stun::turn::{
    ConnectionEvent, DeleteReason, Direction, DropReason, Observer, Refusal,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels a per-shard metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// The shard's index, 0 to threads - 1.
    pub shard: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Labels relayed traffic: which shard, which way.
pub struct DirLabel {
    /// The shard's index, 0 to threads - 1.
    pub shard: u16,
    /// `to_peer` (client to peer) or `to_client` (peer to client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Labels a count by why it happened (a drop, a deletion, a refusal).
pub struct ReasonLabel {
    /// The reason's snake_case name, e.g. `default_deny`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Labels an answered STUN/TURN request.
pub struct RequestLabel {
    /// The request's method name, e.g. `allocate`.
    pub method: &'static str,
    /// The error response code sent, or 0 for a success response.
    pub code: u16,
}

/// `event` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// What happened.
    pub event: &'static str,
}

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: &'static str,
}

/// Handles registered once; cloned into each shard.
#[derive(Clone, Default)]
pub struct RelayMetrics {
    /// Live allocations, per shard.
    pub allocations: Family<ShardLabel, Gauge>,
    /// Allocations created, per shard.
    pub allocations_created: Family<ShardLabel, Counter>,
    /// Allocations deleted, by reason.
    pub allocations_deleted: Family<ReasonLabel, Counter>,
    /// Requests answered, by method and response code.
    pub requests: Family<RequestLabel, Counter>,
    /// Packets relayed, per shard and direction.
    pub packets: Family<DirLabel, Counter>,
    /// Application bytes relayed, per shard and direction.
    pub bytes: Family<DirLabel, Counter>,
    /// Datagrams from one allocation to another's relayed address on the same shard,
    /// handed over without the kernel, per shard.
    pub internal: Family<ShardLabel, Counter>,
    /// Datagrams for another shard's allocation that went through the kernel instead
    /// because that shard's queue was full, per shard.
    pub internal_overflow: Family<ShardLabel, Counter>,
    /// Packets dropped, by reason (the core's and the drivers').
    pub dropped: Family<ReasonLabel, Counter>,
    /// Permissions and channels refused for the peer they name, by reason.
    pub peer_refusals: Family<ReasonLabel, Counter>,
    /// Open client TCP connections, all shards together.
    pub tcp_connections: Gauge,
    /// TLS handshakes on client connections, by result (ok, failed, timeout).
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// DTLS handshakes (TURN over DTLS), by result (ok, failed, timeout).
    pub dtls_handshakes: Family<ResultLabel, Counter>,
    /// PROXY protocol headers read from trusted load balancers, by result (client, local,
    /// invalid, closed, timeout).
    pub proxy_headers: Family<ResultLabel, Counter>,
    /// Certificate reloads (SIGHUP or the files changed), by result (ok, error).
    pub tls_cert_reloads: Family<ResultLabel, Counter>,
    /// Relayed ports free (not bound, reserved or cooling), set when scraped.
    pub ports_free: Gauge,
    /// SIGHUP reloads that took a new configuration (the standalone binary).
    pub config_reloads: Counter,
    /// SIGHUP reloads refused because the new configuration was not valid.
    pub config_reload_errors: Counter,
    /// Peer data connections of TCP allocations (RFC 6062), by event.
    pub tcp_peer_connections: Family<EventLabel, Counter>,
    /// Data connections piping bytes between a client and a TCP peer now.
    pub tcp_data_connections: Gauge,
    /// Times a data connection was held back by its allocation's bandwidth cap (TCP is
    /// paced, not dropped).
    pub tcp_bandwidth_waits: Counter,
}

impl RelayMetrics {
    /// Registers every metric in `r` under the `icebreaker_relay` prefix.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("icebreaker_relay");
        r.register("allocations", "Live allocations", self.allocations.clone());
        r.register(
            "config_reloads",
            "SIGHUP reloads that took a new configuration",
            self.config_reloads.clone(),
        );
        r.register(
            "config_reload_errors",
            "SIGHUP reloads refused because the new configuration was not valid",
            self.config_reload_errors.clone(),
        );
        r.register(
            "allocations_created",
            "Allocations created",
            self.allocations_created.clone(),
        );
        r.register(
            "allocations_deleted",
            "Allocations deleted, by reason",
            self.allocations_deleted.clone(),
        );
        r.register(
            "requests",
            "STUN/TURN requests answered, by method and response code (0 = success)",
            self.requests.clone(),
        );
        r.register(
            "packets",
            "Packets relayed, by direction",
            self.packets.clone(),
        );
        r.register(
            "internal_packets",
            "Datagrams from an allocation to another allocation's relayed address on the same shard, handed over in-process (also counted in packets, both directions)",
            self.internal.clone(),
        );
        r.register(
            "internal_overflow_packets",
            "Datagrams for another shard's allocation sent through the kernel because that shard's hand-over queue was full",
            self.internal_overflow.clone(),
        );
        r.register(
            "bytes",
            "Application bytes relayed, by direction",
            self.bytes.clone(),
        );
        r.register(
            "dropped",
            "Packets dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "peer_refusals",
            "Permissions and channels refused for the peer they name, by reason (default_deny, operator_deny, own_address)",
            self.peer_refusals.clone(),
        );
        r.register(
            "tcp_connections",
            "Open client TCP connections (TLS included)",
            self.tcp_connections.clone(),
        );
        r.register(
            "tcp_peer_connections",
            "Peer data connections of TCP allocations (RFC 6062), by event (connected, connect_failed, accepted, refused, bound, expired)",
            self.tcp_peer_connections.clone(),
        );
        r.register(
            "tcp_data_connections",
            "Data connections piping a client to a TCP peer now (RFC 6062)",
            self.tcp_data_connections.clone(),
        );
        r.register(
            "tcp_bandwidth_waits",
            "Times a data connection (RFC 6062) waited for its allocation's bandwidth cap (paced, not dropped)",
            self.tcp_bandwidth_waits.clone(),
        );
        r.register(
            "ports_free",
            "Relayed ports free (not bound, reserved or cooling)",
            self.ports_free.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes on client connections, by result (ok, failed, timeout)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "proxy_headers",
            "PROXY protocol headers from trusted load balancers, by result (client, local, invalid, closed, timeout)",
            self.proxy_headers.clone(),
        );
        r.register(
            "dtls_handshakes",
            "DTLS handshakes of TURN over DTLS, by result (ok, failed, timeout; replaced: a new handshake from an address that held an association, which it replaced)",
            self.dtls_handshakes.clone(),
        );
        r.register(
            "tls_cert_reloads",
            "Certificate reloads (SIGHUP or the files changed), by result (ok, error)",
            self.tls_cert_reloads.clone(),
        );
    }

    /// Counts a TLS handshake's end.
    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a PROXY protocol header read (or refused).
    pub fn proxy_header(&self, result: &'static str) {
        self.proxy_headers
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a DTLS handshake's end.
    pub fn dtls_handshake(&self, result: &'static str) {
        self.dtls_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The handles shard `shard` uses, its labelled counters looked up once.
    pub fn shard(&self, shard: u16) -> ShardMetrics {
        let dir = |d| DirLabel {
            shard,
            direction: d,
        };
        // One statement per lookup: `get_or_create` returns a read guard, and two of them
        // alive in one expression deadlock the family's lock when the second inserts.
        let allocations = self
            .allocations
            .get_or_create(&ShardLabel { shard })
            .clone();
        let created = self
            .allocations_created
            .get_or_create(&ShardLabel { shard })
            .clone();
        let internal = self.internal.get_or_create(&ShardLabel { shard }).clone();
        let internal_overflow = self
            .internal_overflow
            .get_or_create(&ShardLabel { shard })
            .clone();
        let to_peer_packets = self.packets.get_or_create(&dir("to_peer")).clone();
        let to_peer_bytes = self.bytes.get_or_create(&dir("to_peer")).clone();
        let to_client_packets = self.packets.get_or_create(&dir("to_client")).clone();
        let to_client_bytes = self.bytes.get_or_create(&dir("to_client")).clone();
        ShardMetrics {
            all: self.clone(),
            allocations,
            created,
            internal,
            internal_overflow,
            to_peer_packets,
            to_peer_bytes,
            to_client_packets,
            to_client_bytes,
        }
    }
}

/// One shard's view: hot counters resolved to plain atomics up front.
#[derive(Clone)]
pub struct ShardMetrics {
    /// The whole set, for the counters labelled by something other than the shard.
    pub all: RelayMetrics,
    /// This shard's live allocations.
    pub allocations: Gauge,
    /// This shard's allocations created.
    pub created: Counter,
    /// Datagrams handed from one of this shard's allocations to another in-process.
    pub internal: Counter,
    /// Datagrams for another shard that its full queue sent back to the kernel path.
    pub internal_overflow: Counter,
    /// Packets this shard relayed from clients to peers.
    pub to_peer_packets: Counter,
    /// Application bytes this shard relayed from clients to peers.
    pub to_peer_bytes: Counter,
    /// Packets this shard relayed from peers to clients.
    pub to_client_packets: Counter,
    /// Application bytes this shard relayed from peers to clients.
    pub to_client_bytes: Counter,
}

impl ShardMetrics {
    /// A drop outside the core (the drivers: full queues, TCP limits).
    pub fn drop(&self, reason: &'static str) {
        self.all
            .dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The core's reports become counters; the per-packet ones are this shard's own atomics.
impl Observer for ShardMetrics {
    fn request(&self, method: Method, code: u16) {
        self.all
            .requests
            .get_or_create(&RequestLabel {
                method: method.name(),
                code,
            })
            .inc();
    }

    fn dropped(&self, reason: DropReason) {
        self.drop(reason.as_str());
    }

    fn refused(&self, refusal: Refusal) {
        self.all
            .peer_refusals
            .get_or_create(&ReasonLabel {
                reason: refusal.reason(),
            })
            .inc();
    }

    fn allocation_created(&self) {
        self.allocations.inc();
        self.created.inc();
    }

    fn allocation_deleted(&self, reason: DeleteReason) {
        self.allocations.dec();
        self.all
            .allocations_deleted
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    fn connection(&self, event: ConnectionEvent) {
        self.all
            .tcp_peer_connections
            .get_or_create(&EventLabel {
                event: event.as_str(),
            })
            .inc();
    }

    #[inline]
    fn relayed(&self, direction: Direction, bytes: usize) {
        let (p, b) = match direction {
            Direction::ToPeer => (&self.to_peer_packets, &self.to_peer_bytes),
            Direction::ToClient => (&self.to_client_packets, &self.to_client_bytes),
        };
        p.inc();
        b.inc_by(bytes as u64);
    }
}
