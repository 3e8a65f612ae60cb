//! The one config loader for `icebreaker`: flags beat `ICEBREAKER_*` environment variables,
//! which beat the TOML file (`--config`), which beats the defaults. TOML keys are the long
//! flag names. A bad value is one line naming the key (exit status 2).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use icebreaker_service::config::{parse_duration, ConfigError};

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(key, message)
}

/// The effective, validated configuration of the signaling server.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// HTTP and WebSocket address.
    pub listen: SocketAddr,
    /// The bundled relay's configuration, unless `--no-relay`.
    pub relay: Option<icebreaker_relay::RelayConfig>,
    /// External TURN (`--turn-url` + `--turn-secret`) when the bundled relay is off.
    pub turn_urls: Vec<String>,
    /// TURN REST shared secret the peers' TURN credentials are minted with.
    pub turn_secret: String,
    /// Peers per room; a join beyond it gets `room-full`.
    pub room_capacity: usize,
    /// HS256 key for join tokens; `None`: joins need no token.
    pub jwt_secret: Option<String>,
    /// Origins allowed to open `/ws`; empty: same origin, or no Origin header.
    pub allowed_origins: Vec<String>,
    /// How long a peer whose connection dropped stays in its room, resumable.
    pub resume_grace: Duration,
    /// How long the TURN credentials handed out are valid.
    pub ice_ttl: Duration,
    /// WebSocket ping interval; a connection silent for two intervals is dropped.
    pub heartbeat_interval: Duration,
    /// Messages per second per connection (token bucket refill).
    pub rate_limit: f64,
    /// Messages a connection may send in a burst (token bucket size).
    pub rate_burst: f64,
    /// WebSocket connections (and peers within their resume grace) per client IP.
    pub max_connections_per_ip: usize,
    /// Joins per second per client IP (token bucket refill).
    pub join_rate: f64,
    /// Joins a client IP may make in a burst (token bucket size).
    pub join_burst: f64,
    /// Largest client message, bytes; a longer one closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Messages a connection may have waiting unwritten before it is cut off as too slow.
    pub outbox_limit: usize,
    /// Unacknowledged messages kept per peer for resume.
    pub replay_limit: usize,
    /// Bytes of unacknowledged messages kept per peer for resume.
    pub replay_bytes: usize,
    /// Serve the web client from this directory instead of the embedded copy.
    pub web_dir: Option<PathBuf>,
    /// Threads serving HTTP and WebSocket connections, each with its own listener.
    pub threads: usize,
    /// Redis URL: rooms are shared with the other nodes through it (cluster mode).
    pub redis: Option<String>,
    /// This node's id in the cluster (unique among running nodes).
    pub node_id: String,
    /// Reverse proxies whose `X-Forwarded-For` names the client (per-IP limits, logs).
    pub trusted_proxies: Vec<IpNet>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header (v1 or v2)
    /// naming the client: an L4 load balancer such as HAProxy with `send-proxy-v2`.
    pub proxy_protocol: bool,
    /// How long SIGTERM lets the bundled relay's allocations keep relaying (new ones are
    /// refused) before the process exits; it exits as soon as none is left.
    pub drain_timeout: Duration,
    /// PEM certificate chain and key: `listen` serves HTTPS and wss, and (with the bundled
    /// relay) TURN over TLS on the same port.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Flags and TOML keys, all optional so the three sources can be layered.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SignalingArgs {
    /// HTTP + WebSocket address (default 127.0.0.1:8080).
    #[arg(long, env = "ICEBREAKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the bundled relay listens, UDP+TCP (default 127.0.0.1:3478).
    #[arg(long, env = "ICEBREAKER_RELAY_LISTEN")]
    pub relay_listen: Option<SocketAddr>,
    /// Do not run the bundled relay (use --turn-url/--turn-secret for an external one).
    #[arg(long, env = "ICEBREAKER_NO_RELAY")]
    #[serde(default)]
    pub no_relay: bool,
    /// Public address of the bundled relay behind NAT: PUBLIC[/PRIVATE].
    #[arg(long, env = "ICEBREAKER_RELAY_EXTERNAL_IP")]
    pub relay_external_ip: Option<String>,
    /// Relayed port range of the bundled relay, LO-HI.
    #[arg(long, env = "ICEBREAKER_RELAY_PORTS")]
    pub relay_ports: Option<String>,
    /// Peers the bundled relay may reach beyond the safe default (repeatable). When the
    /// relay listens on loopback only, loopback peers are allowed (everything is local).
    #[arg(long, env = "ICEBREAKER_RELAY_ALLOW_PEER", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_allow_peer: Vec<IpNet>,
    /// External STUN/TURN URL handed to peers (repeatable), e.g. turn:turn.example.org:3478.
    #[arg(long, env = "ICEBREAKER_TURN_URL", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_url: Vec<String>,
    /// TURN REST secret shared with the TURN server (generated at start if unset).
    #[arg(long, env = "ICEBREAKER_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Peers per room (default 16).
    #[arg(long, env = "ICEBREAKER_ROOM_CAPACITY")]
    pub room_capacity: Option<usize>,
    /// When set, `join` needs an HS256 JWT whose claims name the room, subject and expiry.
    #[arg(long, env = "ICEBREAKER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Origins allowed to open /ws (repeatable); default: same origin, or no Origin header.
    #[arg(long, env = "ICEBREAKER_ALLOWED_ORIGIN", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origin: Vec<String>,
    /// How long a dropped peer may resume (default 30s).
    #[arg(long, env = "ICEBREAKER_RESUME_GRACE")]
    pub resume_grace: Option<String>,
    /// Lifetime of the TURN credentials handed out (default 1h).
    #[arg(long, env = "ICEBREAKER_ICE_TTL")]
    pub ice_ttl: Option<String>,
    /// WebSocket ping interval; silent for two intervals = dropped (default 15s).
    #[arg(long, env = "ICEBREAKER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Messages per second per connection (token bucket refill; default 200).
    #[arg(long, env = "ICEBREAKER_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Burst of messages per connection (default 400).
    #[arg(long, env = "ICEBREAKER_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// WebSocket connections per client IP (default 256).
    #[arg(long, env = "ICEBREAKER_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Joins per second per client IP (default 20).
    #[arg(long, env = "ICEBREAKER_JOIN_RATE")]
    pub join_rate: Option<f64>,
    /// Burst of joins per client IP (default: max-connections-per-ip).
    #[arg(long, env = "ICEBREAKER_JOIN_BURST")]
    pub join_burst: Option<f64>,
    /// Serve the web client from this directory instead of the embedded copy.
    #[arg(long, env = "ICEBREAKER_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Threads serving connections (default: half the CPUs, at least one).
    #[arg(long, env = "ICEBREAKER_THREADS")]
    pub threads: Option<usize>,
    /// Share rooms with other nodes through Redis, e.g. redis://127.0.0.1:6379/ (see
    /// docs/scaling.md); without it rooms live in this process.
    #[arg(long, env = "ICEBREAKER_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// This node's id in a cluster (default: random at each start); unique per node.
    #[arg(long, env = "ICEBREAKER_NODE_ID")]
    pub node_id: Option<String>,
    /// A reverse proxy (CIDR, repeatable) whose X-Forwarded-For names the client: per-IP
    /// limits then count the client, not the proxy. Never list addresses clients control.
    #[arg(long, env = "ICEBREAKER_TRUSTED_PROXY", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxy: Vec<IpNet>,
    /// Connections from a --trusted-proxy address start with a PROXY protocol header (v1
    /// or v2, HAProxy's send-proxy / send-proxy-v2) naming the client; without one they
    /// are refused. For L4 load balancers, which cannot add X-Forwarded-For.
    #[arg(long, env = "ICEBREAKER_PROXY_PROTOCOL")]
    #[serde(default)]
    pub proxy_protocol: bool,
    /// On SIGTERM, let calls through the bundled relay go on this long while new
    /// allocations are refused (default 30s; 0s = stop at once)
    #[arg(long, env = "ICEBREAKER_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// PEM certificate chain (leaf first): serve HTTPS/wss on --listen, and TURN over TLS
    /// on the same port through the bundled relay. Reloaded on SIGHUP and when it changes.
    #[arg(long, env = "ICEBREAKER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "ICEBREAKER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A TURN-over-TLS port of its own for the bundled relay (e.g. 0.0.0.0:5349), with
    /// the --tls-cert certificate; TURN over TLS is on --listen's port anyway.
    #[arg(long, env = "ICEBREAKER_RELAY_TLS_LISTEN")]
    pub relay_tls_listen: Option<SocketAddr>,
}

impl SignalingArgs {
    /// Reads a TOML file of the same keys.
    pub fn from_file(path: &std::path::Path) -> Result<SignalingArgs, ConfigError> {
        icebreaker_service::config::read_toml(path)
    }

    /// Fills what flags and environment left unset from `file`.
    pub fn layer_over(mut self, file: SignalingArgs) -> SignalingArgs {
        macro_rules! opt { ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = file.$f.clone(); } )* }; }
        macro_rules! vec { ($($f:ident),*) => { $( if self.$f.is_empty() { self.$f = file.$f.clone(); } )* }; }
        opt!(
            listen,
            relay_listen,
            relay_external_ip,
            relay_ports,
            turn_secret,
            room_capacity,
            jwt_secret,
            resume_grace,
            ice_ttl,
            heartbeat_interval,
            rate_limit,
            rate_burst,
            max_connections_per_ip,
            join_rate,
            join_burst,
            web_dir,
            threads,
            redis,
            node_id,
            drain_timeout,
            tls_cert,
            tls_key,
            relay_tls_listen
        );
        vec![relay_allow_peer, turn_url, allowed_origin, trusted_proxy];
        self.no_relay |= file.no_relay;
        self.proxy_protocol |= file.proxy_protocol;
        self
    }

    /// Validates the layered values, fills in defaults and resolves the bundled relay's
    /// configuration; an error names the key.
    pub fn resolve(self) -> Result<SignalingConfig, ConfigError> {
        let dur = |v: &Option<String>, key: &str, def: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(def),
                Some(s) => parse_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| {
                    err(
                        key,
                        format!("expected a duration like 30s or 500ms, got {s:?}"),
                    )
                }),
            }
        };
        let turn_secret = match &self.turn_secret {
            Some(s) if s.is_empty() => return Err(err("turn-secret", "must not be empty")),
            Some(s) => s.clone(),
            None => {
                if self.no_relay && !self.turn_url.is_empty() {
                    return Err(err(
                        "turn-secret",
                        "--turn-url needs the external TURN server's --turn-secret",
                    ));
                }
                let b: [u8; 24] = rand::random();
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)
            }
        };
        for u in &self.turn_url {
            if !(u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:")) {
                return Err(err(
                    "turn-url",
                    format!("{u:?} is not a stun:, turn: or turns: URL"),
                ));
            }
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(err("tls-cert", "needs --tls-key")),
            (None, Some(_)) => return Err(err("tls-key", "needs --tls-cert")),
        };
        if self.proxy_protocol && self.trusted_proxy.is_empty() {
            return Err(err(
                "proxy-protocol",
                "needs --trusted-proxy: the load balancers' addresses, the only ones whose \
                 PROXY header is believed",
            ));
        }
        if self.relay_tls_listen.is_some() && (tls.is_none() || self.no_relay) {
            return Err(err(
                "relay-tls-listen",
                "needs --tls-cert/--tls-key and the bundled relay",
            ));
        }
        let relay = if self.no_relay {
            None
        } else {
            let listen = self
                .relay_listen
                .unwrap_or_else(|| "127.0.0.1:3478".parse().expect("addr"));
            let mut allow = self.relay_allow_peer.clone();
            if listen.ip().is_loopback() && allow.is_empty() {
                allow.push("127.0.0.0/8".parse().expect("net"));
                allow.push("::1/128".parse().expect("net"));
            }
            let args = icebreaker_relay::RelayArgs {
                listen: vec![listen],
                external_ip: self.relay_external_ip.iter().cloned().collect(),
                relay_ports: self.relay_ports.clone(),
                auth_secrets: vec![turn_secret.clone()],
                allow_peer: allow,
                tls_listen: self.relay_tls_listen.into_iter().collect(),
                cert: self.relay_tls_listen.and(self.tls_cert.clone()),
                key: self.relay_tls_listen.and(self.tls_key.clone()),
                ..Default::default()
            };
            let relay = args.resolve().map_err(|e| {
                let key = if e.key.starts_with("relay") {
                    e.key
                } else {
                    format!("relay-{}", e.key)
                };
                err(&key, e.message)
            })?;
            Some(relay)
        };
        let room_capacity = self.room_capacity.unwrap_or(16);
        if room_capacity == 0 || room_capacity > 1000 {
            return Err(err("room-capacity", "must be 1 to 1000"));
        }
        let rate_limit = self.rate_limit.unwrap_or(200.0);
        let rate_burst = self.rate_burst.unwrap_or((rate_limit * 2.0).max(1.0));
        if !(rate_limit > 0.0 && rate_burst >= 1.0) {
            return Err(err(
                "rate-limit",
                "must be positive (and rate-burst at least 1)",
            ));
        }
        let max_connections_per_ip = self.max_connections_per_ip.unwrap_or(256).max(1);
        let join_rate = self.join_rate.unwrap_or(20.0);
        let join_burst = self.join_burst.unwrap_or(max_connections_per_ip as f64);
        if !(join_rate > 0.0 && join_burst >= 1.0) {
            return Err(err(
                "join-rate",
                "must be positive (and join-burst at least 1)",
            ));
        }
        let threads = match self.threads {
            Some(0) => return Err(err("threads", "must be at least 1")),
            Some(n) if n > 1024 => return Err(err("threads", "must be at most 1024")),
            Some(n) => n,
            // Half the CPUs: the bundled relay runs a thread per CPU beside us, and one
            // thread already forwards ~300k signals/s (BENCHMARKS.md).
            None => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        };
        if let Some(url) = &self.redis {
            redis::Client::open(url.as_str()).map_err(|e| {
                err(
                    "redis",
                    format!("expected a URL like redis://host:6379/ ({e})"),
                )
            })?;
        }
        let node_id = match &self.node_id {
            Some(n)
                if n.is_empty()
                    || n.len() > 64
                    || !n.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                    }) =>
            {
                return Err(err(
                    "node-id",
                    "must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            Some(n) => n.clone(),
            None => {
                let b: [u8; 6] = rand::random();
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b)
            }
        };
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            return Err(err("jwt-secret", "must be at least 16 characters"));
        }
        Ok(SignalingConfig {
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("addr")),
            relay,
            turn_urls: self.turn_url.clone(),
            turn_secret,
            room_capacity,
            jwt_secret: self.jwt_secret.clone(),
            allowed_origins: self.allowed_origin.clone(),
            resume_grace: dur(&self.resume_grace, "resume-grace", Duration::from_secs(30))?,
            ice_ttl: dur(&self.ice_ttl, "ice-ttl", Duration::from_secs(3600))?,
            heartbeat_interval: dur(
                &self.heartbeat_interval,
                "heartbeat-interval",
                Duration::from_secs(15),
            )?,
            rate_limit,
            rate_burst,
            max_connections_per_ip,
            join_rate,
            join_burst,
            max_message_bytes: 64 * 1024,
            outbox_limit: 1024,
            replay_limit: 4096,
            replay_bytes: 1 << 20,
            web_dir: self.web_dir.clone(),
            threads,
            redis: self.redis.clone(),
            node_id,
            trusted_proxies: self.trusted_proxy.clone(),
            proxy_protocol: self.proxy_protocol,
            drain_timeout: match &self.drain_timeout {
                None => Duration::from_secs(30),
                Some(s) => parse_duration(s).ok_or_else(|| {
                    err("drain-timeout", format!("{s:?} is not a duration like 30s"))
                })?,
            },
            tls,
        })
    }
}

impl SignalingArgs {
    /// Every key with its effective value (`c` resolved from `self`), secrets masked, as
    /// TOML that is itself a config file once the masked secrets are put back (or given
    /// through the environment). What is generated at each start (a TURN secret
    /// or node id nobody set) is left out: copying it would pin it.
    pub fn to_masked_toml(&self, c: &SignalingConfig) -> String {
        const MASK: &str = "********";
        let relay = c.relay.as_ref();
        let eff = SignalingArgs {
            listen: Some(c.listen),
            relay_listen: relay.and_then(|r| r.listen.first().copied()),
            no_relay: relay.is_none(),
            relay_external_ip: self.relay_external_ip.clone(),
            relay_ports: relay
                .map(|r| format!("{}-{}", r.turn.relay_ports.0, r.turn.relay_ports.1)),
            relay_allow_peer: relay.map(|r| r.turn.allow_peer.clone()).unwrap_or_default(),
            turn_url: c.turn_urls.clone(),
            turn_secret: self.turn_secret.as_ref().map(|_| MASK.into()),
            room_capacity: Some(c.room_capacity),
            jwt_secret: c.jwt_secret.as_ref().map(|_| MASK.into()),
            allowed_origin: c.allowed_origins.clone(),
            resume_grace: Some(fmt_duration(c.resume_grace)),
            ice_ttl: Some(fmt_duration(c.ice_ttl)),
            heartbeat_interval: Some(fmt_duration(c.heartbeat_interval)),
            rate_limit: Some(c.rate_limit),
            rate_burst: Some(c.rate_burst),
            max_connections_per_ip: Some(c.max_connections_per_ip),
            join_rate: Some(c.join_rate),
            join_burst: Some(c.join_burst),
            web_dir: c.web_dir.clone(),
            // As given, not as resolved: the default depends on the machine's CPUs, and a
            // printed config (the packaged one) must not pin the builder's count.
            threads: self.threads,
            redis: c.redis.as_deref().map(mask_url_password),
            node_id: self.node_id.clone(),
            trusted_proxy: c.trusted_proxies.clone(),
            proxy_protocol: c.proxy_protocol,
            drain_timeout: Some(fmt_duration(c.drain_timeout)),
            tls_cert: c.tls.as_ref().map(|t| t.0.clone()),
            tls_key: c.tls.as_ref().map(|t| t.1.clone()),
            relay_tls_listen: relay.and_then(|r| r.tls_listen.first().copied()),
        };
        toml::to_string(&eff).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// `30s`, `1500ms`: what [`parse_duration`] reads back.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `redis://user:secret@host/` → `redis://user:********@host/`.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:********@{host}")
        }
        _ => url.into(),
    }
}

/// What a SIGHUP did: the configuration to run with now, the keys it changed, and the
/// keys that changed in the file but only take effect after a restart (kept as they were).
#[derive(Debug)]
pub struct Reload {
    /// The new running configuration.
    pub config: SignalingConfig,
    /// Keys whose new value is in force.
    pub changed: Vec<&'static str>,
    /// Keys whose new value waits for a restart.
    pub need_restart: Vec<&'static str>,
    /// The bundled relay's TURN settings as resolved again (peer policy, quotas,
    /// lifetimes, bandwidth), for the driver to hand to the running relay; `None`: no
    /// bundled relay.
    pub relay_turn: Option<icebreaker_relay::turn::Config>,
}

impl SignalingConfig {
    /// Folds `new` (the configuration resolved again from the same flags, environment and
    /// file) into this running one. What a connection reads when it uses it (tokens,
    /// origins, proxies, limits for new connections, ICE servers for new joins, the web
    /// directory) changes; what sockets, threads, the bundled relay, Redis or the rooms
    /// were built with is kept and reported as needing a restart. Values generated at start
    /// (the TURN secret, the node id) stay when the file still leaves them unset.
    ///
    /// `started` is the configuration as resolved at start, before the driver filled in
    /// what it bound (port 0 becomes a port): restart-only keys are compared with it.
    pub fn reload(
        &self,
        started: &SignalingConfig,
        mut new: SignalingConfig,
        given: &SignalingArgs,
    ) -> Reload {
        if given.turn_secret.is_none() {
            new.turn_secret = self.turn_secret.clone();
            if let (Some(n), Some(s)) = (new.relay.as_mut(), started.relay.as_ref()) {
                n.turn.auth_secrets = s.turn.auth_secrets.clone();
            }
        }
        if given.node_id.is_none() {
            new.node_id = self.node_id.clone();
        }
        let mut changed = Vec::new();
        let mut need_restart = Vec::new();
        macro_rules! live {
            ($($f:ident => $k:literal),*) => {$(
                if format!("{:?}", self.$f) != format!("{:?}", new.$f) {
                    changed.push($k);
                }
            )*};
        }
        macro_rules! fixed {
            ($($f:ident => $k:literal),*) => {$(
                if format!("{:?}", started.$f) != format!("{:?}", new.$f) {
                    need_restart.push($k);
                    new.$f = self.$f.clone();
                }
            )*};
        }
        live!(turn_urls => "turn-url", jwt_secret => "jwt-secret",
              allowed_origins => "allowed-origin", ice_ttl => "ice-ttl",
              heartbeat_interval => "heartbeat-interval", rate_limit => "rate-limit",
              rate_burst => "rate-burst", max_connections_per_ip => "max-connections-per-ip",
              web_dir => "web-dir", trusted_proxies => "trusted-proxy",
              proxy_protocol => "proxy-protocol",
              drain_timeout => "drain-timeout");
        fixed!(listen => "listen", room_capacity => "room-capacity",
               resume_grace => "resume-grace", join_rate => "join-rate",
               join_burst => "join-burst", threads => "threads", redis => "redis",
               node_id => "node-id", tls => "tls-cert/tls-key");
        // The bundled relay: what its sockets and threads were built with waits for a
        // restart; its TURN settings (peer policy, lifetimes, quotas) go to it live, as a
        // standalone relay takes them on SIGHUP.
        let mut relay_turn = None;
        let new_relay = new.relay.take();
        match (&self.relay, started.relay.as_ref(), new_relay) {
            (Some(running), Some(first), Some(mut n)) => {
                let mut built = first.clone();
                built.turn = n.turn.clone();
                if format!("{built:?}") != format!("{n:?}") {
                    need_restart.push("relay-*");
                }
                // Bound sockets and the TURN secret (shared with the credentials this
                // server hands out, see below) stay as they are.
                let (old, t) = (&running.turn, &mut n.turn);
                if (t.relay_v4, t.relay_v6) != (old.relay_v4, old.relay_v6) {
                    need_restart.push("relay-external-ip");
                }
                if t.relay_ports != old.relay_ports {
                    need_restart.push("relay-ports");
                }
                (t.relay_v4, t.relay_v6, t.relay_ports) =
                    (old.relay_v4, old.relay_v6, old.relay_ports);
                t.auth_secrets = old.auth_secrets.clone();
                if format!("{:?}", running.turn) != format!("{:?}", n.turn) {
                    changed.push("relay-allow-peer");
                }
                relay_turn = Some(n.turn.clone());
                // The running relay's otherwise: it holds the addresses actually bound.
                let mut kept = running.clone();
                kept.turn = n.turn;
                new.relay = Some(kept);
            }
            (running, _, n) => {
                if running.is_some() != n.is_some() {
                    need_restart.push("relay-*");
                }
                new.relay = self.relay.clone();
            }
        }
        if self.turn_secret != new.turn_secret {
            if self.relay.is_some() {
                need_restart.push("turn-secret");
                new.turn_secret = self.turn_secret.clone();
            } else {
                changed.push("turn-secret");
            }
        }
        Reload {
            config: new,
            changed,
            need_restart,
            relay_turn,
        }
    }

    /// What the room hubs enforce (shard 0; the bus numbers the others).
    pub fn hub(&self) -> crate::room::HubConfig {
        crate::room::HubConfig {
            room_capacity: self.room_capacity,
            resume_grace: self.resume_grace,
            replay_limit: self.replay_limit,
            replay_bytes: self.replay_bytes,
            shard: 0,
        }
    }

    /// The relay address advertised in `ice_servers` (its public address behind NAT).
    pub fn relay_public(&self) -> Option<(IpAddr, u16)> {
        let r = self.relay.as_ref()?;
        let port = r.listen.first()?.port();
        let ip = r.turn.relay_v4.or(r.turn.relay_v6).map(|(_, adv)| adv)?;
        Some((ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_with_no_configuration() {
        let c = SignalingArgs::default().resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        let r = c.relay.as_ref().unwrap();
        assert_eq!(r.listen[0].to_string(), "127.0.0.1:3478");
        assert_eq!(r.turn.auth_secrets, vec![c.turn_secret.clone()]);
        assert!(
            !r.turn.allow_peer.is_empty(),
            "a loopback-only relay may reach loopback peers"
        );
        assert_eq!(c.room_capacity, 16);
        assert_eq!(c.resume_grace, Duration::from_secs(30));
    }

    #[test]
    fn reload_hands_the_relay_its_policy_and_keeps_its_sockets() {
        let args = |allow: &str, ports: &str| SignalingArgs {
            turn_secret: Some("a-very-secret-turn-key".into()),
            relay_allow_peer: vec![allow.parse().unwrap()],
            relay_ports: Some(ports.into()),
            ..Default::default()
        };
        let started = args("10.0.0.0/8", "50000-50999").resolve().unwrap();
        let given = args("192.168.0.0/16", "51000-51999");
        let r = started.reload(&started, given.clone().resolve().unwrap(), &given);
        assert_eq!(r.changed, ["relay-allow-peer"]);
        assert_eq!(r.need_restart, ["relay-ports"]);
        let turn = r.relay_turn.expect("the relay's new settings");
        assert_eq!(
            turn.allow_peer,
            ["192.168.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(turn.relay_ports, (50000, 50999), "bound ports stay");
        assert_eq!(r.config.relay.unwrap().turn.relay_ports, (50000, 50999));
    }

    #[test]
    fn printed_config_masks_secrets_and_reads_back() {
        let args = SignalingArgs {
            turn_secret: Some("a-very-secret-turn-key".into()),
            jwt_secret: Some("another-secret-for-jwt".into()),
            redis: Some("redis://app:hunter22@10.0.0.5:6379/".into()),
            resume_grace: Some("1500ms".into()),
            trusted_proxy: vec!["10.0.0.0/8".parse().unwrap()],
            proxy_protocol: true,
            ..Default::default()
        };
        let c = args.clone().resolve().unwrap();
        let printed = args.to_masked_toml(&c);
        for secret in [
            "a-very-secret-turn-key",
            "another-secret-for-jwt",
            "hunter22",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        }
        assert!(
            printed.contains("redis://app:********@10.0.0.5:6379/"),
            "{printed}"
        );
        // The printout is a config file: read back, it resolves to the same settings.
        // (The masked secrets go back in by hand, or through the environment.)
        let unmasked: String = printed
            .lines()
            .filter(|l| !l.starts_with("jwt-secret") && !l.starts_with("turn-secret"))
            .map(|l| format!("{l}\n"))
            .collect();
        let back: SignalingArgs = toml::from_str(&unmasked).unwrap();
        let c2 = back.resolve().unwrap();
        assert_eq!(c2.resume_grace, Duration::from_millis(1500));
        assert_eq!(c2.listen, c.listen);
        assert_eq!(c2.room_capacity, c.room_capacity);
        assert_eq!(c2.trusted_proxies, c.trusted_proxies);
        assert!(c2.proxy_protocol);
        assert_eq!(
            c2.relay.unwrap().turn.allow_peer,
            c.relay.unwrap().turn.allow_peer
        );
        // A generated node id and TURN secret are not pinned by the printout.
        let plain = SignalingArgs::default();
        let pc = plain.to_masked_toml(&plain.clone().resolve().unwrap());
        assert!(
            !pc.contains("node-id") && !pc.contains("turn-secret"),
            "{pc}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = SignalingArgs {
            heartbeat_interval: Some("often".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "heartbeat-interval");
        let e = SignalingArgs {
            room_capacity: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "room-capacity");
        let e = SignalingArgs {
            no_relay: true,
            turn_url: vec!["turn:x:3478".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "turn-secret");
        let e = SignalingArgs {
            relay_ports: Some("x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "relay-ports");
        // A PROXY header believed from anyone would let every client pick its address.
        let e = SignalingArgs {
            proxy_protocol: true,
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "proxy-protocol");
    }
}
