//! TLS for the peer's client side: wss signaling and `turns:` in the doctor. Trusts the
//! Web PKI roots (webpki-roots: the same set browsers start from) plus `--ca FILE`, for
//! a deployment with a private CA or a test certificate.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Sets the roots once, at start: the Web PKI plus the PEM certificates in `ca`.
pub fn init(ca: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let pem = std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?;
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.with_context(|| format!("--ca {}: not PEM", path.display()))?;
            roots
                .add(c)
                .with_context(|| format!("--ca {}: not a usable certificate", path.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "--ca {}: no CERTIFICATE in it", path.display());
    }
    let _ = CONFIG.set(build(roots));
    Ok(())
}

fn build(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The client configuration (the Web PKI alone when [`init`] was not called).
pub fn config() -> Arc<ClientConfig> {
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            build(roots)
        })
        .clone()
}

/// A WebSocket to `url` (ws:// or wss://, the latter with [`config`]).
pub async fn ws_connect(
    url: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(config())),
    )
    .await
}
