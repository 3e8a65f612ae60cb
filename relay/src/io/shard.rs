//! One shard: its runtime, its UDP sockets, relayed sockets, TCP connections and timer.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::task::{JoinHandle, LocalSet};
use tracing::{debug, error, warn};

use super::batch::{ReadySet, RecvBatch, SendBatch, BATCH};
use super::tcp::{ConnKey, TcpClient};
use super::tcp_relay::PeerConn;
use super::Handoff;
use crate::metrics::ShardMetrics;
use crate::server::{AllocationId, ConnectionId, RelaySockets, Server, Shared, Transmit};
use crate::{FiveTuple, Transport};

/// A client-facing UDP socket and the replies gathered for it while a batch is handled.
pub(super) struct ClientSocket {
    addr: SocketAddr,
    sock: tokio::net::UdpSocket,
    out: RefCell<SendBatch<socket2::SockAddr>>,
}

pub(super) struct Ctx {
    pub core: RefCell<Server<ShardMetrics>>,
    pub metrics: ShardMetrics,
    pub max_tcp: usize,
    pub max_tcp_frame: usize,
    udp: Vec<ClientSocket>,
    /// Relayed UDP sockets by bind address (to send from), and their allocation by
    /// descriptor (what the ready set reports). They are not registered with tokio: the
    /// shard watches them all through `ready`, one descriptor in its runtime.
    relays: RefCell<FxHashMap<SocketAddr, (UdpSocket, AllocationId)>>,
    relay_ids: RefCell<FxHashMap<RawFd, AllocationId>>,
    ready: AsyncFd<ReadySet>,
    /// The shard's `recvmmsg` batch, for its client-facing and relayed UDP sockets.
    recv: RefCell<RecvBatch>,
    /// Set while a batch of UDP input is handled: replies to UDP clients gather in their
    /// socket's `out` and leave in one `sendmmsg` at the end (`flush`).
    batching: Cell<bool>,
    /// When the batch being handled arrived (one clock read per batch).
    batch_time: Cell<Instant>,
    /// Datagrams of this batch from one of the shard's allocations to another's relayed
    /// address, handed to the receiving allocation at the end of the batch.
    internal: RefCell<SendBatch<AllocationId>>,
    pub tcp: RefCell<FxHashMap<ConnKey, TcpClient>>,
    /// TLS handshakes in progress (they count against `max_tcp`).
    pub handshaking: Cell<usize>,
    /// Load balancers whose connections begin with a PROXY protocol header.
    pub proxy_from: Arc<super::ProxyFrom>,
    /// This shard's part of `tcp-buffer-limit`, and what its TCP connections hold now.
    tcp_budget: usize,
    tcp_used: Cell<usize>,
    /// The shard's one receive buffer, shared by every socket it reads (TCP connections
    /// put their unfinished frame in front of what they read, so it holds two frames).
    pub buf: RefCell<Vec<u8>>,
    /// TCP allocations' listeners (RFC 6062), by relayed address: their accept tasks.
    pub tcp_listeners: RefCell<FxHashMap<SocketAddr, JoinHandle<()>>>,
    /// TCP allocations' peer data connections, by CONNECTION-ID.
    pub peer_conns: RefCell<FxHashMap<ConnectionId, PeerConn>>,
    /// Every shard's handoff queue (a data connection moves to the shard of its peer).
    pub handoff: Handoff,
    /// TURN over DTLS ports (one per `tls_listen` address).
    pub dtls: Vec<Rc<super::dtls::DtlsSocket>>,
    /// This shard's index, and where every shard's relayed ports are.
    index: usize,
    crossings: Arc<super::Crossings>,
    /// Datagrams of this batch for other shards' allocations, one batch per shard.
    crossing: RefCell<Vec<SendBatch<SocketAddr>>>,
}

/// Implements [`RelaySockets`] with real UDP sockets in the shard's ready set.
pub(super) struct Binder<'a>(pub &'a Rc<Ctx>);

impl RelaySockets for Binder<'_> {
    fn open(
        &mut self,
        addr: SocketAddr,
        id: AllocationId,
        dont_fragment: bool,
    ) -> std::io::Result<()> {
        let std_sock = UdpSocket::bind(addr)?;
        std_sock.set_nonblocking(true)?;
        // Room for bursts from peers while the shard is busy (the kernel grows the queue
        // only as packets arrive, so an idle allocation does not pay for it).
        let s2 = socket2::SockRef::from(&std_sock);
        s2.set_recv_buffer_size(1 << 20).ok();
        s2.set_send_buffer_size(1 << 20).ok();
        if dont_fragment {
            set_dont_fragment(&std_sock, addr.is_ipv6())?;
        }
        let fd = std_sock.as_raw_fd();
        self.0.ready.get_ref().add(fd)?;
        self.0.relay_ids.borrow_mut().insert(fd, id);
        self.0.relays.borrow_mut().insert(addr, (std_sock, id));
        self.0.crossings.opened(addr, self.0.index);
        Ok(())
    }

    fn close(&mut self, addr: SocketAddr) {
        if let Some((sock, _)) = self.0.relays.borrow_mut().remove(&addr) {
            let fd = sock.as_raw_fd();
            self.0.ready.get_ref().remove(fd);
            self.0.relay_ids.borrow_mut().remove(&fd);
            self.0.crossings.closed(addr, self.0.index);
        }
        if let Some(l) = self.0.tcp_listeners.borrow_mut().remove(&addr) {
            l.abort();
        }
    }

    fn open_tcp(&mut self, addr: SocketAddr, id: AllocationId) -> std::io::Result<()> {
        super::tcp_relay::open_listener(self.0, addr, id)
    }

    fn connect(&mut self, relay: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
        super::tcp_relay::connect(self.0, relay, peer, conn)
    }

    fn close_connection(&mut self, conn: ConnectionId) {
        if let Some(c) = self.0.peer_conns.borrow_mut().remove(&conn) {
            c.close();
        }
    }

    fn bind_connection(&mut self, conn: ConnectionId, data: &FiveTuple) {
        if let Some(c) = self.0.tcp.borrow().get(&(data.client, data.server)) {
            c.bound.set(Some(conn));
        }
    }

    fn hand_over(&mut self, data: &FiveTuple, shard: usize) {
        if let Some(c) = self.0.tcp.borrow().get(&(data.client, data.server)) {
            c.moved.set(Some(shard));
        }
    }

    fn allocation_ended(&mut self, five_tuple: &FiveTuple) {
        if five_tuple.transport == Transport::Tcp {
            if let Some(c) = self
                .0
                .tcp
                .borrow()
                .get(&(five_tuple.client, five_tuple.server))
            {
                c.close();
            }
        }
    }
}

/// Path-MTU discovery "do": the kernel sets DF and never fragments what we send.
fn set_dont_fragment(sock: &UdpSocket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: a valid fd and a pointer to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One non-blocking `sendto`, now. Not tokio's `try_send_to`: that one answers
/// WouldBlock without trying until the reactor has seen the socket writable, which a
/// relayed socket bound in this same burst of packets has not been yet, so the first
/// datagrams of a new allocation were dropped. We never wait for writability (a full
/// socket drops the packet, counted), so the readiness tracking buys nothing here.
pub(super) fn send_now(sock: &impl AsFd, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(sock).send_to(data, &to.into())
}

impl Ctx {
    /// Sends what the core produced. Never waits: a full socket or queue drops the packet
    /// (counted), as a congested router would.
    pub(super) fn transmit(&self, t: Transmit<'_>) {
        match t {
            Transmit::Client { to, data } => match to.transport {
                Transport::Udp => {
                    let Some(c) = self.udp.iter().find(|c| c.addr == to.server) else {
                        return;
                    };
                    if self.batching.get() {
                        let mut out = c.out.borrow_mut();
                        if out.is_full_for(data.len()) {
                            out.flush(c.sock.as_raw_fd(), |e| self.send_failed(e));
                        }
                        out.push(to.client, data);
                    } else if let Err(e) = send_now(&c.sock, data, to.client) {
                        self.send_failed(e);
                    }
                }
                Transport::Tcp => {
                    if let Some(c) = self.tcp.borrow().get(&(to.client, to.server)) {
                        if !c.send(self, data) {
                            self.metrics.drop("tcp_queue_full");
                        }
                    }
                }
                Transport::Dtls => {
                    if let Some(d) = self.dtls.iter().find(|d| d.local == to.server) {
                        d.send(self, to.client, data);
                    }
                }
            },
            Transmit::Peer { relay, to, data } => {
                let relays = self.relays.borrow();
                // To another allocation of this relay (two relay-only peers on one
                // server): no need to go through the kernel and back. It is handed to the
                // allocation (on this shard at the end of the batch, on another through
                // its queue), whose permissions and caps apply as if it had arrived.
                if self.batching.get() {
                    match self.crossings.owner(to) {
                        Some(s) if s == self.index => {
                            if let Some((_, id)) = relays.get(&to) {
                                let mut internal = self.internal.borrow_mut();
                                if !internal.is_full_for(data.len()) {
                                    internal.push_from(*id, relay, data);
                                    self.metrics.internal.inc();
                                    return;
                                }
                            }
                        }
                        Some(s) => {
                            let mut crossing = self.crossing.borrow_mut();
                            if crossing[s].is_full_for(data.len()) {
                                let b = std::mem::replace(&mut crossing[s], SendBatch::empty());
                                self.cross(s, b, &relays);
                            }
                            crossing[s].push_from(to, relay, data);
                            return;
                        }
                        None => {}
                    }
                }
                if let Some((sock, _)) = relays.get(&relay) {
                    if let Err(e) = send_now(sock, data, to) {
                        self.send_failed(e);
                    }
                }
            }
        }
    }

    /// Takes `n` bytes of the shard's TCP buffer budget; false when it is spent.
    pub(super) fn tcp_charge(&self, n: usize) -> bool {
        let used = self.tcp_used.get();
        if used + n > self.tcp_budget {
            return false;
        }
        self.tcp_used.set(used + n);
        true
    }

    pub(super) fn tcp_release(&self, n: usize) {
        self.tcp_used.set(self.tcp_used.get().saturating_sub(n));
    }

    pub(super) fn send_failed(&self, e: std::io::Error) {
        if e.kind() == ErrorKind::WouldBlock {
            self.metrics.drop("send_buffer_full");
        } else {
            debug!(error = %e, "send failed");
            self.metrics.drop("send_error");
        }
    }

    /// Feeds one client packet to the core and sends the answer.
    pub(super) fn client_packet(self: &Rc<Self>, ft: FiveTuple, data: &[u8]) {
        self.client_packet_at(Instant::now(), ft, data);
    }

    /// [`Ctx::client_packet`] with the time of its batch (one clock read per batch).
    fn client_packet_at(self: &Rc<Self>, now: Instant, ft: FiveTuple, data: &[u8]) {
        let mut core = self.core.borrow_mut();
        if let Some(t) = core.handle_client(now, ft, data, &mut Binder(self)) {
            self.transmit(t);
        }
    }

    /// Gives shard `to` the datagrams in `b` for its allocations; when its queue is full
    /// (or it stopped) they go through the kernel instead, as they would have anyway.
    fn cross(
        &self,
        to: usize,
        b: SendBatch<SocketAddr>,
        relays: &FxHashMap<SocketAddr, (UdpSocket, AllocationId)>,
    ) {
        let n = b.len() as u64;
        match self.crossings.send(to, b) {
            Ok(()) => {
                self.metrics.internal.inc_by(n);
            }
            Err(b) => {
                self.metrics.internal_overflow.inc_by(n);
                for (peer, relay, data) in b.iter() {
                    if let Some((sock, _)) = relays.get(&relay) {
                        if let Err(e) = send_now(sock, data, *peer) {
                            self.send_failed(e);
                        }
                    }
                }
            }
        }
    }

    /// Hands over the datagrams between this relay's allocations, then sends every reply
    /// gathered during the batch, and ends the batch.
    fn flush(&self) {
        {
            let mut crossing = self.crossing.borrow_mut();
            let relays = self.relays.borrow();
            for (s, slot) in crossing.iter_mut().enumerate() {
                if !slot.is_empty() {
                    let b = std::mem::replace(slot, SendBatch::empty());
                    self.cross(s, b, &relays);
                }
            }
        }
        let mut internal = self.internal.borrow_mut();
        if !internal.is_empty() {
            let now = self.batch_time.get();
            let mut core = self.core.borrow_mut();
            // What `handle_peer` answers goes to a client, never to a peer again, so
            // nothing joins `internal` while it is read.
            for (id, from, data) in internal.iter() {
                if let Some(t) = core.handle_peer(now, *id, from, data) {
                    self.transmit(t);
                }
            }
            drop(core);
            internal.clear();
        }
        drop(internal);
        self.batching.set(false);
        for c in &self.udp {
            let mut out = c.out.borrow_mut();
            if !out.is_empty() {
                out.flush(c.sock.as_raw_fd(), |e| self.send_failed(e));
            }
        }
    }
}

/// What a shard listens on and how it reaches the other shards.
pub(super) struct ShardSockets {
    pub udps: Vec<UdpSocket>,
    pub tcps: Vec<TcpListener>,
    pub tls: Option<(Vec<TcpListener>, Arc<rustls::ServerConfig>)>,
    /// Connections other listeners or shards hand to this one.
    pub handed: tokio::sync::mpsc::Receiver<super::Adopt>,
    pub handoff: Handoff,
    /// UDP sockets for TURN over DTLS, with the configuration and the certificates it is
    /// built from (rebuilt when they reload).
    pub dtls: Vec<UdpSocket>,
    pub dtls_config: Option<(
        Arc<rtc_dtls::config::HandshakeConfig>,
        Arc<icebreaker_service::tls::Certificates>,
    )>,
    /// Where every shard's relayed ports are, and this shard's queue of datagrams that
    /// other shards' allocations send to its allocations.
    pub crossings: Arc<super::Crossings>,
    pub crossed: tokio::sync::mpsc::Receiver<SendBatch<SocketAddr>>,
}

pub(super) fn run_shard(
    index: usize,
    shards: usize,
    tcp_limits: super::TcpLimits,
    shared: Arc<Shared>,
    metrics: ShardMetrics,
    sockets: ShardSockets,
    mut shutdown: watch::Receiver<bool>,
) {
    let ShardSockets {
        udps,
        tcps,
        tls,
        handed,
        handoff,
        dtls,
        dtls_config,
        crossings,
        crossed,
    } = sockets;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start shard runtime");
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let max_tcp = tcp_limits.connections / shards.max(1) + 1;
        let max_tcp_frame = tcp_limits.frame;
        // Every shard can hold at least one frame however small the limit.
        let tcp_budget = (tcp_limits.buffer / shards.max(1)).max(max_tcp_frame);
        let mut udp = Vec::new();
        for u in udps {
            let addr = u.local_addr().expect("bound");
            udp.push(ClientSocket {
                addr,
                sock: tokio::net::UdpSocket::from_std(u).expect("tokio socket"),
                out: RefCell::new(SendBatch::new()),
            });
        }
        // SAFETY: the ready set owns its epoll descriptor, open until the set is dropped.
        let ready = match ReadySet::new().and_then(|r| unsafe {
            AsyncFd::register_with_interest(r, Interest::READABLE).map_err(|e| e.into_parts().1)
        }) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot start the relayed sockets' ready set");
                return;
            }
        };
        let n_udp = udp.len();
        let mut dtls_ports = Vec::new();
        if let Some((cfg, certs)) = &dtls_config {
            for u in dtls {
                match super::dtls::DtlsSocket::new(u, cfg.clone(), certs.clone()) {
                    Ok(d) => dtls_ports.push(Rc::new(d)),
                    Err(e) => error!(error = %e, "cannot use DTLS socket"),
                }
            }
        }
        let ctx = Rc::new(Ctx {
            core: RefCell::new(Server::with_shard(shared, metrics.clone(), index, shards)),
            metrics,
            max_tcp,
            max_tcp_frame,
            udp,
            relays: RefCell::default(),
            relay_ids: RefCell::default(),
            ready,
            recv: RefCell::new(RecvBatch::new()),
            batching: Cell::new(false),
            batch_time: Cell::new(Instant::now()),
            internal: RefCell::new(SendBatch::new()),
            index,
            crossing: RefCell::new((0..shards).map(|_| SendBatch::empty()).collect()),
            crossings,
            tcp: RefCell::default(),
            handshaking: Cell::new(0),
            proxy_from: tcp_limits.proxy_from.clone(),
            tcp_budget,
            tcp_used: Cell::new(0),
            buf: RefCell::new(vec![0u8; 2 * 65536]),
            tcp_listeners: RefCell::default(),
            peer_conns: RefCell::default(),
            handoff,
            dtls: dtls_ports,
        });
        for d in &ctx.dtls {
            tokio::task::spawn_local(super::dtls::reader(ctx.clone(), d.clone()));
            tokio::task::spawn_local(super::dtls::timer(ctx.clone(), d.clone()));
        }
        for i in 0..n_udp {
            tokio::task::spawn_local(udp_listener(ctx.clone(), i));
        }
        tokio::task::spawn_local(relay_loop(ctx.clone()));
        tokio::task::spawn_local(crossed_loop(ctx.clone(), crossed));
        for t in tcps {
            match tokio::net::TcpListener::from_std(t) {
                Ok(l) => {
                    tokio::task::spawn_local(super::tcp::accept_loop(ctx.clone(), l, None));
                }
                Err(e) => error!(error = %e, "cannot use TCP listener"),
            }
        }
        if let Some((listeners, cfg)) = tls {
            for t in listeners {
                match tokio::net::TcpListener::from_std(t) {
                    Ok(l) => {
                        tokio::task::spawn_local(super::tcp::accept_loop(
                            ctx.clone(),
                            l,
                            Some(cfg.clone()),
                        ));
                    }
                    Err(e) => error!(error = %e, "cannot use TLS listener"),
                }
            }
        }
        tokio::task::spawn_local(super::tcp::handed_over(ctx.clone(), handed));
        tokio::task::spawn_local(timer(ctx.clone()));
        let _ = shutdown.wait_for(|s| *s).await;
        // Release every relayed socket and quota before the runtime goes away.
        let mut core = ctx.core.borrow_mut();
        let n = core.allocation_count();
        core.shutdown(&mut Binder(&ctx));
        drop(core);
        for (_, c) in ctx.peer_conns.borrow_mut().drain() {
            c.close();
        }
        debug!(shard = index, allocations = n, "shard stopped");
    });
}

/// A client-facing UDP socket: a `recvmmsg` batch per wake-up, each packet through the
/// core, the replies out in one `sendmmsg`.
async fn udp_listener(ctx: Rc<Ctx>, index: usize) {
    let c = &ctx.udp[index];
    let (local, fd) = (c.addr, c.sock.as_raw_fd());
    loop {
        // Each batch goes back through the runtime's readiness check, which also yields
        // to the shard's other tasks when this socket never runs dry (tokio's budget).
        if let Err(e) = c.sock.readable().await {
            error!(error = %e, "UDP listener failed");
            return;
        }
        let r = c.sock.try_io(Interest::READABLE, || {
            let mut recv = ctx.recv.borrow_mut();
            let n = recv.recv(fd)?;
            let now = Instant::now();
            ctx.batch_time.set(now);
            ctx.batching.set(true);
            for i in 0..n {
                if let Some((from, data)) = recv.get(i) {
                    let ft = FiveTuple {
                        client: from,
                        server: local,
                        transport: Transport::Udp,
                    };
                    ctx.client_packet_at(now, ft, data);
                }
            }
            ctx.flush();
            spent(n < BATCH)
        });
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // ICMP errors from earlier sends surface here; they concern one client.
            Err(e) => debug!(error = %e, "UDP receive error"),
        }
    }
}

/// What a batch's `try_io` answers: WouldBlock when the socket was read empty, which saves
/// the read that would only say so (tokio clears the readiness only if no new event came
/// since the one the batch started from, so nothing that arrives meanwhile is missed).
fn spent(empty: bool) -> std::io::Result<()> {
    if empty {
        Err(ErrorKind::WouldBlock.into())
    } else {
        Ok(())
    }
}

/// Every relayed socket of the shard: the ready set says which have input, each is read
/// with one `recvmmsg`, and the replies to clients leave in one `sendmmsg` per batch.
async fn relay_loop(ctx: Rc<Ctx>) {
    let mut fds: Vec<RawFd> = Vec::new();
    loop {
        let mut guard = match ctx.ready.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "relayed sockets' ready set failed");
                return;
            }
        };
        let r = guard.try_io(|r| {
            let ready = r.get_ref();
            let k = ready.ready(&mut fds)?;
            // Every ready socket reported and each read empty: the set is spent.
            let mut empty = k < ready.capacity();
            let now = Instant::now();
            let mut recv = ctx.recv.borrow_mut();
            ctx.batch_time.set(now);
            ctx.batching.set(true);
            for &fd in &fds {
                // Closed since the wait: nothing here closes sockets, but be sure.
                let Some(&id) = ctx.relay_ids.borrow().get(&fd) else {
                    continue;
                };
                match recv.recv(fd) {
                    Ok(n) => {
                        empty &= n < BATCH;
                        for i in 0..n {
                            let Some((from, data)) = recv.get(i) else {
                                continue;
                            };
                            let mut core = ctx.core.borrow_mut();
                            if let Some(t) = core.handle_peer(now, id, from, data) {
                                ctx.transmit(t);
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => debug!(error = %e, "relayed socket receive error"),
                }
            }
            ctx.flush();
            spent(empty)
        });
        match r {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(e)) => debug!(error = %e, "ready set wait failed"),
        }
    }
}

/// Datagrams other shards' allocations sent to this shard's: each handed to its
/// allocation as if it had arrived on the relayed socket, the replies out in one batch.
async fn crossed_loop(ctx: Rc<Ctx>, mut queue: tokio::sync::mpsc::Receiver<SendBatch<SocketAddr>>) {
    while let Some(mut b) = queue.recv().await {
        let now = Instant::now();
        ctx.batch_time.set(now);
        ctx.batching.set(true);
        // Whatever else has queued up meanwhile joins this batch (bounded by the queue).
        loop {
            {
                let relays = ctx.relays.borrow();
                let mut core = ctx.core.borrow_mut();
                for (to, from, data) in b.iter() {
                    match relays.get(to) {
                        Some((_, id)) => {
                            if let Some(t) = core.handle_peer(now, *id, from, data) {
                                ctx.transmit(t);
                            }
                        }
                        // Released meanwhile: as a datagram to a closed port.
                        None => ctx.metrics.drop("internal_no_allocation"),
                    }
                }
            }
            match queue.try_recv() {
                Ok(next) => b = next,
                Err(_) => break,
            }
        }
        ctx.flush();
    }
}

/// Allocations released since the shard last gave memory back that make a trim worth it.
const TRIM_AFTER: usize = 1000;

async fn timer(ctx: Rc<Ctx>) {
    // The most allocations held since the last trim.
    let mut high = 0usize;
    loop {
        let next = ctx
            .core
            .borrow()
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::time::sleep_until(next.into()).await;
        ctx.core
            .borrow_mut()
            .handle_timeout(Instant::now(), &mut Binder(&ctx));
        if ctx.tcp.borrow().len() > ctx.max_tcp {
            warn!("TCP connection table over its limit");
        }
        // Memory back to the kernel once many allocations have gone (RSS otherwise stays
        // at its peak, as coturn's and turn-rs's do).
        let now_held = ctx.core.borrow().allocation_count();
        high = high.max(now_held);
        if high - now_held >= TRIM_AFTER || (now_held == 0 && high >= 64) {
            // Tables keep their capacity when entries go: shrink them first.
            ctx.core.borrow_mut().shrink();
            ctx.relays.borrow_mut().shrink_to_fit();
            ctx.relay_ids.borrow_mut().shrink_to_fit();
            ctx.tcp.borrow_mut().shrink_to_fit();
            ctx.peer_conns.borrow_mut().shrink_to_fit();
            ctx.tcp_listeners.borrow_mut().shrink_to_fit();
            icebreaker_service::trim_heap();
            debug!(
                from = high,
                to = now_held,
                "allocations released; heap trimmed"
            );
            high = now_held;
        }
    }
}
