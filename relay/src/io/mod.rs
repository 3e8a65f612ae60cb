//! Thin tokio drivers around the sans-IO core.
//!
//! One OS thread per shard, each with a current-thread runtime. Every shard binds the
//! client-facing UDP and TCP ports with SO_REUSEPORT, so the kernel spreads clients over
//! shards by 4-tuple hash and a client's packets always reach the shard that holds its
//! allocation. Within a shard everything is single-threaded (`Rc`/`RefCell`): no locks on
//! the packet path. Relayed sockets have no buffer of their own; they read into the
//! shard's one receive buffer, so an idle allocation costs only its bookkeeping.

mod shard;
mod tcp;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Protocol, Type};
use tokio::sync::watch;

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;
use crate::server::Shared;

/// The client TCP limits of `RelayConfig`, split over the shards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLimits {
    connections: usize,
    frame: usize,
    buffer: usize,
}

/// A running relay. Dropping it does not stop it; call [`RelayHandle::shutdown`].
pub struct RelayHandle {
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Shards (threads) running.
    pub shards: usize,
    /// The client-facing addresses actually bound (ports resolved when 0 was asked).
    pub local_addrs: Vec<SocketAddr>,
    /// The state every shard shares (config, credentials, peer policy, quotas).
    pub shared: Arc<Shared>,
}

impl RelayHandle {
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
        // Port 0: the first UDP bind picks a port, which the TCP listener and the other
        // shards then share; if TCP has that port taken already, try another.
        let mut attempt = 0;
        let (addr, sockets) = loop {
            match bind_shards(want, shards) {
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
    let own = crate::server::own_addresses(&config.turn, &local_addrs, &host_ips());
    let tcp_limits = TcpLimits {
        connections: config.max_tcp_connections,
        frame: config.max_tcp_frame,
        buffer: config.tcp_buffer_limit,
    };
    let shared = Shared::with_own(
        config.turn,
        own,
        std::time::Instant::now(),
        crate::server::unix_now(),
    );
    let (tx, rx) = watch::channel(false);
    let mut threads = Vec::new();
    for (i, (udps, tcps)) in per_shard.into_iter().enumerate() {
        let shared = shared.clone();
        let m = metrics.shard(i as u16);
        let rx = rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("relay-shard-{i}"))
                .spawn(move || {
                    shard::run_shard(i, shards, tcp_limits, shared, m, udps, tcps, rx)
                })?,
        );
    }
    Ok(RelayHandle {
        shutdown: tx,
        threads,
        local_addrs,
        shared,
        shards,
    })
}
