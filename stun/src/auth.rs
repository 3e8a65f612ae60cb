//! Long-term credentials (RFC 8489 §9.2), TURN REST ephemeral credentials
//! (draft-uberti-behave-turn-rest) and stateless nonces.

use std::net::IpAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rustc_hash::FxHashMap;
use sha1::Sha1;
use sha2::Sha256;

/// The long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub type Key = [u8; 16];

/// Derives the long-term key of `username` in `realm` from `password` (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The TURN REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("any key size");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Mints TURN REST credentials valid until `expiry_unix` (what signaling hands to peers).
pub fn mint_rest_credentials(secret: &[u8], expiry_unix: u64, id: &str) -> (String, String) {
    let username = if id.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}:{id}")
    };
    let password = rest_password(secret, &username);
    (username, password)
}

/// Why [`Authenticator::keys`] has no key for a username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a static user nor a TURN REST username (`expiry[:id]`) with a secret configured.
    #[error("unknown user")]
    UnknownUser,
    /// A TURN REST username whose expiry time has passed.
    #[error("ephemeral credentials expired")]
    Expired,
}

/// What [`Authenticator::check_nonce`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by us, to this client IP, and within its lifetime.
    Valid,
    /// Well-formed and ours but too old, or not ours at all: the client must retry with
    /// the fresh nonce we send in a 438.
    Stale,
}

/// Long-term credential checks for one realm: static users, TURN REST secrets, and the
/// stateless nonces of the 401/438 challenge (RFC 8489 §9.2).
pub struct Authenticator {
    realm: String,
    users: FxHashMap<String, Key>,
    rest_secrets: Vec<Vec<u8>>,
    nonce_secret: [u8; 32],
    nonce_lifetime_secs: u64,
}

impl Authenticator {
    /// Hashes the static `users` (name, password) into keys for `realm`; `rest_secrets`
    /// verify TURN REST usernames, and nonces stay valid `nonce_lifetime_secs`. The nonce
    /// secret is random per instance, so nonces do not survive a restart.
    pub fn new(
        realm: &str,
        users: &[(String, String)],
        rest_secrets: &[String],
        nonce_lifetime_secs: u64,
    ) -> Self {
        let users = users
            .iter()
            .map(|(u, p)| (u.clone(), long_term_key(u, realm, p)))
            .collect();
        Authenticator {
            realm: realm.to_string(),
            users,
            rest_secrets: rest_secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            nonce_secret: rand::random(),
            nonce_lifetime_secs,
        }
    }

    /// New credentials (a reload) that keep this one's nonce secret, so the nonces clients
    /// hold stay valid and a reload costs them no extra round trip.
    pub fn reloaded(
        &self,
        realm: &str,
        users: &[(String, String)],
        rest_secrets: &[String],
        nonce_lifetime_secs: u64,
    ) -> Self {
        Authenticator {
            nonce_secret: self.nonce_secret,
            ..Self::new(realm, users, rest_secrets, nonce_lifetime_secs)
        }
    }

    /// The REALM sent in challenges and expected in authenticated requests.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Candidate keys for `username`: a static user has one; a REST username has one per
    /// configured secret, so a secret can be rotated without cutting off live clients.
    pub fn keys(&self, username: &str, unix_now: u64) -> Result<Vec<Key>, AuthError> {
        if let Some(k) = self.users.get(username) {
            return Ok(vec![*k]);
        }
        if self.rest_secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        let expiry: u64 = username
            .split(':')
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or(AuthError::UnknownUser)?;
        if expiry <= unix_now {
            return Err(AuthError::Expired);
        }
        Ok(self
            .rest_secrets
            .iter()
            .map(|s| long_term_key(username, &self.realm, &rest_password(s, username)))
            .collect())
    }

    /// A stateless nonce: hex(issue time, 32 bits) ‖ hex(HMAC(secret, time ‖ client IP)[..8]).
    /// Nothing is stored per client, and a nonce replayed from another address is stale.
    /// 24 characters: it goes out in every 401, to anyone, so it is kept short (64 bits of
    /// tag cannot be forged within a nonce's lifetime).
    pub fn nonce(&self, unix_now: u64, client: IpAddr) -> String {
        let t = unix_now as u32 as u64;
        let tag = self.nonce_tag(t, client);
        let mut s = format!("{t:08x}");
        for b in &tag[..NONCE_TAG] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_tag(&self, t: u64, client: IpAddr) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_secret).expect("key");
        mac.update(&t.to_be_bytes());
        match client.to_canonical() {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.finalize().into_bytes().into()
    }

    /// Checks a NONCE from `client`: its tag must be ours for that IP and its issue time within
    /// the lifetime (a few seconds of clock skew allowed); anything else is [`NonceCheck::Stale`].
    pub fn check_nonce(&self, nonce: &str, unix_now: u64, client: IpAddr) -> NonceCheck {
        let Some((t, tag)) = parse_nonce(nonce) else {
            return NonceCheck::Stale;
        };
        let expected = self.nonce_tag(t, client);
        // Constant-time comparison of the tag, so the nonce cannot be guessed byte by byte.
        let diff = expected[..NONCE_TAG]
            .iter()
            .zip(tag.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // The issue time is 32 bits (until 2106): compare in that width.
        let now = unix_now as u32 as u64;
        let fresh = t <= now + 5 && now.saturating_sub(t) < self.nonce_lifetime_secs;
        if diff == 0 && fresh {
            NonceCheck::Valid
        } else {
            NonceCheck::Stale
        }
    }
}

/// Bytes of HMAC in a nonce.
const NONCE_TAG: usize = 8;

fn parse_nonce(n: &str) -> Option<(u64, [u8; NONCE_TAG])> {
    if n.len() != 8 + 2 * NONCE_TAG || !n.is_ascii() {
        return None;
    }
    let t = u64::from_str_radix(&n[..8], 16).ok()?;
    let mut tag = [0u8; NONCE_TAG];
    for (i, b) in tag.iter_mut().enumerate() {
        *b = u8::from_str_radix(&n[8 + 2 * i..10 + 2 * i], 16).ok()?;
    }
    Some((t, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "203.0.113.7".parse().unwrap()
    }

    #[test]
    fn nonce_is_valid_then_stale() {
        let a = Authenticator::new("r", &[], &[], 600);
        let n = a.nonce(1000, ip());
        assert_eq!(a.check_nonce(&n, 1000, ip()), NonceCheck::Valid);
        assert_eq!(a.check_nonce(&n, 1599, ip()), NonceCheck::Valid);
        assert_eq!(a.check_nonce(&n, 1600, ip()), NonceCheck::Stale);
        // bound to the client address
        assert_eq!(
            a.check_nonce(&n, 1000, "203.0.113.8".parse().unwrap()),
            NonceCheck::Stale
        );
        // forged or garbage
        let mut forged = n.clone();
        let last = forged.len() - 1;
        forged.replace_range(last.., if n.ends_with('0') { "1" } else { "0" });
        assert_eq!(a.check_nonce(&forged, 1000, ip()), NonceCheck::Stale);
        assert_eq!(a.check_nonce("xyz", 1000, ip()), NonceCheck::Stale);
        assert_eq!(
            a.check_nonce(&"é".repeat(12), 1000, ip()),
            NonceCheck::Stale
        );
    }

    #[test]
    fn rest_credentials_expire_and_rotate() {
        let a = Authenticator::new("r", &[], &["old".into(), "new".into()], 600);
        let (u, p) = mint_rest_credentials(b"new", 2000, "alice");
        assert_eq!(u, "2000:alice");
        let keys = a.keys(&u, 1999).unwrap();
        assert!(keys.contains(&long_term_key(&u, "r", &p)));
        assert_eq!(a.keys(&u, 2000), Err(AuthError::Expired));
        assert_eq!(a.keys("alice", 1), Err(AuthError::UnknownUser));
    }

    #[test]
    fn static_users() {
        let a = Authenticator::new("example.org", &[("test".into(), "test".into())], &[], 600);
        assert_eq!(
            a.keys("test", 0).unwrap(),
            vec![long_term_key("test", "example.org", "test")]
        );
        assert_eq!(a.keys("nobody", 0), Err(AuthError::UnknownUser));
    }
}
