//! The `ice_servers` a peer receives: the relay's STUN and TURN URLs (UDP and TCP, and TLS
//! when the server speaks it) with TURN REST credentials minted for this peer and valid
//! for `--ice-ttl`.

use serde_json::value::RawValue;

use crate::config::SignalingConfig;
use crate::protocol::IceServer;

/// The STUN entry (no credentials) and the TURN entry (credentials for `peer_label`,
/// expiring `ice_ttl` after `unix_now`), each only when it has URLs.
///
/// `tls_host`: the `Host` a client reached us with over TLS. With the bundled relay the
/// `turns:` URLs name that host, the one the client just validated the certificate for:
/// at the same port (the one TLS port also carries TURN) and at `relay-tls-listen`'s.
pub fn ice_servers(
    cfg: &SignalingConfig,
    peer_label: &str,
    unix_now: u64,
    tls_host: Option<&str>,
) -> Vec<IceServer> {
    let expiry = unix_now + cfg.ice_ttl.as_secs();
    let (username, credential) = icebreaker_relay::auth::mint_rest_credentials(
        cfg.turn_secret.as_bytes(),
        expiry,
        peer_label,
    );
    let mut stun = Vec::new();
    let mut turn = Vec::new();
    if let Some((ip, port)) = cfg.relay_public() {
        let host = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        stun.push(format!("stun:{host}:{port}"));
        turn.push(format!("turn:{host}:{port}?transport=udp"));
        turn.push(format!("turn:{host}:{port}?transport=tcp"));
    }
    if let (Some(h), Some(relay)) = (tls_host.and_then(split_host_port), &cfg.relay) {
        let (name, port) = h;
        turn.push(format!("turns:{name}:{port}?transport=tcp"));
        for l in &relay.tls_listen {
            turn.push(format!("turns:{name}:{}?transport=tcp", l.port()));
        }
    }
    for u in &cfg.turn_urls {
        if u.starts_with("stun:") {
            stun.push(u.clone());
        } else {
            turn.push(u.clone());
        }
    }
    let mut out = Vec::new();
    if !stun.is_empty() {
        out.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    if !turn.is_empty() {
        out.push(IceServer {
            urls: turn,
            username: Some(username),
            credential: Some(credential),
        });
    }
    out
}

/// A `Host` header's name and port (443 when it names none). `None` for anything but a
/// plain DNS name, IPv4 or bracketed IPv6 address: the value goes into URLs.
pub fn split_host_port(host: &str) -> Option<(&str, u16)> {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], host[i + 1..].parse().ok()?),
        _ => (host, 443),
    };
    let ok = !name.is_empty()
        && name.len() <= 255
        && (name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (name.starts_with('[')
                && name.ends_with(']')
                && name[1..name.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()));
    ok.then_some((name, port))
}

/// [`ice_servers`] serialized, ready to embed in `joined`.
pub fn ice_servers_json(
    cfg: &SignalingConfig,
    peer_label: &str,
    unix_now: u64,
    tls_host: Option<&str>,
) -> Box<RawValue> {
    let v = serde_json::to_string(&ice_servers(cfg, peer_label, unix_now, tls_host))
        .expect("serializable");
    RawValue::from_string(v).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_become_url_parts_or_nothing() {
        assert_eq!(split_host_port("example.org"), Some(("example.org", 443)));
        assert_eq!(
            split_host_port("example.org:8443"),
            Some(("example.org", 8443))
        );
        assert_eq!(split_host_port("127.0.0.1:9"), Some(("127.0.0.1", 9)));
        assert_eq!(split_host_port("[::1]:8443"), Some(("[::1]", 8443)));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", 443)));
        for bad in ["", "a b", "x:y", "ev\"il", "a?b:1", "[zz]:1", "h:99999"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn tls_clients_get_turns_urls_for_the_one_port_and_the_relay_tls_port() {
        let mut args = crate::config::SignalingArgs {
            relay_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        let cfg = args.clone().resolve().unwrap();
        let plain = ice_servers(&cfg, "x", 0, None);
        assert!(plain
            .iter()
            .flat_map(|s| &s.urls)
            .all(|u| !u.starts_with("turns:")));
        args.tls_cert = Some("c.pem".into());
        args.tls_key = Some("k.pem".into());
        args.relay_tls_listen = Some("127.0.0.1:5349".parse().unwrap());
        let cfg = args.resolve().unwrap();
        let urls: Vec<String> = ice_servers(&cfg, "x", 0, Some("turn.example.org:8443"))
            .into_iter()
            .flat_map(|s| s.urls)
            .filter(|u| u.starts_with("turns:"))
            .collect();
        assert_eq!(
            urls,
            [
                "turns:turn.example.org:8443?transport=tcp",
                "turns:turn.example.org:5349?transport=tcp"
            ]
        );
    }
}
