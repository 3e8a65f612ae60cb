//! The `ice_servers` a peer receives: the relay's STUN and TURN URLs (UDP and TCP) with
//! TURN REST credentials minted for this peer and valid for `--ice-ttl`.

use serde_json::value::RawValue;

use crate::config::SignalingConfig;
use crate::protocol::IceServer;

/// The STUN entry (no credentials) and the TURN entry (credentials for `peer_label`,
/// expiring `ice_ttl` after `unix_now`), each only when it has URLs.
pub fn ice_servers(cfg: &SignalingConfig, peer_label: &str, unix_now: u64) -> Vec<IceServer> {
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

/// [`ice_servers`] serialized, ready to embed in `joined`.
pub fn ice_servers_json(cfg: &SignalingConfig, peer_label: &str, unix_now: u64) -> Box<RawValue> {
    let v = serde_json::to_string(&ice_servers(cfg, peer_label, unix_now)).expect("serializable");
    RawValue::from_string(v).expect("valid JSON")
}
