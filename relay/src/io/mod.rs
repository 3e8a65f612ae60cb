//! Thin tokio drivers around the sans-IO core.
//!
//! One OS thread per shard, each with a current-thread runtime. Every shard binds the
//! client-facing UDP and TCP ports with SO_REUSEPORT, so the kernel spreads clients over
//! shards by 4-tuple hash and a client's packets always reach the shard that holds its
//! allocation. Within a shard everything is single-threaded (`Rc`/`RefCell`): no locks on
//! the packet path. Relayed sockets have no buffer or task of their own: a shard watches
//! them all through one epoll set and reads them into its one `recvmmsg` batch
//! (`batch.rs`), so an idle allocation costs only its bookkeeping and its socket.

mod batch;
mod dtls;
mod shard;
mod tcp;
mod tcp_relay;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;

use icebreaker_service::tls::{Certificates, TlsConn, TlsParts};
use socket2::{Protocol, Type};
use tokio::sync::watch;

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;
use crate::server::Shared;

/// The client TCP limits of `RelayConfig`, split over the shards.
#[derive(Debug, Clone)]
pub(crate) struct TcpLimits {
    connections: usize,
    frame: usize,
    buffer: usize,
    /// Load balancers whose connections begin with a PROXY header (`proxy_from`), swapped
    /// by [`RelayHandle::set_proxy_from`] on SIGHUP.
    proxy_from: Arc<ProxyFrom>,
}

/// A client connection on its way to another shard's runtime.
pub(crate) enum Moved {
    /// Plain TURN over TCP.
    Tcp(std::net::TcpStream),
    /// TURN over TLS, its rustls state with it (boxed: a rustls connection is large).
    Tls(Box<TlsParts>),
}

/// A connection for a shard to adopt, and bytes already read from it that the shard
/// handles first.
pub(crate) struct Adopt {
    conn: Moved,
    prefix: Vec<u8>,
    /// The client's address when it is not the socket's peer: named by a load balancer's
    /// PROXY header, read by whoever accepted the connection.
    client: Option<SocketAddr>,
}

/// Hands client connections to the relay's shards: TURN-over-TLS connections accepted
/// elsewhere (how `icebreaker` serves TURN on its one TLS port beside HTTPS), and RFC 6062
/// data connections the kernel hashed to a shard other than the one holding their peer.
#[derive(Clone)]
pub struct Handoff {
    shards: Arc<[tokio::sync::mpsc::Sender<Adopt>]>,
}

impl Handoff {
    /// Gives `conn` (handshake done, its first bytes STUN) from `client` to the shard its
    /// client port picks. `client` is the socket's peer, or the client a trusted load
    /// balancer named in a PROXY header: the TURN core sees it as the 5-tuple's client
    /// (XOR-MAPPED-ADDRESS, per-client limits). False when that shard's queue is full or
    /// the relay has stopped: the connection is closed.
    pub fn give(&self, conn: TlsConn, client: SocketAddr) -> bool {
        let Ok(parts) = conn.into_parts() else {
            return false;
        };
        self.adopt(
            client.port() as usize % self.shards.len(),
            Adopt {
                conn: Moved::Tls(Box::new(parts)),
                prefix: Vec::new(),
                client: Some(client),
            },
        )
    }

    /// Gives `conn` to shard `shard`, which handles `prefix` before reading more.
    pub(crate) fn to_shard(&self, shard: usize, conn: Moved, prefix: Vec<u8>) -> bool {
        self.adopt(
            shard,
            Adopt {
                conn,
                prefix,
                client: None,
            },
        )
    }

    fn adopt(&self, shard: usize, a: Adopt) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|s| s.try_send(a).is_ok())
    }
}

/// Connections waiting for a shard to adopt them.
const HANDOFF_QUEUE: usize = 128;

/// Batches of datagrams one shard hands another (each at most 128 KiB: 8 MiB a shard).
const CROSSING_QUEUE: usize = 64;

/// Where each relayed port lives, so that a datagram from one allocation to another's
/// relayed address (two relay-only peers on one server) is handed to the shard holding
/// it instead of going out through the kernel and back in.
struct Crossings {
    /// Relay IPs whose relayed addresses are advertised as bound: there the address a
    /// client names is the socket's own. Behind a NAT (advertised ≠ bound) the kernel path
    /// stays, so the receiver sees the sender's advertised address as before.
    ips: Vec<std::net::IpAddr>,
    /// The shard (+1; 0 for none) holding each relayed port.
    owners: Box<[std::sync::atomic::AtomicU16]>,
    /// Each shard's queue of datagrams handed over by the others.
    queues: Vec<tokio::sync::mpsc::Sender<batch::SendBatch<SocketAddr>>>,
}

impl Crossings {
    /// The shard whose allocation has the relayed address `to`, if one of ours does.
    fn owner(&self, to: SocketAddr) -> Option<usize> {
        if !self.ips.contains(&to.ip()) {
            return None;
        }
        match self.owners[to.port() as usize].load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            s => Some(s as usize - 1),
        }
    }

    fn opened(&self, addr: SocketAddr, shard: usize) {
        if self.ips.contains(&addr.ip()) {
            self.owners[addr.port() as usize]
                .store(shard as u16 + 1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn closed(&self, addr: SocketAddr, shard: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        // Only if still ours: the port may already serve another shard's allocation.
        let _ = self.owners[addr.port() as usize].compare_exchange(
            shard as u16 + 1,
            0,
            Relaxed,
            Relaxed,
        );
    }

    /// Gives shard `to` a batch; the batch back when its queue is full or it stopped.
    fn send(
        &self,
        to: usize,
        b: batch::SendBatch<SocketAddr>,
    ) -> Result<(), batch::SendBatch<SocketAddr>> {
        self.queues[to].try_send(b).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(b)
            | tokio::sync::mpsc::error::TrySendError::Closed(b) => b,
        })
    }
}

/// A running relay. Dropping it does not stop it; call [`RelayHandle::shutdown`].
pub struct RelayHandle {
    shutdown: watch::Sender<bool>,
    proxy_from: Arc<ProxyFrom>,
    threads: Vec<JoinHandle<()>>,
    /// Shards (threads) running.
    pub shards: usize,
    /// The client-facing addresses actually bound (ports resolved when 0 was asked).
    pub local_addrs: Vec<SocketAddr>,
    /// The state every shard shares (config, credentials, peer policy, quotas).
    pub shared: Arc<Shared>,
    /// The TURN-over-TLS addresses actually bound (`tls_listen`).
    pub tls_addrs: Vec<SocketAddr>,
    /// The certificate the TLS listeners serve, when there are any; reload it on SIGHUP.
    pub certificates: Option<Arc<Certificates>>,
    /// Gives the shards TLS connections accepted elsewhere.
    pub handoff: Handoff,
}

/// The load balancers trusted to send a PROXY header, as every shard's accept path sees them.
pub(crate) type ProxyFrom = arc_swap::ArcSwap<Vec<ipnet::IpNet>>;

impl RelayHandle {
    /// SIGHUP: the load balancers trusted to send a PROXY header (`proxy_from`) from the
    /// next accepted connection on; connections already accepted keep what they were
    /// told. Empty turns the PROXY protocol off.
    pub fn set_proxy_from(&self, proxy_from: Vec<ipnet::IpNet>) {
        self.proxy_from.store(Arc::new(proxy_from));
    }

    /// SIGTERM: new allocations get 508 (clients move to another server) and
    /// `Shared::is_draining` turns on (the binaries' `/healthz` then says draining, so a
    /// load balancer stops sending), while existing allocations keep relaying until none is
    /// left or `timeout` has passed; a second SIGTERM ends the wait at once. Then call
    /// [`RelayHandle::shutdown`].
    pub async fn drain(&self, stop: &mut icebreaker_service::Stop, timeout: std::time::Duration) {
        use icebreaker_service::Signal;
        let shared = &self.shared;
        shared.drain();
        let held = shared.quota.held();
        if held == 0 || timeout.is_zero() {
            return;
        }
        tracing::info!(
            allocations = held,
            timeout_s = timeout.as_secs(),
            "draining: new allocations refused, existing ones keep relaying"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let held = shared.quota.held();
                    if held == 0 {
                        tracing::info!("drained: no allocation left");
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::info!(allocations = held, "drain timeout: stopping with allocations left");
                        return;
                    }
                }
                s = stop.next() => if s == Signal::Stop {
                    tracing::info!("second stop: not waiting for the drain");
                    return;
                },
            }
        }
    }

    /// Stops every shard and waits for its thread.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub use icebreaker_service::reuse_socket;

/// The addresses of this host's interfaces: what an unspecified listen address means when
/// the relay refuses to relay to itself.
fn host_ips() -> Vec<std::net::IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(v) => v.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list interface addresses");
            Vec::new()
        }
    }
}

/// A port of `want`'s address that no socket holds, UDP or TCP. The kernel's choice for a
/// port-0 bind with SO_REUSEPORT may be a UDP port another program of the same user holds
/// with SO_REUSEPORT: the two would silently share its datagrams, each getting the other's
/// clients. Sockets bound without SO_REUSEPORT conflict with every holder, so the ports they
/// get are free; they are closed again before the shards bind.
fn free_port(want: SocketAddr) -> std::io::Result<SocketAddr> {
    let mut attempt = 0;
    loop {
        let udp = UdpSocket::bind(want)?;
        let addr = udp.local_addr()?;
        // std's TcpListener sets SO_REUSEADDR but not SO_REUSEPORT: it fails on a port
        // that anyone listens on. Then another UDP port is tried.
        match TcpListener::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 50 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// One UDP socket and one TCP listener per shard on `want` (SO_REUSEPORT group).
fn bind_shards(
    want: SocketAddr,
    shards: usize,
) -> std::io::Result<(SocketAddr, Vec<(UdpSocket, TcpListener)>)> {
    let mut addr = want;
    let mut out = Vec::with_capacity(shards);
    for i in 0..shards {
        let u = reuse_socket(addr, Type::DGRAM, Protocol::UDP)?;
        u.set_recv_buffer_size(4 << 20).ok();
        u.set_send_buffer_size(4 << 20).ok();
        u.bind(&addr.into())?;
        if i == 0 {
            addr = u.local_addr()?.as_socket().expect("inet");
        }
        let t = reuse_socket(addr, Type::STREAM, Protocol::TCP)?;
        t.bind(&addr.into())?;
        t.listen(1024)?;
        out.push((u.into(), t.into()));
    }
    Ok((addr, out))
}

/// Binds every shard's sockets, then starts the shards. Bind errors come back here, before
/// any thread runs, so a misconfigured port fails the start with a clear error.
pub fn run(config: RelayConfig, metrics: RelayMetrics) -> std::io::Result<RelayHandle> {
    let shards = config.worker_threads();
    let mut per_shard: Vec<(Vec<UdpSocket>, Vec<TcpListener>)> =
        (0..shards).map(|_| (Vec::new(), Vec::new())).collect();
    let mut local_addrs = Vec::new();
    for &want in &config.listen {
        // Port 0: a free port for UDP and TCP, which the shards then share; if it is
        // taken by the time they bind, try another.
        let mut attempt = 0;
        let (addr, sockets) = loop {
            let bound = if want.port() == 0 {
                free_port(want).and_then(|at| bind_shards(at, shards))
            } else {
                bind_shards(want, shards)
            };
            match bound {
                Ok(r) => break r,
                Err(e)
                    if want.port() == 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < 50 =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        };
        local_addrs.push(addr);
        for ((udps, tcps), (u, t)) in per_shard.iter_mut().zip(sockets) {
            udps.push(u);
            tcps.push(t);
        }
    }
    let certificates = match (&config.cert, &config.key) {
        (Some(c), Some(k)) if !config.tls_listen.is_empty() => Some(
            Certificates::load(c, k)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        _ => None,
    };
    let mut tls_per_shard: Vec<Vec<TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut dtls_per_shard: Vec<Vec<UdpSocket>> = (0..shards).map(|_| Vec::new()).collect();
    let mut tls_addrs = Vec::new();
    // TURN over DTLS on the same addresses (RFC 7350), when the key suits the DTLS stack.
    let dtls_config = match &certificates {
        Some(c) => match dtls::handshake_config(c) {
            Ok(cfg) => Some((cfg, c.clone())),
            Err(e) => {
                tracing::warn!(error = %e, "TURN over DTLS is off; TLS still serves");
                None
            }
        },
        None => None,
    };
    if certificates.is_some() {
        for &want in &config.tls_listen {
            // Port 0: one free for UDP too, since DTLS binds the same port number.
            let want = if want.port() == 0 && dtls_config.is_some() {
                free_port(want)?
            } else {
                want
            };
            let ls = icebreaker_service::reuse_tcp_listeners(want, shards)?;
            let addr = ls[0].local_addr()?;
            tls_addrs.push(addr);
            for (v, l) in tls_per_shard.iter_mut().zip(ls) {
                v.push(l);
            }
            if dtls_config.is_some() {
                for v in dtls_per_shard.iter_mut() {
                    let u = reuse_socket(addr, Type::DGRAM, Protocol::UDP)?;
                    u.set_recv_buffer_size(4 << 20).ok();
                    u.bind(&addr.into())?;
                    v.push(u.into());
                }
            }
        }
    }
    let tls_config = certificates.as_ref().map(|c| c.server_config(&[]));
    let mut all_addrs = local_addrs.clone();
    all_addrs.extend(&tls_addrs);
    let own = crate::server::own_addresses(&config.turn, &all_addrs, &host_ips());
    let tcp_limits = TcpLimits {
        connections: config.max_tcp_connections,
        frame: config.max_tcp_frame,
        buffer: config.tcp_buffer_limit,
        proxy_from: Arc::new(ProxyFrom::from_pointee(config.proxy_from.clone())),
    };
    let shared = Shared::with_own(
        config.turn,
        own,
        std::time::Instant::now(),
        crate::server::unix_now(),
    );
    let (tx, rx) = watch::channel(false);
    let mut threads = Vec::new();
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| tokio::sync::mpsc::channel(HANDOFF_QUEUE))
        .unzip();
    let (queues, mut crossed): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| tokio::sync::mpsc::channel(CROSSING_QUEUE))
        .unzip();
    // Relay addresses are restart-only (SIGHUP does not move them), so read once.
    let live = shared.live();
    let crossings = Arc::new(Crossings {
        ips: [live.config.relay_v4, live.config.relay_v6]
            .into_iter()
            .flatten()
            .filter(|(bind, advertised)| bind == advertised && !bind.is_unspecified())
            .map(|(bind, _)| bind.to_canonical())
            .collect(),
        owners: (0..=u16::MAX)
            .map(|_| std::sync::atomic::AtomicU16::new(0))
            .collect(),
        queues,
    });
    drop(live);
    let handoff = Handoff {
        shards: senders.into(),
    };
    for (i, (((udps, tcps), tls), dtls)) in per_shard
        .into_iter()
        .zip(tls_per_shard)
        .zip(dtls_per_shard)
        .enumerate()
    {
        let shared = shared.clone();
        let m = metrics.shard(i as u16);
        let rx = rx.clone();
        let tls = tls_config.clone().map(|c| (tls, c));
        let hrx = receivers.remove(0);
        let sockets = shard::ShardSockets {
            udps,
            tcps,
            tls,
            handed: hrx,
            handoff: handoff.clone(),
            crossings: crossings.clone(),
            crossed: crossed.remove(0),
            dtls,
            dtls_config: dtls_config.clone(),
        };
        let tcp_limits = tcp_limits.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("relay-shard-{i}"))
                .spawn(move || shard::run_shard(i, shards, tcp_limits, shared, m, sockets, rx))?,
        );
    }
    Ok(RelayHandle {
        shutdown: tx,
        proxy_from: tcp_limits.proxy_from,
        threads,
        local_addrs,
        shared,
        shards,
        tls_addrs,
        certificates,
        handoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel hands a port-0 SO_REUSEPORT bind ports that other SO_REUSEPORT sockets of
    /// the same user hold (seen: a test relay sharing its client port with another test's
    /// relay, clients answered by the wrong one). The relay's port-0 choice never does.
    #[test]
    fn a_port_0_listen_never_takes_a_port_another_reuseport_socket_holds() {
        let want: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let held: Vec<socket2::Socket> = (0..2000)
            .map(|_| {
                let s = reuse_socket(want, Type::DGRAM, Protocol::UDP).unwrap();
                s.bind(&want.into()).unwrap();
                s
            })
            .collect();
        let ports: std::collections::HashSet<u16> = held
            .iter()
            .map(|s| s.local_addr().unwrap().as_socket().unwrap().port())
            .collect();
        for _ in 0..2000 {
            let a = free_port(want).unwrap();
            assert!(!ports.contains(&a.port()), "{a} is held by another socket");
        }
    }
}
