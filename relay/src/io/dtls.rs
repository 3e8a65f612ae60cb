//! TURN over DTLS (RFC 7350): on each `--tls-listen` address the relay also answers DTLS
//! 1.2 on UDP, as coturn does on 5349. webrtc-rs's sans-IO DTLS endpoint does the
//! handshakes and the records; the decrypted datagrams go to the same core as plain UDP
//! (transport [`Transport::Dtls`], so answers go back through the association).
//!
//! Bounded like TCP: associations per shard are capped (`max-tcp-connections` counts
//! them too), only a handshake record starts one, a handshake must finish within
//! [`HANDSHAKE_TIMEOUT`], and an association without an allocation that has been silent
//! for [`IDLE_WITHOUT_ALLOCATION`] is closed.
//!
//! A client that restarts from the same address and port (a NAT that hands out the same
//! mapping again, a client that binds a fixed port) sends a new epoch-0 ClientHello into an
//! association that is still established. RFC 6347 §4.2.8: the server should run that
//! handshake, but must not destroy the old association until the client has shown it can
//! receive at that address. So the new handshake runs in a second endpoint (the DTLS stack
//! keys associations by address, one per endpoint), behind its own cookie exchange, and
//! replaces the old association (and closes its allocation) only when it completes; one
//! that fails or times out leaves the old association as it was, so a spoofed ClientHello
//! changes nothing.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use icebreaker_service::tls::Certificates;
use rtc_dtls::config::{ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::crypto_provider::{self as dtls_crypto, SignatureScheme};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rustc_hash::FxHashMap;
use rustls::pki_types::PrivateKeyDer;
use tracing::debug;

use super::shard::{send_now, Binder, Ctx};
use crate::{FiveTuple, Transport};

/// A DTLS handshake must complete within this (as the TLS ones do).
const HANDSHAKE_TIMEOUT: Duration = icebreaker_service::tls::HANDSHAKE_TIMEOUT;
/// An association with no allocation and no datagram for this long is closed.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);
/// How often handshake retransmissions and deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// DTLS record content type of a handshake: the only record that may start an association.
const HANDSHAKE_RECORD: u8 = 22;
/// DTLS record content type of ChangeCipherSpec (part of a handshake's flights).
const CHANGE_CIPHER_SPEC: u8 = 20;

/// The DTLS server configuration for `certs`. The DTLS stack imports keys as PKCS#8 only,
/// so SEC1 (`BEGIN EC PRIVATE KEY`: lego, Caddy, `openssl ecparam`) and PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`) keys are rewrapped first; TLS serves the same files as they are.
pub(crate) fn handshake_config(certs: &Certificates) -> Result<Arc<HandshakeConfig>, String> {
    let provider = dtls_crypto::default_provider().map_err(|e| e.to_string())?;
    let (chain, key) = certs.chain_and_key();
    let key = to_pkcs8(&key)?;
    let signing = [
        SignatureScheme::EcdsaP256Sha256,
        SignatureScheme::Ed25519,
        SignatureScheme::RsaPkcs1Sha256,
    ]
    .into_iter()
    .find_map(|s| provider.crypto().import_signing_key(s, &key).ok())
    .ok_or("the key is neither ECDSA P-256, Ed25519 nor RSA")?;
    ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_certificates(vec![Certificate::from_signing_key(chain, signing)])
        .with_extended_master_secret(ExtendedMasterSecretType::Request)
        .build(false, None)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// `OneAsymmetricKey` (RFC 5958) DER of `key`: PKCS#8 as it is, a SEC1 EC key under
/// id-ecPublicKey with its named curve (RFC 5915 §3), a PKCS#1 RSA key under rsaEncryption.
fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    use pkcs8::der::asn1::AnyRef;
    use pkcs8::der::{Decode, Encode};
    use pkcs8::{AlgorithmIdentifierRef, ObjectIdentifier, PrivateKeyInfo};
    const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    let wrap = |oid, parameters, der: &[u8]| {
        let info = PrivateKeyInfo::new(AlgorithmIdentifierRef { oid, parameters }, der);
        info.to_der()
            .map_err(|e| format!("cannot rewrap the key as PKCS#8: {e}"))
    };
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(k) => {
            let der = k.secret_sec1_der();
            let ec = sec1::EcPrivateKey::from_der(der)
                .map_err(|e| format!("the SEC1 key does not parse: {e}"))?;
            let curve = ec
                .parameters
                .and_then(|p| p.named_curve())
                .ok_or("the SEC1 key does not name its curve")?;
            wrap(EC_PUBLIC_KEY, Some(AnyRef::from(&curve)), der)
        }
        PrivateKeyDer::Pkcs1(k) => wrap(RSA_ENCRYPTION, Some(AnyRef::NULL), k.secret_pkcs1_der()),
        _ => Err("unknown private key format".into()),
    }
}

struct Assoc {
    started: Instant,
    last: Instant,
    established: bool,
    /// The endpoint (index into [`DtlsSocket::endpoints`]) that holds the association.
    slot: usize,
    /// When a new handshake from the same address began while this association was
    /// established; it runs in the other endpoint until it completes, fails or times out.
    restart: Option<Instant>,
}

impl Assoc {
    /// The endpoint that gets `data`: while a restart runs, handshake and
    /// ChangeCipherSpec records and anything at epoch 0 belong to the new handshake
    /// (routed by a datagram's first record; a flight's records travel together).
    fn slot_for(&self, data: &[u8]) -> usize {
        let new_handshake = matches!(data.first(), Some(&HANDSHAKE_RECORD | &CHANGE_CIPHER_SPEC))
            || data.get(3..5) == Some(&[0, 0]);
        if self.restart.is_some() && new_handshake {
            1 - self.slot
        } else {
            self.slot
        }
    }
}

/// The cookie of the epoch-0 ClientHello that `data` begins with (empty in a client's
/// first ClientHello, the server's in the one after a HelloVerifyRequest); None when
/// `data` is something else. Layout: the record header (type, version, epoch, sequence,
/// length: 13 bytes), the handshake header (12), client_version (2), random (32), then the
/// session id and the cookie, each after its one-byte length (RFC 6347 §4.2.1, §4.3.2).
fn client_hello_cookie(data: &[u8]) -> Option<&[u8]> {
    if data.len() <= 13 || data[0] != HANDSHAKE_RECORD || data[3..5] != [0, 0] || data[13] != 1 {
        return None;
    }
    let session_id = usize::from(*data.get(59)?);
    let at = 60 + session_id;
    let len = usize::from(*data.get(at)?);
    data.get(at + 1..at + 1 + len)
}

/// One DTLS port of a shard: its socket, the endpoint holding every association on it.
pub(crate) struct DtlsSocket {
    /// The address it is bound to (the `server` of its 5-tuples).
    pub local: SocketAddr,
    sock: Rc<tokio::net::UdpSocket>,
    /// Two endpoints so that a restarted handshake can run beside the association it may
    /// replace (see the module's doc); every other association lives in either.
    endpoints: [RefCell<Endpoint>; 2],
    assocs: RefCell<FxHashMap<SocketAddr, Assoc>>,
    /// The certificates and the reload generation the endpoint's configuration was built from.
    certs: Arc<Certificates>,
    generation: Cell<u64>,
}

impl DtlsSocket {
    pub(crate) fn new(
        sock: std::net::UdpSocket,
        config: Arc<HandshakeConfig>,
        certs: Arc<Certificates>,
    ) -> std::io::Result<DtlsSocket> {
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let endpoint = || {
            RefCell::new(Endpoint::new(
                local,
                rtc_shared::TransportProtocol::UDP,
                Some(config.clone()),
            ))
        };
        Ok(DtlsSocket {
            local,
            sock: Rc::new(tokio::net::UdpSocket::from_std(sock)?),
            endpoints: [endpoint(), endpoint()],
            assocs: RefCell::default(),
            generation: Cell::new(certs.generation()),
            certs,
        })
    }

    /// Associations held now (they count against the shard's connection limit).
    pub(crate) fn associations(&self) -> usize {
        self.assocs.borrow().len()
    }

    fn five_tuple(&self, client: SocketAddr) -> FiveTuple {
        FiveTuple {
            client,
            server: self.local,
            transport: Transport::Dtls,
        }
    }

    /// Sends what the endpoints queued.
    fn flush(&self, ctx: &Ctx) {
        for endpoint in &self.endpoints {
            let mut e = endpoint.borrow_mut();
            while let Some(t) = e.poll_transmit() {
                if let Err(err) = send_now(&self.sock, &t.message, t.transport.peer_addr) {
                    ctx.send_failed(err);
                }
            }
        }
    }

    /// The endpoint holding `client`'s established association (or its handshake).
    fn slot(&self, client: &SocketAddr) -> usize {
        self.assocs.borrow().get(client).map_or(0, |a| a.slot)
    }

    /// Encrypts `data` (an answer or relayed data) for `client`.
    pub(crate) fn send(&self, ctx: &Ctx, client: SocketAddr, data: &[u8]) {
        let r = self.endpoints[self.slot(&client)]
            .borrow_mut()
            .write(Instant::now(), client, data);
        match r {
            Ok(()) => self.flush(ctx),
            Err(e) => {
                debug!(%client, error = %e, "DTLS write failed");
                ctx.metrics.drop("dtls_write");
            }
        }
    }

    fn forget(&self, ctx: &Rc<Ctx>, client: SocketAddr, now: Instant) {
        let a = self.assocs.borrow_mut().remove(&client);
        let slot = a.as_ref().map_or(0, |a| a.slot);
        let _ = self.endpoints[slot].borrow_mut().stop(now, client);
        if a.is_some_and(|a| a.restart.is_some()) {
            let _ = self.endpoints[1 - slot].borrow_mut().stop(now, client);
        }
        self.flush(ctx);
        ctx.core
            .borrow_mut()
            .close_client(&self.five_tuple(client), &mut Binder(ctx));
    }

    /// Ends `client`'s restarted handshake (failed or late); the association stays.
    fn abandon_restart(&self, ctx: &Ctx, client: SocketAddr, now: Instant, result: &'static str) {
        let slot = {
            let mut assocs = self.assocs.borrow_mut();
            let Some(a) = assocs.get_mut(&client).filter(|a| a.restart.is_some()) else {
                return;
            };
            a.restart = None;
            1 - a.slot
        };
        self.discard(slot, client, now);
        ctx.metrics.all.dtls_handshake(result);
    }

    /// Drops `client`'s connection in endpoint `slot` without a word to the client: what
    /// `stop` queues (a close_notify) would reach the client's other handshake or
    /// association, which cannot use it. Every call flushes, so the queue holds only that.
    fn discard(&self, slot: usize, client: SocketAddr, now: Instant) {
        let mut e = self.endpoints[slot].borrow_mut();
        let _ = e.stop(now, client);
        while e.poll_transmit().is_some() {}
    }

    /// `client`'s restarted handshake completed: it has shown it receives at this address,
    /// so the old association and its allocation go (RFC 6347 §4.2.8), and the new one
    /// takes its place.
    fn replace(&self, ctx: &Rc<Ctx>, client: SocketAddr, now: Instant) {
        let old = {
            let mut assocs = self.assocs.borrow_mut();
            let Some(a) = assocs.get_mut(&client) else {
                return;
            };
            let old = a.slot;
            *a = Assoc {
                started: now,
                last: now,
                established: true,
                slot: 1 - old,
                restart: None,
            };
            old
        };
        self.discard(old, client, now);
        ctx.core
            .borrow_mut()
            .close_client(&self.five_tuple(client), &mut Binder(ctx));
        ctx.metrics.all.dtls_handshake("replaced");
        debug!(%client, "a new DTLS handshake from the same address replaced its association");
    }

    fn datagram(&self, ctx: &Rc<Ctx>, from: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        let held: usize = ctx.dtls.iter().map(|d| d.associations()).sum();
        let mut restart_again = None;
        let (slot, restarting) = {
            let mut assocs = self.assocs.borrow_mut();
            match assocs.get_mut(&from) {
                Some(a) => {
                    a.last = now;
                    let cookie = client_hello_cookie(data);
                    if a.established && cookie.is_some() {
                        // A first ClientHello (no cookie) while a restart runs is a new
                        // attempt (the client's retransmission, another restart, or a
                        // spoofer's): that handshake begins again rather than mixing
                        // two clients' hellos in one.
                        if a.restart.is_some() && cookie == Some(&[]) {
                            restart_again = Some(1 - a.slot);
                        }
                        if a.restart.is_none() || restart_again.is_some() {
                            a.restart = Some(now);
                        }
                    }
                    let slot = a.slot_for(data);
                    (slot, slot != a.slot)
                }
                None => {
                    if data.first() != Some(&HANDSHAKE_RECORD) {
                        ctx.metrics.drop("dtls_not_handshake");
                        return;
                    }
                    if held + ctx.tcp.borrow().len() + ctx.handshaking.get() >= ctx.max_tcp {
                        ctx.metrics.drop("dtls_association_limit");
                        return;
                    }
                    assocs.insert(
                        from,
                        Assoc {
                            started: now,
                            last: now,
                            established: false,
                            slot: 0,
                            restart: None,
                        },
                    );
                    (0, false)
                }
            }
        };
        if let Some(slot) = restart_again {
            self.discard(slot, from, now);
        }
        let r = self.endpoints[slot]
            .borrow_mut()
            .read(now, from, None, BytesMut::from(data));
        self.flush(ctx);
        if restarting {
            match r {
                Err(e) => {
                    debug!(client = %from, error = %e, "restarted DTLS handshake refused");
                    self.abandon_restart(ctx, from, now, "failed");
                }
                Ok(events) => {
                    for ev in events {
                        match ev {
                            EndpointEvent::HandshakeComplete => self.replace(ctx, from, now),
                            EndpointEvent::ApplicationData(b) => {
                                ctx.client_packet(self.five_tuple(from), &b)
                            }
                            EndpointEvent::PeerClosed => {
                                self.abandon_restart(ctx, from, now, "failed")
                            }
                            _ => {}
                        }
                    }
                }
            }
            return;
        }
        let events = match r {
            Ok(ev) => ev,
            Err(e) => {
                let established = self
                    .assocs
                    .borrow()
                    .get(&from)
                    .is_some_and(|a| a.established);
                debug!(client = %from, error = %e, established, "DTLS record refused");
                if !established {
                    ctx.metrics.all.dtls_handshake("failed");
                    self.forget(ctx, from, now);
                }
                return;
            }
        };
        for ev in events {
            match ev {
                EndpointEvent::HandshakeComplete => {
                    if let Some(a) = self.assocs.borrow_mut().get_mut(&from) {
                        a.established = true;
                    }
                    ctx.metrics.all.dtls_handshake("ok");
                }
                EndpointEvent::ApplicationData(b) => ctx.client_packet(self.five_tuple(from), &b),
                EndpointEvent::PeerClosed => {
                    self.forget(ctx, from, now);
                    return;
                }
                _ => {}
            }
        }
    }

    /// Handshake retransmissions and deadlines, idle associations, certificate reloads.
    fn tick(&self, ctx: &Rc<Ctx>, now: Instant, sweep_idle: bool) {
        let g = self.certs.generation();
        if g != self.generation.get() {
            self.generation.set(g);
            match handshake_config(&self.certs) {
                Ok(c) => {
                    for e in &self.endpoints {
                        e.borrow_mut().set_server_config(Some(c.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reloaded certificate not usable for DTLS; keeping the old one")
                }
            }
        }
        let mut late = Vec::new();
        let mut retransmit = Vec::new();
        let mut late_restarts = Vec::new();
        for (addr, a) in self.assocs.borrow().iter() {
            if let Some(began) = a.restart {
                if now.duration_since(began) >= HANDSHAKE_TIMEOUT {
                    late_restarts.push(*addr);
                } else {
                    retransmit.push((*addr, 1 - a.slot));
                }
            }
            if !a.established {
                if now.duration_since(a.started) >= HANDSHAKE_TIMEOUT {
                    late.push(*addr);
                } else {
                    retransmit.push((*addr, a.slot));
                }
            } else if sweep_idle
                && now.duration_since(a.last) >= IDLE_WITHOUT_ALLOCATION
                && ctx
                    .core
                    .borrow()
                    .allocation(&self.five_tuple(*addr))
                    .is_none()
            {
                late.push(*addr);
            }
        }
        for (addr, slot) in retransmit {
            let endpoint = &self.endpoints[slot];
            let due = endpoint
                .borrow()
                .poll_timeout(&addr)
                .is_some_and(|t| t <= now);
            if due && endpoint.borrow_mut().handle_timeout(addr, now).is_err() {
                if slot == self.slot(&addr) {
                    late.push(addr);
                } else {
                    late_restarts.push(addr);
                }
            }
        }
        self.flush(ctx);
        for addr in late_restarts {
            self.abandon_restart(ctx, addr, now, "timeout");
        }
        for addr in late {
            if self
                .assocs
                .borrow()
                .get(&addr)
                .is_some_and(|a| !a.established)
            {
                ctx.metrics.all.dtls_handshake("timeout");
            }
            self.forget(ctx, addr, now);
        }
    }
}

/// Reads one DTLS port.
pub(super) async fn reader(ctx: Rc<Ctx>, d: Rc<DtlsSocket>) {
    loop {
        if d.sock.readable().await.is_err() {
            return;
        }
        loop {
            let mut buf = ctx.buf.borrow_mut();
            match d.sock.try_recv_from(&mut buf) {
                Ok((n, from)) => d.datagram(&ctx, from, &buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => debug!(error = %e, "DTLS receive error"),
            }
        }
    }
}

/// Drives the timers of one DTLS port.
pub(super) async fn timer(ctx: Rc<Ctx>, d: Rc<DtlsSocket>) {
    let mut tick = tokio::time::interval(TICK);
    let mut n = 0u32;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        d.tick(&ctx, Instant::now(), n.is_multiple_of(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs8::der::{Decode, Encode};
    use rustls::pki_types::{PrivatePkcs8KeyDer, PrivateSec1KeyDer};

    fn imports(der: &[u8]) -> bool {
        dtls_crypto::default_provider()
            .unwrap()
            .crypto()
            .import_signing_key(SignatureScheme::EcdsaP256Sha256, der)
            .is_ok()
    }

    /// The cookie of a real client's first ClientHello is empty; a record that is not an
    /// epoch-0 ClientHello, or one cut short, has none.
    #[test]
    fn client_hello_cookie_reads_a_real_hello() {
        let server: SocketAddr = "127.0.0.1:5349".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let config = ConfigBuilder::default()
            .with_crypto_provider(dtls_crypto::default_provider().unwrap())
            .with_insecure_skip_verify(true)
            .build(true, Some(server))
            .unwrap();
        let mut client = Endpoint::new(local, rtc_shared::TransportProtocol::UDP, None);
        client
            .connect(Instant::now(), server, Arc::new(config), None)
            .unwrap();
        let hello = client.poll_transmit().unwrap().message.to_vec();
        assert_eq!(client_hello_cookie(&hello), Some(&[][..]));
        for cut in [0, 13, 14, 59, 60] {
            assert_eq!(client_hello_cookie(&hello[..cut]), None, "cut at {cut}");
        }
        let mut later_epoch = hello.clone();
        later_epoch[4] = 1;
        assert_eq!(client_hello_cookie(&later_epoch), None);
        let mut data = hello.clone();
        data[0] = 23;
        assert_eq!(client_hello_cookie(&data), None);
    }

    /// A SEC1 key as `openssl ecparam -genkey` writes it (curve named inside) becomes a
    /// PKCS#8 key the DTLS stack signs with; one that names no curve is refused clearly.
    #[test]
    fn sec1_keys_are_rewrapped_as_pkcs8() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = key.serialize_der();
        assert!(imports(
            &to_pkcs8(&PrivatePkcs8KeyDer::from(pkcs8.clone()).into()).unwrap()
        ));

        let inner = pkcs8::PrivateKeyInfo::from_der(&pkcs8).unwrap().private_key;
        let mut ec = sec1::EcPrivateKey::from_der(inner).unwrap();
        let bare = ec.to_der().unwrap();
        let p256 = pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        ec.parameters = Some(sec1::EcParameters::NamedCurve(p256));
        let sec1 = ec.to_der().unwrap();

        let rewrapped = to_pkcs8(&PrivateSec1KeyDer::from(sec1).into()).unwrap();
        assert!(imports(&rewrapped));
        let err = to_pkcs8(&PrivateSec1KeyDer::from(bare).into()).unwrap_err();
        assert!(err.contains("curve"), "{err}");
        let err = to_pkcs8(&PrivateSec1KeyDer::from(vec![1, 2, 3]).into()).unwrap_err();
        assert!(err.contains("does not parse"), "{err}");
    }
}
