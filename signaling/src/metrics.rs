//! Prometheus metrics of the signaling service (the bundled relay registers its own).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels a count by message or frame type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The protocol message type (e.g. `signal`), or for rate limits the frame type
    /// (`text`, `binary`, `ping`, `pong`) or `join`.
    pub r#type: &'static str,
}

/// Labels a count by error code or refusal reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The protocol error code sent, or why an upgrade was refused (e.g. `origin`).
    pub code: &'static str,
}

/// Labels a count by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// The service's metric handles, registered once and cloned wherever they are counted.
#[derive(Clone)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Rooms with at least one peer.
    pub rooms: Gauge,
    /// Peers in rooms, attached or within their resume grace.
    pub peers: Gauge,
    /// Client messages received, by type.
    pub messages_in: Family<TypeLabel, Counter>,
    /// Server messages queued, by type.
    pub messages_out: Family<TypeLabel, Counter>,
    /// Errors sent to clients, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Resume attempts, by result.
    pub resumes: Family<ResultLabel, Counter>,
    /// Connections dropped for silence.
    pub heartbeat_timeouts: Counter,
    /// Connections cut off because their output was over its bound.
    pub slow_consumers: Counter,
    /// Frames and joins refused by a rate limit, by type.
    pub rate_limited: Family<TypeLabel, Counter>,
    /// Detached peers removed after the resume grace.
    pub resume_grace_expired: Counter,
    /// WebSocket upgrades refused, by reason.
    pub refused_connections: Family<CodeLabel, Counter>,
    /// Seconds from a batch of signals' arrival to their hand-off to the recipients'
    /// connections.
    pub forward_latency: Histogram,
    /// 1 while this node reaches Redis (cluster mode; stays 0 without `--redis`).
    pub redis_up: Gauge,
    /// Times this node lost Redis and got it back (commands or pub/sub).
    pub redis_reconnects: Counter,
    /// Redis calls that failed (a message then goes only to peers on this node).
    pub redis_publish_errors: Counter,
    /// Seconds from a sending node handing a message to Redis to the recipient's node
    /// queueing it (the nodes' clocks must agree, as NTP keeps them).
    pub cross_node_latency: Histogram,
    /// Signals per `deliver` run in Redis (the group commit's batch size).
    pub redis_batch_signals: Histogram,
    /// TLS handshakes on the listener, by result (ok, failed, timeout, busy, per_ip_limit).
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// PROXY protocol headers read from trusted load balancers, by result (client, local,
    /// invalid, closed, timeout).
    pub proxy_headers: Family<ResultLabel, Counter>,
    /// TLS connections by what they carried after the handshake (http, turn, dropped).
    pub tls_connections: Family<TypeLabel, Counter>,
    /// Certificate reloads (SIGHUP or the files changed), by result (ok, error).
    pub tls_cert_reloads: Family<ResultLabel, Counter>,
    /// This process's resident memory (`process_resident_memory_bytes`), set when scraped.
    pub resident_memory: Gauge,
    /// SIGHUP reloads that took a new configuration.
    pub config_reloads: Counter,
    /// SIGHUP reloads refused (the new configuration was not valid; nothing changed).
    pub config_reload_errors: Counter,
    /// `messages_in`/`messages_out` for signals, resolved once: they are counted per
    /// forwarded message.
    signals_in: Counter,
    signals_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let messages_in = Family::<TypeLabel, Counter>::default();
        let messages_out = Family::<TypeLabel, Counter>::default();
        let signal = TypeLabel { r#type: "signal" };
        let signals_in = messages_in.get_or_create(&signal).clone();
        let signals_out = messages_out.get_or_create(&signal).clone();
        Metrics {
            connections: Gauge::default(),
            rooms: Gauge::default(),
            peers: Gauge::default(),
            messages_in,
            messages_out,
            signals_in,
            signals_out,
            errors: Family::default(),
            resumes: Family::default(),
            heartbeat_timeouts: Counter::default(),
            slow_consumers: Counter::default(),
            rate_limited: Family::default(),
            resume_grace_expired: Counter::default(),
            refused_connections: Family::default(),
            forward_latency: Histogram::new([1e-6, 5e-6, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 2e-2]),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            redis_publish_errors: Counter::default(),
            cross_node_latency: Histogram::new([
                5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0,
            ]),
            redis_batch_signals: Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0,
            ]),
            config_reloads: Counter::default(),
            config_reload_errors: Counter::default(),
            resident_memory: Gauge::default(),
            tls_handshakes: Family::default(),
            tls_connections: Family::default(),
            proxy_headers: Family::default(),
            tls_cert_reloads: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `r` under the `icebreaker` prefix.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            self.resident_memory.clone(),
        );
        let r = r.sub_registry_with_prefix("icebreaker");
        r.register(
            "redis_up",
            "1 while this node reaches Redis (cluster mode)",
            self.redis_up.clone(),
        );
        r.register(
            "redis_reconnects",
            "Times this node lost Redis and got it back",
            self.redis_reconnects.clone(),
        );
        r.register(
            "redis_publish_errors",
            "Redis calls that failed (messages then reach peers on this node only)",
            self.redis_publish_errors.clone(),
        );
        r.register(
            "cross_node_latency_seconds",
            "Seconds from the sending node handing a message to Redis to the recipient's node queueing it",
            self.cross_node_latency.clone(),
        );
        r.register(
            "config_reloads",
            "SIGHUP reloads that took a new configuration",
            self.config_reloads.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes on the listener, by result (ok, failed, timeout, busy, per_ip_limit)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "proxy_headers",
            "PROXY protocol headers from trusted load balancers, by result (client, local, invalid, closed, timeout)",
            self.proxy_headers.clone(),
        );
        r.register(
            "tls_connections",
            "TLS connections by what they carried after the handshake (http, turn, dropped)",
            self.tls_connections.clone(),
        );
        r.register(
            "tls_cert_reloads",
            "Certificate reloads (SIGHUP or the files changed), by result (ok, error)",
            self.tls_cert_reloads.clone(),
        );
        r.register(
            "config_reload_errors",
            "SIGHUP reloads refused because the new configuration was not valid",
            self.config_reload_errors.clone(),
        );
        r.register(
            "redis_batch_signals",
            "Signals per deliver run in Redis (several senders' signals share one run and round trip)",
            self.redis_batch_signals.clone(),
        );
        r.register(
            "connections",
            "Open WebSocket connections",
            self.connections.clone(),
        );
        r.register("rooms", "Rooms with at least one peer", self.rooms.clone());
        r.register(
            "peers",
            "Peers in rooms (attached or within resume grace)",
            self.peers.clone(),
        );
        r.register(
            "messages_in",
            "Client messages received, by type",
            self.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "Server messages queued, by type",
            self.messages_out.clone(),
        );
        r.register(
            "errors",
            "Errors sent to clients, by code",
            self.errors.clone(),
        );
        r.register(
            "resumes",
            "Resume attempts, by result",
            self.resumes.clone(),
        );
        r.register(
            "heartbeat_timeouts",
            "Connections dropped for silence",
            self.heartbeat_timeouts.clone(),
        );
        r.register(
            "slow_consumers",
            "Connections cut off (close 1008) because their output, control replies included, was over its bound",
            self.slow_consumers.clone(),
        );
        r.register(
            "rate_limited",
            "Frames and joins refused by a rate limit, by type (text, binary, ping, join)",
            self.rate_limited.clone(),
        );
        r.register(
            "resume_grace_expired",
            "Detached peers removed after the resume grace",
            self.resume_grace_expired.clone(),
        );
        r.register(
            "refused_connections",
            "WebSocket upgrades refused, by reason",
            self.refused_connections.clone(),
        );
        r.register(
            "forward_latency_seconds",
            "Signal arrival to hand-off to the recipient",
            self.forward_latency.clone(),
        );
    }

    /// Counts a frame or join of type `t` refused by a rate limit.
    pub fn rate_limited(&self, t: &'static str) {
        self.rate_limited
            .get_or_create(&TypeLabel { r#type: t })
            .inc();
    }

    /// Counts a client message of type `t`.
    pub fn message_in(&self, t: &'static str) {
        if t == "signal" {
            self.signals_in.inc();
        } else {
            self.messages_in
                .get_or_create(&TypeLabel { r#type: t })
                .inc();
        }
    }

    /// Counts a server message of type `t` queued for a peer.
    pub fn message_out(&self, t: &'static str) {
        if t == "signal" {
            self.signals_out.inc();
        } else {
            self.messages_out
                .get_or_create(&TypeLabel { r#type: t })
                .inc();
        }
    }

    /// Counts an error with `code` sent to a client.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }
}
