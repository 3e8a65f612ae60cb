//! Who may connect and join: Origin checks on the WebSocket upgrade, and HS256 JWTs whose
//! claims name the room (so a token for one room cannot open another).

use axum::http::HeaderMap;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol::{ErrorCode, ProtocolError};

/// The claims a join token must carry.
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// The room the token admits to; any other room is refused.
    pub room: String,
    /// The subject (who joins); its alphanumerics label the peer's TURN credentials.
    pub sub: String,
    /// Expiry, Unix seconds (checked with 5 s of leeway).
    pub exp: u64,
}

/// Checks a join token against `room`.
pub fn check_token(secret: &str, token: Option<&str>, room: &str) -> Result<Claims, ProtocolError> {
    let unauthorized = |m: String| ProtocolError::new(ErrorCode::Unauthorized, m);
    let token = token.ok_or_else(|| unauthorized("this server needs a token to join".into()))?;
    let mut v = Validation::new(Algorithm::HS256);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.leeway = 5;
    let data = decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
        .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    if data.claims.room != room {
        return Err(unauthorized(format!(
            "token is for room {:?}",
            data.claims.room
        )));
    }
    Ok(data.claims)
}

/// Browsers send `Origin`; other clients usually do not. With no allow-list, only the
/// same origin (Origin host = Host header) or no Origin at all may open a socket, which
/// stops other web sites from using a visitor's browser against this server.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let origin = match headers.get("origin").map(|o| o.to_str()) {
        None => return true,
        Some(Ok(o)) => o,
        // Present but not visible ASCII: no origin we could match, so not allowed.
        Some(Err(_)) => return false,
    };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/') == origin);
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .map(|(_, rest)| rest == host)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct C<'a> {
        room: &'a str,
        sub: &'a str,
        exp: u64,
    }

    fn token(secret: &str, room: &str, exp: u64) -> String {
        encode(
            &Header::default(),
            &C {
                room,
                sub: "alice",
                exp,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn tokens() {
        let s = "0123456789abcdef";
        assert_eq!(
            check_token(s, Some(&token(s, "r", now() + 60)), "r")
                .unwrap()
                .sub,
            "alice"
        );
        assert!(
            check_token(s, Some(&token(s, "r", now() - 60)), "r").is_err(),
            "expired"
        );
        assert!(
            check_token(s, Some(&token(s, "other", now() + 60)), "r").is_err(),
            "wrong room"
        );
        assert!(check_token(s, Some(&token("another-secret-xx", "r", now() + 60)), "r").is_err());
        assert!(check_token(s, None, "r").is_err());
        assert!(check_token(s, Some("garbage"), "r").is_err());
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&h, &[]), "non-browser clients");
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        h.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        assert!(origin_allowed(&h, &[]));
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".into()]));
        assert!(!origin_allowed(&h, &["https://good.example".into()]));
        // Bytes that are not visible ASCII are refused, not read as "no Origin".
        h.insert(
            "origin",
            axum::http::HeaderValue::from_bytes(b"http://127.0.0.1:8080\xff").unwrap(),
        );
        assert!(!origin_allowed(&h, &[]));
        assert!(!origin_allowed(&h, &["*".into()]));
    }
}
