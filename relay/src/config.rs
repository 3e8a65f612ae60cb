//! The one config loader: flags beat `ICEBREAKER_RELAY_*` environment variables, which
//! beat the TOML file (`--config`), which beats the defaults. Every TOML key is the
//! flag's long name. A bad value is one line naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use icebreaker_stun::turn::Config;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use icebreaker_service::config::{parse_duration, read_toml, ConfigError};

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(key, message)
}

/// The effective, validated relay configuration: the TURN core's part, and what the
/// drivers read.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// What the sans-IO core needs (addresses, credentials, policy, lifetimes, quotas).
    pub turn: Config,
    /// Client-facing addresses; each is bound for both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Client TCP connections held at once (all shards together); more are refused.
    pub max_tcp_connections: usize,
    /// Largest STUN message or ChannelData frame a TCP client may send; a longer one
    /// closes its connection.
    pub max_tcp_frame: usize,
    /// Bytes all client TCP connections together may hold in unfinished frames and
    /// output queues; past it a connection that needs more is closed (or, for output,
    /// the packet dropped).
    pub tcp_buffer_limit: usize,
    /// Worker threads (shards) asked for; 0 means one per core (see
    /// [`RelayConfig::worker_threads`]).
    pub threads: usize,
    /// Where the binary serves `/metrics` and `/healthz`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a stop (SIGTERM) lets existing allocations keep relaying while new ones
    /// are refused; the relay exits as soon as none is left.
    pub drain_timeout: Duration,
    /// TURN over TLS (RFC 8656 §3.1): TCP addresses served with TLS, with `cert`/`key`.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS (reloaded on SIGHUP and when the file changes).
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub key: Option<PathBuf>,
    /// Load balancers whose TCP and TLS connections begin with a PROXY protocol header
    /// naming the client (`--proxy-protocol --trusted-proxy`); empty: none.
    pub proxy_from: Vec<IpNet>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        RelayConfig {
            turn: Config::default(),
            listen: vec![SocketAddr::new(lo, 3478)],
            max_tcp_connections: 10_000,
            max_tcp_frame: 16 * 1024,
            tcp_buffer_limit: 64 << 20,
            threads: 0,
            drain_timeout: Duration::from_secs(30),
            metrics_listen: None,
            tls_listen: Vec::new(),
            cert: None,
            key: None,
            proxy_from: Vec::new(),
        }
    }
}

/// Flags and TOML keys, all optional so the three sources can be layered.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RelayArgs {
    /// Client-facing address, UDP and TCP (repeatable). Default 127.0.0.1:3478.
    #[arg(long, env = "ICEBREAKER_RELAY_LISTEN", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<SocketAddr>,
    /// Address relayed sockets bind on, one per family (default: the listen address).
    #[arg(long, env = "ICEBREAKER_RELAY_RELAY_IP", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_ip: Vec<IpAddr>,
    /// PUBLIC[/PRIVATE]: advertise PUBLIC for relayed sockets bound on PRIVATE (behind NAT).
    #[arg(long, env = "ICEBREAKER_RELAY_EXTERNAL_IP", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ip: Vec<String>,
    /// Relayed port range LO-HI (default 49152-65535).
    #[arg(long, env = "ICEBREAKER_RELAY_RELAY_PORTS")]
    pub relay_ports: Option<String>,
    /// Long-term credential realm, 1 to 127 characters (default icebreaker).
    #[arg(long, env = "ICEBREAKER_RELAY_REALM")]
    pub realm: Option<String>,
    /// Static long-term user NAME:PASS (repeatable).
    #[arg(long = "user", env = "ICEBREAKER_RELAY_USER")]
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// TURN REST shared secret (repeatable, to rotate secrets without cutting clients off).
    #[arg(
        long = "auth-secret",
        env = "ICEBREAKER_RELAY_AUTH_SECRET",
        hide_env_values = true
    )]
    #[serde(default, rename = "auth-secret", skip_serializing_if = "Vec::is_empty")]
    pub auth_secrets: Vec<String>,
    /// Allow peers in CIDR even if refused by default (repeatable), e.g. 127.0.0.0/8.
    #[arg(long, env = "ICEBREAKER_RELAY_ALLOW_PEER", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_peer: Vec<IpNet>,
    /// Refuse peers in CIDR (repeatable).
    #[arg(long, env = "ICEBREAKER_RELAY_DENY_PEER", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_peer: Vec<IpNet>,
    /// Allocation lifetime when the client asks for none, seconds (600).
    #[arg(long, env = "ICEBREAKER_RELAY_DEFAULT_LIFETIME")]
    pub default_lifetime: Option<u64>,
    /// Longest allocation lifetime granted, seconds (3600).
    #[arg(long, env = "ICEBREAKER_RELAY_MAX_LIFETIME")]
    pub max_lifetime: Option<u64>,
    /// Permission lifetime, seconds (300, RFC 8656).
    #[arg(long, env = "ICEBREAKER_RELAY_PERMISSION_LIFETIME")]
    pub permission_lifetime: Option<u64>,
    /// Channel binding lifetime, seconds (600, RFC 8656).
    #[arg(long, env = "ICEBREAKER_RELAY_CHANNEL_LIFETIME")]
    pub channel_lifetime: Option<u64>,
    /// How long a nonce stays valid, seconds (600); then clients get 438 and retry.
    #[arg(long, env = "ICEBREAKER_RELAY_NONCE_LIFETIME")]
    pub nonce_lifetime: Option<u64>,
    /// Total allocations (0 = unlimited); beyond it Allocate gets 508.
    #[arg(long, env = "ICEBREAKER_RELAY_MAX_ALLOCATIONS")]
    pub max_allocations: Option<u32>,
    /// Allocations per user (0 = unlimited); beyond it Allocate gets 486.
    #[arg(long, env = "ICEBREAKER_RELAY_USER_QUOTA")]
    pub user_quota: Option<u32>,
    /// Bandwidth cap per allocation, bits/s both directions together (0 = unlimited).
    #[arg(long, env = "ICEBREAKER_RELAY_MAX_BPS")]
    pub max_bps: Option<u64>,
    /// Client TCP connections held at once; more are refused.
    #[arg(long, env = "ICEBREAKER_RELAY_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,
    /// Largest frame a TCP client may send, bytes (16384; at most 65552).
    #[arg(long, env = "ICEBREAKER_RELAY_MAX_TCP_FRAME")]
    pub max_tcp_frame: Option<usize>,
    /// Bytes all TCP connections may hold in unfinished frames and output queues
    /// together (67108864).
    #[arg(long, env = "ICEBREAKER_RELAY_TCP_BUFFER_LIMIT")]
    pub tcp_buffer_limit: Option<usize>,
    /// Worker threads (shards); 0 = one per core.
    #[arg(long, env = "ICEBREAKER_RELAY_THREADS")]
    pub threads: Option<usize>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long, env = "ICEBREAKER_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM, refuse new allocations and let existing ones relay for up to this many
    /// seconds (30; 0 = stop at once); exits as soon as none is left.
    #[arg(long, env = "ICEBREAKER_RELAY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u64>,
    /// TURN over TLS on this TCP address and over DTLS on the same UDP address (repeatable;
    /// coturn's 5349), with --cert/--key.
    #[arg(long, env = "ICEBREAKER_RELAY_TLS_LISTEN", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for --tls-listen, leaf first (reloaded on SIGHUP and when the
    /// file changes).
    #[arg(long, env = "ICEBREAKER_RELAY_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert (PKCS#8, PKCS#1 or SEC1; DTLS needs PKCS#8).
    #[arg(long, env = "ICEBREAKER_RELAY_KEY")]
    pub key: Option<PathBuf>,
    /// TCP and TLS connections from a --trusted-proxy address begin with a PROXY protocol
    /// header (v1 or v2, HAProxy's send-proxy / send-proxy-v2) naming the client; without
    /// one they are closed. For TURN over TCP/TLS behind an L4 load balancer.
    #[arg(long, env = "ICEBREAKER_RELAY_PROXY_PROTOCOL")]
    #[serde(default)]
    pub proxy_protocol: bool,
    /// A load balancer (CIDR, repeatable) whose PROXY header is believed (with
    /// --proxy-protocol). Never list addresses clients control.
    #[arg(long, env = "ICEBREAKER_RELAY_TRUSTED_PROXY", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxy: Vec<IpNet>,
}

macro_rules! layer_opt {
    ($cli:ident, $file:ident, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.take(); } )* };
}
macro_rules! layer_vec {
    ($cli:ident, $file:ident, $($f:ident),*) => { $( if $cli.$f.is_empty() { $cli.$f = std::mem::take(&mut $file.$f); } )* };
}

impl RelayArgs {
    /// Fills what flags and environment left unset from `file`.
    pub fn layer_over(mut self, mut file: RelayArgs) -> RelayArgs {
        layer_vec!(
            self,
            file,
            listen,
            relay_ip,
            external_ip,
            users,
            auth_secrets,
            allow_peer,
            deny_peer,
            tls_listen,
            trusted_proxy
        );
        self.proxy_protocol |= file.proxy_protocol;
        layer_opt!(
            self,
            file,
            relay_ports,
            realm,
            default_lifetime,
            max_lifetime,
            permission_lifetime,
            channel_lifetime,
            nonce_lifetime,
            max_allocations,
            user_quota,
            max_bps,
            max_tcp_connections,
            max_tcp_frame,
            tcp_buffer_limit,
            threads,
            metrics_listen,
            drain_timeout,
            cert,
            key
        );
        self
    }

    /// Reads a TOML file of the same keys.
    pub fn from_file(path: &std::path::Path) -> Result<RelayArgs, ConfigError> {
        read_toml(path)
    }

    /// Validates the layered values and fills in defaults; an error names the key.
    pub fn resolve(self) -> Result<RelayConfig, ConfigError> {
        let d = RelayConfig::default();
        let listen = if self.listen.is_empty() {
            d.listen.clone()
        } else {
            self.listen
        };
        let secs = |v: Option<u64>, def: Duration, key: &str| -> Result<Duration, ConfigError> {
            match v {
                Some(0) => Err(err(key, "must be at least 1 second")),
                Some(s) if s > 86_400 * 365 => Err(err(key, "must be at most a year")),
                Some(s) => Ok(Duration::from_secs(s)),
                None => Ok(def),
            }
        };
        let default_lifetime = secs(
            self.default_lifetime,
            d.turn.default_lifetime,
            "default-lifetime",
        )?;
        let max_lifetime = secs(self.max_lifetime, d.turn.max_lifetime, "max-lifetime")?;
        if default_lifetime > max_lifetime {
            return Err(err("default-lifetime", "is longer than max-lifetime"));
        }
        let relay_ports = match &self.relay_ports {
            None => d.turn.relay_ports,
            Some(s) => parse_port_range(s).ok_or_else(|| {
                err(
                    "relay-ports",
                    format!("expected LO-HI with 1 <= LO <= HI <= 65535, got {s:?}"),
                )
            })?,
        };
        let mut users = Vec::new();
        for u in &self.users {
            match u.split_once(':') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                    users.push((n.to_string(), p.to_string()))
                }
                _ => return Err(err("user", "expected NAME:PASS")),
            }
        }
        if self.auth_secrets.iter().any(|s| s.is_empty()) {
            return Err(err("auth-secret", "must not be empty"));
        }
        if users.is_empty() && self.auth_secrets.is_empty() {
            return Err(err(
                "user",
                "no credentials: give --user NAME:PASS or --auth-secret SECRET",
            ));
        }
        let realm = self.realm.unwrap_or(d.turn.realm);
        if realm.is_empty() || realm.len() > 127 {
            return Err(err("realm", "must be 1 to 127 characters"));
        }
        // Relayed addresses per family: relay-ip, else the PRIVATE part of external-ip,
        // else a specific listen address; advertised: the PUBLIC part of external-ip.
        let mut external: Vec<(IpAddr, Option<IpAddr>)> = Vec::new();
        for e in &self.external_ip {
            let (public, private) = match e.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (e.as_str(), None),
            };
            let public: IpAddr = public
                .parse()
                .map_err(|_| err("external-ip", format!("bad address {public:?}")))?;
            let private = private
                .map(|p| {
                    p.parse::<IpAddr>()
                        .map_err(|_| err("external-ip", format!("bad address {p:?}")))
                })
                .transpose()?;
            if private.is_some_and(|p| p.is_ipv6() != public.is_ipv6()) {
                return Err(err(
                    "external-ip",
                    "PUBLIC and PRIVATE must be the same family",
                ));
            }
            external.push((public, private));
        }
        let family = |v6: bool| -> Result<Option<(IpAddr, IpAddr)>, ConfigError> {
            let ext = external.iter().find(|(p, _)| p.is_ipv6() == v6);
            let bind = self
                .relay_ip
                .iter()
                .find(|i| i.is_ipv6() == v6)
                .copied()
                .or_else(|| ext.and_then(|(_, private)| *private))
                .or_else(|| {
                    listen
                        .iter()
                        .map(|l| l.ip())
                        .find(|i| i.is_ipv6() == v6 && !i.is_unspecified())
                });
            let bind = match (bind, ext) {
                (Some(b), _) => b,
                // Listening on 0.0.0.0 with only a public address: bind relays on all.
                (None, Some(_)) if listen.iter().any(|l| l.ip().is_ipv6() == v6) => {
                    if v6 {
                        "::".parse().expect("ip")
                    } else {
                        "0.0.0.0".parse().expect("ip")
                    }
                }
                _ => return Ok(None),
            };
            let adv = ext.map(|(p, _)| *p).unwrap_or(bind);
            if adv.is_unspecified() {
                return Err(err(
                    "relay-ip",
                    format!("cannot advertise {adv}: give --relay-ip or --external-ip"),
                ));
            }
            Ok(Some((bind, adv)))
        };
        let relay_v4 = family(false)?;
        let relay_v6 = family(true)?;
        if relay_v4.is_none() && relay_v6.is_none() {
            return Err(err(
                "relay-ip",
                "no relay address: give --relay-ip or --external-ip",
            ));
        }
        // The largest STUN message (20 + 65532) is the most a TURN client can ever need.
        let max_tcp_frame = self.max_tcp_frame.unwrap_or(d.max_tcp_frame);
        if !(64..=65552).contains(&max_tcp_frame) {
            return Err(err("max-tcp-frame", "must be 64 to 65552 bytes"));
        }
        let tcp_buffer_limit = self.tcp_buffer_limit.unwrap_or(d.tcp_buffer_limit);
        if tcp_buffer_limit < max_tcp_frame {
            return Err(err("tcp-buffer-limit", "must be at least max-tcp-frame"));
        }
        if !self.tls_listen.is_empty() && (self.cert.is_none() || self.key.is_none()) {
            return Err(err("tls-listen", "needs --cert and --key"));
        }
        let proxy_from =
            match (self.proxy_protocol, self.trusted_proxy.is_empty()) {
                (true, true) => return Err(err(
                    "proxy-protocol",
                    "needs --trusted-proxy: the load balancers' addresses, the only ones whose \
                     PROXY header is believed",
                )),
                (false, false) => {
                    return Err(err(
                        "trusted-proxy",
                        "means nothing without --proxy-protocol (the relay reads no other header)",
                    ))
                }
                (true, false) => self.trusted_proxy,
                (false, true) => Vec::new(),
            };
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(err("cert", "needs --key")),
            (None, Some(_)) => return Err(err("key", "needs --cert")),
            _ => {}
        }
        Ok(RelayConfig {
            turn: Config {
                relay_v4,
                relay_v6,
                relay_ports,
                realm,
                users,
                auth_secrets: self.auth_secrets,
                allow_peer: self.allow_peer,
                deny_peer: self.deny_peer,
                default_lifetime,
                max_lifetime,
                permission_lifetime: secs(
                    self.permission_lifetime,
                    d.turn.permission_lifetime,
                    "permission-lifetime",
                )?,
                channel_lifetime: secs(
                    self.channel_lifetime,
                    d.turn.channel_lifetime,
                    "channel-lifetime",
                )?,
                nonce_lifetime: secs(self.nonce_lifetime, d.turn.nonce_lifetime, "nonce-lifetime")?,
                max_allocations: self.max_allocations.unwrap_or(d.turn.max_allocations),
                user_quota: self.user_quota.unwrap_or(d.turn.user_quota),
                max_bps: self.max_bps.unwrap_or(d.turn.max_bps),
                max_permissions: d.turn.max_permissions,
                software: d.turn.software,
            },
            listen,
            max_tcp_connections: self.max_tcp_connections.unwrap_or(d.max_tcp_connections),
            max_tcp_frame,
            tcp_buffer_limit,
            threads: self.threads.unwrap_or(d.threads),
            metrics_listen: self.metrics_listen,
            drain_timeout: self
                .drain_timeout
                .map_or(d.drain_timeout, Duration::from_secs),
            tls_listen: self.tls_listen,
            cert: self.cert,
            key: self.key,
            proxy_from,
        })
    }
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

impl RelayConfig {
    /// The effective configuration as TOML, secrets masked; itself a valid config file.
    pub fn to_masked_toml(&self) -> String {
        let ext: Vec<String> = [self.turn.relay_v4, self.turn.relay_v6]
            .into_iter()
            .flatten()
            .filter(|(b, a)| b != a)
            .map(|(b, a)| format!("{a}/{b}"))
            .collect();
        let args = RelayArgs {
            listen: self.listen.clone(),
            relay_ip: [self.turn.relay_v4, self.turn.relay_v6]
                .into_iter()
                .flatten()
                .map(|(b, _)| b)
                .collect(),
            external_ip: ext,
            relay_ports: Some(format!(
                "{}-{}",
                self.turn.relay_ports.0, self.turn.relay_ports.1
            )),
            realm: Some(self.turn.realm.clone()),
            users: self
                .turn
                .users
                .iter()
                .map(|(u, _)| format!("{u}:********"))
                .collect(),
            auth_secrets: self
                .turn
                .auth_secrets
                .iter()
                .map(|_| "********".to_string())
                .collect(),
            allow_peer: self.turn.allow_peer.clone(),
            deny_peer: self.turn.deny_peer.clone(),
            default_lifetime: Some(self.turn.default_lifetime.as_secs()),
            max_lifetime: Some(self.turn.max_lifetime.as_secs()),
            permission_lifetime: Some(self.turn.permission_lifetime.as_secs()),
            channel_lifetime: Some(self.turn.channel_lifetime.as_secs()),
            nonce_lifetime: Some(self.turn.nonce_lifetime.as_secs()),
            max_allocations: Some(self.turn.max_allocations),
            user_quota: Some(self.turn.user_quota),
            max_bps: Some(self.turn.max_bps),
            max_tcp_connections: Some(self.max_tcp_connections),
            max_tcp_frame: Some(self.max_tcp_frame),
            tcp_buffer_limit: Some(self.tcp_buffer_limit),
            threads: Some(self.threads),
            drain_timeout: Some(self.drain_timeout.as_secs()),
            metrics_listen: self.metrics_listen,
            tls_listen: self.tls_listen.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            proxy_protocol: !self.proxy_from.is_empty(),
            trusted_proxy: self.proxy_from.clone(),
        };
        toml::to_string(&args).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Shards to run: `threads`, or the available parallelism when it is 0.
    pub fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RelayArgs {
        RelayArgs {
            users: vec!["a:b".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_layering() {
        let c = base().resolve().unwrap();
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:3478".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.turn.relay_v4.unwrap().0,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.turn.default_lifetime, Duration::from_secs(600));
        let file = RelayArgs {
            realm: Some("file".into()),
            max_bps: Some(5),
            ..Default::default()
        };
        let cli = RelayArgs {
            realm: Some("cli".into()),
            ..base()
        };
        let c = cli.layer_over(file).resolve().unwrap();
        assert_eq!(c.turn.realm, "cli");
        assert_eq!(c.turn.max_bps, 5);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = RelayArgs {
            relay_ports: Some("9-1".into()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "relay-ports");
        let e = RelayArgs {
            users: vec!["nopass".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "user");
        let e = RelayArgs {
            default_lifetime: Some(7200),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "default-lifetime");
        let e = RelayArgs {
            listen: vec!["0.0.0.0:3478".parse().unwrap()],
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "relay-ip");
        // A PROXY header believed from anyone would let every client pick its address;
        // trusted proxies without it would silently do nothing.
        let e = RelayArgs {
            proxy_protocol: true,
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "proxy-protocol");
        let e = RelayArgs {
            trusted_proxy: vec!["10.0.0.0/8".parse().unwrap()],
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.key, "trusted-proxy");
        let c = RelayArgs {
            proxy_protocol: true,
            trusted_proxy: vec!["10.0.0.0/8".parse().unwrap()],
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.proxy_from, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn external_ip_behind_nat() {
        let c = RelayArgs {
            listen: vec!["0.0.0.0:3478".parse().unwrap()],
            external_ip: vec!["203.0.113.4/10.0.0.4".into()],
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.turn.relay_v4,
            Some(("10.0.0.4".parse().unwrap(), "203.0.113.4".parse().unwrap()))
        );
        let printed = c.to_masked_toml();
        assert!(printed.contains("203.0.113.4/10.0.0.4"), "{printed}");
        assert!(
            printed.contains("a:********") && !printed.contains("a:b"),
            "{printed}"
        );
    }

    #[test]
    fn toml_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("ib-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "realm = \"x\"\nmax-allocations = \"lots\"\n").unwrap();
        let e = RelayArgs::from_file(&p).unwrap_err();
        assert_eq!(e.key, "max-allocations", "{e}");
        std::fs::write(&p, "no-such-key = 1\n").unwrap();
        let e = RelayArgs::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("no-such-key"), "{e}");
        std::fs::write(&p, "user = [\"u:p\"]\nrelay-ports = \"50000-50100\"\n").unwrap();
        let c = RelayArgs::from_file(&p).unwrap().resolve().unwrap();
        assert_eq!(c.turn.relay_ports, (50000, 50100));
        std::fs::remove_dir_all(&dir).ok();
    }
}
