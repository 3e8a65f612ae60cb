//! The opening handshake, server side (RFC 6455 §4.2): which upgrade requests are
//! WebSocket version 13, and the `Sec-WebSocket-Accept` answer. The HTTP server around it
//! adds its own policy (origins, per-IP limits) and writes the response.

use base64::Engine;
use http::{header, HeaderMap, StatusCode};
use sha1::{Digest, Sha1};

/// Why an HTTP request is not a WebSocket upgrade this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Upgrade: websocket` / `Connection: upgrade`: a plain HTTP request.
    #[error("this is the WebSocket endpoint: connect with a WebSocket client")]
    NotUpgrade,
    /// A WebSocket version other than 13.
    #[error("WebSocket version 13 is required")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("Sec-WebSocket-Key is missing")]
    MissingKey,
}

impl Refusal {
    /// The HTTP status to answer with (§4.2.2: 426 names the version we speak).
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotUpgrade | Refusal::Version => StatusCode::UPGRADE_REQUIRED,
            Refusal::MissingKey => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the answer carries `Sec-WebSocket-Version: 13` (§4.4).
    pub fn advertise_version(self) -> bool {
        self == Refusal::Version
    }
}

/// Checks an upgrade request's headers; the answer is the `Sec-WebSocket-Accept` value.
pub fn accept(headers: &HeaderMap) -> Result<String, Refusal> {
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Refusal::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refusal::MissingKey)?;
    Ok(accept_key(key.as_bytes()))
}

/// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) has `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_browser_upgrade_is_accepted() {
        let h = headers(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept(&h).as_deref(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn other_requests_are_refused_with_the_right_status() {
        let plain = headers(&[("connection", "keep-alive")]);
        assert_eq!(accept(&plain), Err(Refusal::NotUpgrade));
        assert_eq!(Refusal::NotUpgrade.status(), StatusCode::UPGRADE_REQUIRED);
        let v8 = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "x"),
        ]);
        assert_eq!(accept(&v8), Err(Refusal::Version));
        assert!(Refusal::Version.advertise_version());
        let nokey = headers(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
        ]);
        assert_eq!(accept(&nokey), Err(Refusal::MissingKey));
        assert_eq!(Refusal::MissingKey.status(), StatusCode::BAD_REQUEST);
    }
}
