//! TLS for both binaries (rustls, with ring): a certificate chain and key read from PEM
//! files and served through a resolver that a reload swaps. New handshakes get the new
//! certificate; connections already established keep the keys they agreed, so a rotation
//! drops nothing.
//!
//! The files are read again on SIGHUP ([`Certificates::reload`]) and when they change on
//! disk ([`Certificates::watch`]). Watching polls the files' metadata every couple of
//! seconds instead of using inotify: certbot and friends replace files by renaming
//! symlinks in another directory, which inotify on the configured path does not see, and
//! a poll of two `stat`s costs nothing.

mod conn;

pub use conn::{TlsConn, TlsParts, OUTPUT_LIMIT};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long a client may take over its TLS handshake before the connection is closed; a
/// slow handshake must not hold a connection (and its buffers) for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why certificates could not be loaded. The old ones stay in use after a failed reload.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key does not belong to the certificate, or is of a kind rustls cannot sign with.
    #[error("{key} does not fit {cert}: {why}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        why: String,
    },
}

/// The files' metadata as last seen: a change of any of it means "read them again".
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The server certificate of a binary, reloadable. Share it (`Arc`) between listeners:
/// every [`ServerConfig`] made by [`Certificates::server_config`] resolves through it.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The private key as read (DER), for DTLS, which signs with its own crypto provider;
    /// swapped with `current`.
    key_der: ArcSwap<PrivateKeyDer<'static>>,
    /// Bumped by every successful reload, so holders of a derived configuration (DTLS)
    /// know when to rebuild it.
    generation: std::sync::atomic::AtomicU64,
    stamp: Mutex<Stamp>,
}

impl Certificates {
    /// Reads `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let stamp = stamp(cert, key);
        let (ck, der) = read(cert, key)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            key_der: ArcSwap::from_pointee(der),
            generation: std::sync::atomic::AtomicU64::new(0),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Reads the files again; on success new handshakes use them. On error nothing
    /// changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamp(&self.cert, &self.key);
        let (ck, der) = read(&self.cert, &self.key)?;
        self.key_der.store(Arc::new(der));
        self.current.store(Arc::new(ck));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        *self.stamp.lock().expect("stamp") = stamp;
        Ok(())
    }

    /// Whether the files' metadata differ from what the last (attempted) load saw; records
    /// the new metadata, so one change is reported once.
    fn changed(&self) -> bool {
        let now = stamp(&self.cert, &self.key);
        let mut seen = self.stamp.lock().expect("stamp");
        if *seen == now {
            return false;
        }
        *seen = now;
        true
    }

    /// Polls the files every `every` and reloads when they change, calling `done` with
    /// each attempt's outcome (the binaries log and count it). Runs until dropped.
    pub async fn watch(self: Arc<Self>, every: Duration, done: impl Fn(Result<(), TlsError>)) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.changed() {
                done(self.reload());
            }
        }
    }

    /// The certificate chain served now (leaf first), DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// How many reloads have succeeded.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The chain and the private key served now, DER (the key as the file holds it:
    /// PKCS#8, PKCS#1 or SEC1).
    pub fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = self.key_der.load().clone_key();
        (self.chain(), key)
    }

    /// A rustls server configuration resolving through these certificates, offering
    /// `alpn` (in order of preference; empty: no ALPN).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut c =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver(self.clone())));
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// How a TLS handshake ended, for the binaries' `tls_handshakes_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Done; the connection is served.
    Ok,
    /// Not TLS, a broken or truncated hello, no shared cipher suite, or the client left.
    Failed,
    /// Not finished within [`HANDSHAKE_TIMEOUT`].
    Timeout,
}

impl Handshake {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::Timeout => "timeout",
        }
    }
}

/// Runs the server side of a handshake on `tcp`, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: tokio::net::TcpStream,
) -> Result<TlsConn, Handshake> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => Err(Handshake::Timeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Err(Handshake::Failed)
        }
        Ok(Ok(s)) => {
            let (tcp, conn) = s.into_inner();
            TlsConn::new(tcp, conn).map_err(|_| Handshake::Failed)
        }
    }
}

/// Logs a certificate reload's outcome the way both binaries do (`what`: whose
/// certificate, `why`: what asked) and gives the metric label, `ok` or `error`.
pub fn report_reload(r: Result<(), TlsError>, what: &str, why: &str) -> &'static str {
    match r {
        Ok(()) => {
            tracing::info!("{why}: {what}TLS certificate reloaded; new connections get it");
            "ok"
        }
        Err(e) => {
            tracing::warn!(error = %e, "{why}: {what}TLS certificate not reloaded; still serving the previous one");
            "error"
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn read(cert: &Path, key: &Path) -> Result<(CertifiedKey, PrivateKeyDer<'static>), TlsError> {
    let file_err = |path: &Path, why: String| TlsError::File {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(cert).map_err(|e| file_err(cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no CERTIFICATE in it".into()));
    }
    let pem = std::fs::read(key).map_err(|e| file_err(key, e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err(key, format!("no private key in it: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let mismatch = |why: String| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why,
    };
    let signing = provider
        .key_provider
        .load_private_key(der.clone_key())
        .map_err(|e| mismatch(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| mismatch(e.to_string()))?;
    Ok((ck, der))
}

/// Whether a stream's first byte starts a STUN message (its two top bits are zero, RFC
/// 8489 §5) rather than an HTTP request (a method: uppercase letters, 0x41 and up). This
/// is how one TLS port serves both the web and TURN over TLS. A TURN client's first
/// message is always a STUN request (Allocate, Binding): ChannelData, whose first byte
/// (0x40–0x4F) does look like 'C', 'D', 'G', 'H' or 'O', only follows a ChannelBind.
pub fn looks_like_stun(first: u8) -> bool {
    first < 0x40
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexes_stun_from_http() {
        for m in [
            b"GET ", b"POST", b"HEAD", b"OPTI", b"PUT ", b"DELE", b"CONN", b"PATC",
        ] {
            assert!(!looks_like_stun(m[0]));
        }
        // Binding and Allocate requests, the largest STUN message type's first byte.
        assert!(looks_like_stun(0x00));
        assert!(looks_like_stun(0x01));
        assert!(looks_like_stun(0x3f));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ib-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("c.pem");
        let k = dir.join("k.pem");
        std::fs::write(&c, "not pem").unwrap();
        std::fs::write(&k, "").unwrap();
        let e = Certificates::load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("c.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = Certificates::load(&dir.join("missing.pem"), &k)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
