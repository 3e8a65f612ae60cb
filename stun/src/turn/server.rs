//! The sans-IO TURN server core of one shard.
//!
//! Input: a packet with its 5-tuple (client side) or relayed address and peer (peer side),
//! plus the current time. Output: at most one packet to send, borrowed from the input or
//! from a reused buffer, so the ChannelData path neither locks nor allocates. Sockets are
//! opened and closed through [`RelaySockets`], which the tokio driver implements with real
//! UDP sockets and tests implement with a fake.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use tracing::{debug, info};

use super::allocation::{Allocation, ChannelBindError, TokenBucket};
use super::policy::{OwnAddresses, PeerPolicy};
use super::ports::PortPool;
use super::quota::{Quota, QuotaError};
use super::{Config, DeleteReason, Direction, DropReason, FiveTuple, Observer, Transport};
use crate::auth::{AuthError, Authenticator, Key, NonceCheck};
use crate::codec::{
    self, attr, parse_channel_data, Attributes, Class, Message, MessageWriter, Method, PacketKind,
};

mod tcp;
use tcp::TcpConnection;
pub use tcp::{ConnectionId, BIND_TIMEOUT};

/// Opens and closes relayed sockets for the core. `open` binds `addr` (a UDP socket)
/// and tags packets arriving on it with `id` when handing them to [`Server::handle_peer`];
/// `dont_fragment` asks for the DF bit on what it sends (DONT-FRAGMENT, RFC 8656 §7.2).
pub trait RelaySockets {
    /// Binds a relayed socket at `addr` for allocation `id`; on an error the core tries another
    /// port.
    fn open(
        &mut self,
        addr: SocketAddr,
        id: AllocationId,
        dont_fragment: bool,
    ) -> std::io::Result<()>;
    /// Closes the relayed socket bound at `addr` (its allocation was deleted).
    fn close(&mut self, addr: SocketAddr);
    /// The allocation of `five_tuple` is gone: a TCP client's connection closes with it.
    fn allocation_ended(&mut self, five_tuple: &FiveTuple) {
        let _ = five_tuple;
    }
    /// Binds a TCP listener at `addr` for the TCP allocation `id` (RFC 6062 §5.1); peers
    /// that connect to it are reported with [`Server::peer_connected`]. [`RelaySockets::close`]
    /// closes it.
    fn open_tcp(&mut self, addr: SocketAddr, id: AllocationId) -> std::io::Result<()> {
        let _ = (addr, id);
        Err(std::io::ErrorKind::Unsupported.into())
    }
    /// Opens a TCP connection from the relayed address `relay` to `peer` (a Connect
    /// request, RFC 6062 §5.2); report how it went with [`Server::connect_result`].
    fn connect(&mut self, relay: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
        let _ = (relay, peer, conn);
    }
    /// Closes the peer data connection `conn` (and its client data connection when bound).
    fn close_connection(&mut self, conn: ConnectionId) {
        let _ = conn;
    }
    /// A ConnectionBind succeeded: once the answer is written, the client connection `data`
    /// carries the bytes of peer data connection `conn` as they are, both ways.
    fn bind_connection(&mut self, conn: ConnectionId, data: &FiveTuple) {
        let _ = (conn, data);
    }
    /// A ConnectionBind names a connection that shard `shard` holds: move the client
    /// connection `data` there, this request first, and let that shard answer it.
    fn hand_over(&mut self, data: &FiveTuple, shard: usize) {
        let _ = (data, shard);
    }
}

/// Index of an allocation in its shard plus a generation, so a stale id never reaches a
/// newer allocation that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocationId {
    index: u32,
    generation: u32,
}

/// A packet the driver must send.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// To the client over the transport its 5-tuple names.
    Client {
        /// The client's 5-tuple: which connection or source address to answer on.
        to: FiveTuple,
        /// The bytes to send: a STUN message or ChannelData.
        data: &'a [u8],
    },
    /// To a peer from the relayed socket bound at `relay`.
    Peer {
        /// The relayed socket's bind address (not the advertised one), to send from.
        relay: SocketAddr,
        /// The peer's transport address.
        to: SocketAddr,
        /// The application data, sent as is.
        data: &'a [u8],
    },
}

/// State shared by all shards (read-mostly: config, credentials, policy; quotas).
pub struct Shared {
    /// What SIGHUP may replace: the configuration every shard runs with, the credentials
    /// and the peer policy built from it (see [`Shared::reload`]).
    live: arc_swap::ArcSwap<Live>,
    /// The relay's own addresses, never relayed to (see [`OwnAddresses`]).
    pub own: OwnAddresses,
    /// The allocation caps (`max_allocations`, `user_quota`), counted across all shards.
    pub quota: Quota,
    /// Relayed ports, one pool for every shard: a shard with none left borrows nothing
    /// and answers 508 only when the whole range is taken. Allocations are rare next to
    /// packets, so the lock is not on the packet path.
    pub ports: std::sync::Mutex<PortPool>,
    /// Wall clock at `epoch`, for REST expiry and nonces (the core otherwise runs on
    /// the monotonic `now` it is handed, so tests can drive it with a fake clock).
    pub unix_at_epoch: u64,
    /// The monotonic instant at which the wall clock read `unix_at_epoch`.
    pub epoch: Instant,
    /// Set on SIGTERM: new allocations are refused while the existing ones run out.
    draining: std::sync::atomic::AtomicBool,
}

/// The reloadable part of [`Shared`]: one snapshot, so a request sees one configuration.
pub struct Live {
    /// The configuration every shard runs with.
    pub config: Config,
    /// Long-term credentials and nonces, built from `config`.
    pub auth: Authenticator,
    /// Which peer addresses may be permitted, from `allow_peer` and `deny_peer`.
    pub policy: PeerPolicy,
}

impl Shared {
    /// State for `config` listening on `listen`, on the system clocks.
    pub fn new(config: Config, listen: &[SocketAddr]) -> Arc<Self> {
        Self::with_clock(config, listen, Instant::now(), unix_now())
    }

    /// With a given clock, listening on `listen` (never relayed to).
    pub fn with_clock(
        config: Config,
        listen: &[SocketAddr],
        epoch: Instant,
        unix_at_epoch: u64,
    ) -> Arc<Self> {
        let own = own_addresses(&config, listen, &[]);
        Self::with_own(config, own, epoch, unix_at_epoch)
    }

    /// With the relay's own addresses as the driver found them (listen ports resolved,
    /// the host's interface addresses for an unspecified listen IP).
    pub fn with_own(
        config: Config,
        own: OwnAddresses,
        epoch: Instant,
        unix_at_epoch: u64,
    ) -> Arc<Self> {
        let auth = Authenticator::new(
            &config.realm,
            &config.users,
            &config.auth_secrets,
            config.nonce_lifetime.as_secs(),
        );
        let policy = PeerPolicy::new(&config.allow_peer, &config.deny_peer);
        let quota = Quota::new(config.max_allocations, config.user_quota);
        let (lo, hi) = config.relay_ports;
        let ports = std::sync::Mutex::new(PortPool::new(lo, hi, 0, 1));
        Arc::new(Shared {
            live: arc_swap::ArcSwap::from_pointee(Live {
                config,
                auth,
                policy,
            }),
            ports,
            own,
            quota,
            unix_at_epoch,
            epoch,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts draining (a stop was asked for): every shard answers new Allocate requests
    /// with 508, so clients pick another server, while existing allocations keep relaying.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Shared::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The configuration, credentials and policy now (one consistent snapshot).
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Takes `new` for everything a running relay can change: credentials (users, REST
    /// secrets, realm), the peer policy, quotas, lifetimes and the bandwidth cap. The
    /// relayed addresses and port range stay (sockets are bound from them): those keys are
    /// returned when `new` differs there. Nonces handed out stay valid; allocations,
    /// permissions and channels that exist stay as they are (a stricter policy applies to
    /// the next CreatePermission), and lowered quotas refuse only new allocations.
    pub fn reload(&self, mut new: Config) -> Vec<&'static str> {
        let old = self.live();
        let mut need_restart = Vec::new();
        if new.relay_v4 != old.config.relay_v4 || new.relay_v6 != old.config.relay_v6 {
            need_restart.push("relay-ip");
            new.relay_v4 = old.config.relay_v4;
            new.relay_v6 = old.config.relay_v6;
        }
        if new.relay_ports != old.config.relay_ports {
            need_restart.push("relay-ports");
            new.relay_ports = old.config.relay_ports;
        }
        let auth = old.auth.reloaded(
            &new.realm,
            &new.users,
            &new.auth_secrets,
            new.nonce_lifetime.as_secs(),
        );
        let policy = PeerPolicy::new(&new.allow_peer, &new.deny_peer);
        self.quota.set_limits(new.max_allocations, new.user_quota);
        self.live.store(Arc::new(Live {
            config: new,
            auth,
            policy,
        }));
        need_restart
    }

    /// Relayed ports free now (not bound, reserved or cooling).
    pub fn free_ports(&self) -> usize {
        self.ports().len()
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, PortPool> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unix(&self, now: Instant) -> u64 {
        self.unix_at_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }
}

/// The relay's own addresses for `config` listening on `listen`: those, and the relayed
/// and advertised IPs of both families.
pub fn own_addresses(config: &Config, listen: &[SocketAddr], host_ips: &[IpAddr]) -> OwnAddresses {
    let ips: Vec<IpAddr> = [config.relay_v4, config.relay_v6]
        .into_iter()
        .flatten()
        .flat_map(|(bind, adv)| [bind, adv])
        .collect();
    OwnAddresses::new(listen, &ips, host_ips)
}

/// The wall clock in Unix seconds (0 if it reads before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A port kept for a later Allocate with RESERVATION-TOKEN (EVEN-PORT with R, §7.2).
struct Reservation {
    port: u16,
    v6: bool,
    expires: Instant,
}

const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// An error answer: RFC code and a reason a person understands.
struct Reject {
    code: u16,
    reason: &'static str,
    /// Send REALM and a fresh NONCE (401, 438).
    challenge: bool,
    /// Sign with this key (errors after successful authentication).
    key: Option<Key>,
}

impl Reject {
    fn new(code: u16, reason: &'static str) -> Self {
        Reject {
            code,
            reason,
            challenge: false,
            key: None,
        }
    }
    fn challenge(code: u16, reason: &'static str) -> Self {
        Reject {
            challenge: true,
            ..Reject::new(code, reason)
        }
    }
    fn signed(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
}

struct Authenticated {
    username: Box<str>,
    key: Key,
}

/// Whether a request was answered now or will be later.
enum Reply {
    /// The answer is in the buffer.
    Now,
    /// No answer yet (a Connect waiting for its TCP connection, a ConnectionBind handed to
    /// the shard that holds its connection).
    Later,
}

/// An authenticated request: the message, its decoded attributes and who sent it.
struct Request<'m, 'a> {
    msg: &'m Message<'a>,
    attrs: &'m Attributes<'a>,
    auth: Authenticated,
}

/// Which relayed port an Allocate asks for (RFC 8656 §7.2).
#[derive(Debug, Clone, Copy)]
enum PortRequest {
    /// The port kept by an earlier EVEN-PORT with R (RESERVATION-TOKEN).
    Reserved(u64),
    /// An even port; `reserve`: keep the next one for a later Allocate.
    Even { reserve: bool },
    /// Any port.
    Any,
}

/// What an Allocate asks for, checked against the combinations RFC 8656 §7.2 refuses.
#[derive(Debug, Clone, Copy)]
struct AllocateRequest {
    port: PortRequest,
    v6: bool,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: an IPv6 relayed address besides the IPv4 one.
    dual: bool,
    dont_fragment: bool,
    /// REQUESTED-TRANSPORT TCP (RFC 6062): a TCP listener, reached with Connect.
    tcp: bool,
}

impl AllocateRequest {
    fn read(a: &Attributes<'_>) -> Result<AllocateRequest, Reject> {
        let tcp = match a.requested_transport {
            None => return Err(Reject::new(400, "REQUESTED-TRANSPORT is missing")),
            Some(17) => false,
            Some(6) => true,
            Some(_) => {
                return Err(Reject::new(
                    442,
                    "only UDP (17) and TCP (6) relaying are supported",
                ))
            }
        };
        // RFC 6062 §5.1: a TCP allocation has no port pairs and no DF bit.
        if tcp && (a.dont_fragment || a.even_port.is_some() || a.reservation_token.is_some()) {
            return Err(Reject::new(
                400,
                "DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN are for UDP relaying",
            ));
        }
        if tcp && a.additional_address_family.is_some() {
            return Err(Reject::new(
                400,
                "ADDITIONAL-ADDRESS-FAMILY is for UDP relaying",
            ));
        }
        let port = match (a.even_port, a.reservation_token) {
            (Some(_), Some(_)) => {
                return Err(Reject::new(400, "EVEN-PORT and RESERVATION-TOKEN together"))
            }
            (Some(reserve), None) => PortRequest::Even { reserve },
            (None, Some(t)) => PortRequest::Reserved(t),
            (None, None) => PortRequest::Any,
        };
        let v6 = match a.requested_address_family {
            None | Some(attr::FAMILY_IPV4) => false,
            Some(attr::FAMILY_IPV6) => true,
            Some(_) => return Err(Reject::new(440, "address family not supported")),
        };
        if matches!(port, PortRequest::Reserved(_)) && a.requested_address_family.is_some() {
            return Err(Reject::new(
                400,
                "REQUESTED-ADDRESS-FAMILY with RESERVATION-TOKEN",
            ));
        }
        // RFC 8656 §7.2: only IPv6 may be additional, never beside REQUESTED-ADDRESS-FAMILY,
        // and not with a reserved port pair (the pair is one family's).
        let dual = match a.additional_address_family {
            None => false,
            Some(attr::FAMILY_IPV6) => true,
            Some(_) => return Err(Reject::new(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")),
        };
        if dual && a.requested_address_family.is_some() {
            return Err(Reject::new(
                400,
                "ADDITIONAL-ADDRESS-FAMILY with REQUESTED-ADDRESS-FAMILY",
            ));
        }
        if dual
            && matches!(
                port,
                PortRequest::Reserved(_) | PortRequest::Even { reserve: true }
            )
        {
            return Err(Reject::new(
                400,
                "ADDITIONAL-ADDRESS-FAMILY with a port reservation",
            ));
        }
        Ok(AllocateRequest {
            port,
            v6,
            dual,
            dont_fragment: a.dont_fragment,
            tcp,
        })
    }
}

/// One shard's TURN core: its allocations, port reservations and cooling ports; `O` is
/// told what happens.
pub struct Server<O: Observer = ()> {
    shared: Arc<Shared>,
    metrics: O,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// The generation new slots start at: past every generation of the slots `shrink`
    /// dropped, so an id from before never names a new allocation.
    generation_floor: u32,
    by_five_tuple: FxHashMap<FiveTuple, AllocationId>,
    reservations: FxHashMap<u64, Reservation>,
    /// Ports of deleted allocations, back in the pool after one to two sweeps: the driver
    /// closes a socket asynchronously, so a port handed out at once can still be bound
    /// (EADDRINUSE), and late packets for the old allocation must not reach a new owner.
    cooling: [Vec<u16>; 2],
    buf: Vec<u8>,
    next_sweep: Instant,
    /// Peer data connections of this shard's TCP allocations (RFC 6062), by CONNECTION-ID.
    connections: FxHashMap<ConnectionId, TcpConnection>,
    /// This shard's index and the number of shards: a CONNECTION-ID names its shard, so a
    /// ConnectionBind that the kernel hashed elsewhere finds its way back.
    shard: u32,
    shards: u32,
}

impl<O: Observer> Server<O> {
    /// A shard's core; every shard of a relay shares `shared`.
    pub fn new(shared: Arc<Shared>, metrics: O) -> Self {
        Self::with_shard(shared, metrics, 0, 1)
    }

    /// Shard `shard` of `shards`: CONNECTION-IDs it hands out name it (see
    /// [`RelaySockets::hand_over`]).
    pub fn with_shard(shared: Arc<Shared>, metrics: O, shard: usize, shards: usize) -> Self {
        Server {
            connections: FxHashMap::default(),
            shard: shard as u32,
            shards: shards.max(1) as u32,
            next_sweep: shared.epoch,
            shared,
            metrics,
            slots: Vec::new(),
            free_slots: Vec::new(),
            generation_floor: 0,
            by_five_tuple: FxHashMap::default(),
            reservations: FxHashMap::default(),
            cooling: Default::default(),
            buf: Vec::with_capacity(1500),
        }
    }

    /// How many allocations this shard holds.
    pub fn allocation_count(&self) -> usize {
        self.by_five_tuple.len()
    }

    /// The allocation of the client 5-tuple `ft`, if it has one.
    pub fn allocation(&self, ft: &FiveTuple) -> Option<&Allocation> {
        self.by_five_tuple.get(ft).and_then(|id| self.get(*id))
    }

    fn get(&self, id: AllocationId) -> Option<&Allocation> {
        let s = self.slots.get(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.allocation.as_ref()
    }

    fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.allocation.as_mut()
    }

    /// Gives back the room released allocations leave behind: the free slots at the end
    /// and the spare capacity of every table (they never shrink on their own). The driver
    /// calls it when many allocations have gone, before it trims the heap.
    pub fn shrink(&mut self) {
        while let Some(last) = self.slots.last() {
            if last.allocation.is_some() {
                break;
            }
            self.generation_floor = self.generation_floor.max(last.generation);
            self.slots.pop();
        }
        let len = self.slots.len() as u32;
        self.free_slots.retain(|&i| i < len);
        self.slots.shrink_to_fit();
        self.free_slots.shrink_to_fit();
        self.by_five_tuple.shrink_to_fit();
        self.reservations.shrink_to_fit();
        self.connections.shrink_to_fit();
    }

    /// When `handle_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.by_five_tuple.is_empty()
            && self.connections.is_empty()
            && self.reservations.is_empty()
            && self.cooling.iter().all(Vec::is_empty)
        {
            None
        } else {
            Some(self.next_sweep)
        }
    }

    /// Expires allocations, permissions, channels and reservations.
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<FiveTuple> = self
            .by_five_tuple
            .iter()
            .filter(|(_, id)| self.get(**id).is_some_and(|a| a.expires <= now))
            .map(|(ft, _)| *ft)
            .collect();
        for ft in expired {
            self.delete(&ft, DeleteReason::Expired, sockets);
        }
        self.expire_connections(now, sockets);
        for s in &mut self.slots {
            if let Some(a) = &mut s.allocation {
                a.prune(now);
            }
        }
        let mut ports = self.shared.ports();
        for p in self.cooling[0].drain(..) {
            ports.release(p);
        }
        self.cooling.swap(0, 1);
        self.reservations.retain(|_, r| {
            let keep = r.expires > now;
            if !keep {
                ports.release(r.port);
            }
            keep
        });
    }

    /// The client's transport connection closed (TCP): its allocation goes with it
    /// (RFC 8656 §3.1).
    pub fn close_client(&mut self, ft: &FiveTuple, sockets: &mut dyn RelaySockets) {
        self.delete(ft, DeleteReason::ConnectionClosed, sockets);
    }

    /// Deletes every allocation (graceful stop): sockets closed, quotas released.
    pub fn shutdown(&mut self, sockets: &mut dyn RelaySockets) {
        let all: Vec<FiveTuple> = self.by_five_tuple.keys().copied().collect();
        for ft in all {
            self.delete(&ft, DeleteReason::Shutdown, sockets);
        }
        let mut ports = self.shared.ports();
        for p in self.cooling.iter_mut().flat_map(|c| c.drain(..)) {
            ports.release(p);
        }
    }

    fn delete(&mut self, ft: &FiveTuple, reason: DeleteReason, sockets: &mut dyn RelaySockets) {
        let Some(id) = self.by_five_tuple.remove(ft) else {
            return;
        };
        let slot = &mut self.slots[id.index as usize];
        let Some(a) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(id.index);
        sockets.close(a.relay);
        self.cooling[1].push(a.relay.port());
        if let Some((bound, _)) = a.additional {
            sockets.close(bound);
            self.cooling[1].push(bound.port());
        }
        for (conn, _) in &a.connections {
            self.connections.remove(conn);
            sockets.close_connection(*conn);
        }
        sockets.allocation_ended(ft);
        self.shared.quota.release(&a.username);
        self.metrics.allocation_deleted(reason);
        info!(client = %ft.client, transport = ?ft.transport, relay = %a.advertised, user = %a.username, reason = reason.as_str(), "allocation deleted");
    }

    /// A packet from a client (STUN or ChannelData).
    pub fn handle_client<'a>(
        &'a mut self,
        now: Instant,
        ft: FiveTuple,
        data: &'a [u8],
        sockets: &mut dyn RelaySockets,
    ) -> Option<Transmit<'a>> {
        match codec::classify(data) {
            PacketKind::ChannelData => self.channel_data_from_client(now, &ft, data),
            PacketKind::Stun => match Message::parse(data) {
                Ok(msg) => self.handle_stun(now, ft, &msg, sockets),
                Err(codec::DecodeError::BadCookie) => self.legacy_binding(ft, data),
                Err(e) => {
                    debug!(client = %ft.client, error = %e, "malformed STUN message dropped");
                    self.metrics.dropped(DropReason::Malformed);
                    None
                }
            },
            PacketKind::Other => {
                self.metrics.dropped(DropReason::Malformed);
                None
            }
        }
    }

    fn channel_data_from_client<'a>(
        &'a mut self,
        now: Instant,
        ft: &FiveTuple,
        data: &'a [u8],
    ) -> Option<Transmit<'a>> {
        let Some((number, payload)) = parse_channel_data(data) else {
            self.metrics.dropped(DropReason::Malformed);
            return None;
        };
        let id = *self.by_five_tuple.get(ft)?;
        let metrics = &self.metrics;
        let a = self.slots[id.index as usize].allocation.as_mut()?;
        if a.expires <= now {
            return None;
        }
        let Some(peer) = a.channel_peer(number, now) else {
            metrics.dropped(DropReason::NoChannel);
            return None;
        };
        to_peer(a, metrics, now, peer, payload)
    }

    /// A packet from a peer arriving on the relayed socket of allocation `id`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<Transmit<'_>> {
        let metrics = &self.metrics;
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let a = slot.allocation.as_mut()?;
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if a.expires <= now {
            metrics.dropped(DropReason::NoPermission);
            return None;
        }
        // From our own client-facing port: part of a loop (which needs a client that is one
        // of our relayed addresses); never passed on, whatever the permissions say.
        if self.shared.own.contains(peer) {
            metrics.dropped(DropReason::OwnAddress);
            return None;
        }
        // Room for the ChannelData or Data indication header around it.
        if let Err(reason) = a.admit(peer.ip(), data.len(), u16::MAX as usize - 64, now) {
            metrics.dropped(reason);
            return None;
        }
        metrics.relayed(Direction::ToClient, data.len());
        let to = a.five_tuple;
        if let Some(ch) = a.channel_for(peer, now) {
            codec::write_channel_data(&mut self.buf, ch, data, to.transport == Transport::Tcp);
        } else {
            // No channel: a Data indication (RFC 8656 §11.6).
            let mut w = MessageWriter::new(
                &mut self.buf,
                Method::DATA,
                Class::Indication,
                rand::random(),
            );
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)
                .attr(attr::DATA, data);
            w.finish();
        }
        Some(Transmit::Client {
            to,
            data: &self.buf,
        })
    }

    /// RFC 3489 clients send no magic cookie; answer their Binding with MAPPED-ADDRESS
    /// (RFC 8489 §12) and drop anything else.
    fn legacy_binding<'a>(&'a mut self, ft: FiveTuple, data: &'a [u8]) -> Option<Transmit<'a>> {
        if data.len() < 20
            || data[0..2] != [0, 1]
            || u16::from_be_bytes([data[2], data[3]]) as usize + 20 != data.len()
        {
            self.metrics.dropped(DropReason::Malformed);
            return None;
        }
        // The 16-byte RFC 3489 transaction id spans the cookie field; echo it verbatim.
        let mut w = MessageWriter::new(&mut self.buf, Method::BINDING, Class::Success, [0; 12]);
        w.address(attr::MAPPED_ADDRESS, ft.client);
        w.finish();
        self.buf[4..20].copy_from_slice(&data[4..20]);
        Some(Transmit::Client {
            to: ft,
            data: &self.buf,
        })
    }

    fn handle_stun<'a>(
        &'a mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &Message<'a>,
        sockets: &mut dyn RelaySockets,
    ) -> Option<Transmit<'a>> {
        if !msg.verify_fingerprint() {
            self.metrics.dropped(DropReason::BadFingerprint);
            return None;
        }
        let attrs = Attributes::parse(msg);
        match msg.class {
            Class::Request => {}
            Class::Indication if msg.method == Method::SEND => {
                let Ok(attrs) = attrs else {
                    self.metrics.dropped(DropReason::Malformed);
                    return None;
                };
                return self.send_indication(now, &ft, &attrs);
            }
            _ => {
                self.metrics.dropped(DropReason::UnexpectedMessage);
                return None;
            }
        }
        let unknown: Vec<u16> = msg.unknown_required().collect();
        let result = if !unknown.is_empty() {
            self.respond_unknown(msg, &unknown);
            Err(None)
        } else {
            match (msg.method, attrs) {
                (_, Err(e)) => Err(Some(Reject::new(400, e.reason()))),
                (Method::BINDING, Ok(_)) => {
                    self.binding(&ft, msg);
                    Ok(Reply::Now)
                }
                (
                    Method::ALLOCATE
                    | Method::REFRESH
                    | Method::CREATE_PERMISSION
                    | Method::CHANNEL_BIND,
                    Ok(a),
                ) => match self.authenticate(now, &ft, msg, &a) {
                    Ok(auth) => {
                        let req = Request {
                            msg,
                            attrs: &a,
                            auth,
                        };
                        match msg.method {
                            Method::ALLOCATE => self.allocate(now, ft, req, sockets),
                            Method::REFRESH => self.refresh(now, ft, req, sockets),
                            Method::CREATE_PERMISSION => self.create_permission(now, &ft, req),
                            _ => self.channel_bind(now, &ft, req),
                        }
                        .map(|()| Reply::Now)
                        .map_err(Some)
                    }
                    Err(r) => Err(Some(r)),
                },
                (Method::CONNECT | Method::CONNECTION_BIND, Ok(a)) => {
                    match self.authenticate(now, &ft, msg, &a) {
                        Ok(auth) => {
                            let req = Request {
                                msg,
                                attrs: &a,
                                auth,
                            };
                            if msg.method == Method::CONNECT {
                                self.connect(now, &ft, req, sockets)
                            } else {
                                self.connection_bind(&ft, req, sockets)
                            }
                            .map_err(Some)
                        }
                        Err(r) => Err(Some(r)),
                    }
                }
                (_, Ok(_)) => Err(Some(Reject::new(400, "unknown method"))),
            }
        };
        let code = match result {
            // Answered later: Connect when its TCP connection is up or has failed, a
            // ConnectionBind by the shard it was handed to.
            Ok(Reply::Later) => return None,
            Ok(Reply::Now) => 0,
            Err(None) => 420,
            Err(Some(r)) => {
                self.respond_error(now, &ft, msg, &r);
                r.code
            }
        };
        self.metrics.request(msg.method, code);
        debug!(client = %ft.client, method = msg.method.name(), code, "request answered");
        Some(Transmit::Client {
            to: ft,
            data: &self.buf,
        })
    }

    fn respond_unknown(&mut self, msg: &Message<'_>, unknown: &[u16]) {
        let mut w = MessageWriter::new(&mut self.buf, msg.method, Class::Error, msg.transaction_id);
        w.error_code(420, "unknown comprehension-required attribute")
            .unknown_attributes(unknown);
        finish_unauthenticated(w, msg);
    }

    fn respond_error(&mut self, now: Instant, ft: &FiveTuple, msg: &Message<'_>, r: &Reject) {
        let nonce = r.challenge.then(|| {
            self.shared
                .live()
                .auth
                .nonce(self.shared.unix(now), ft.client.ip())
        });
        let mut w = MessageWriter::new(&mut self.buf, msg.method, Class::Error, msg.transaction_id);
        w.error_code(r.code, r.reason);
        if let Some(n) = &nonce {
            w.attr(attr::REALM, self.shared.live().auth.realm().as_bytes())
                .attr(attr::NONCE, n.as_bytes());
        }
        match &r.key {
            Some(k) => {
                w.attr(
                    attr::SOFTWARE,
                    self.shared.live().config.software.as_bytes(),
                )
                .integrity(k, msg.uses_sha256());
                w.finish_with_fingerprint();
            }
            None => finish_unauthenticated(w, msg),
        }
    }

    fn binding(&mut self, ft: &FiveTuple, msg: &Message<'_>) {
        let mut w = MessageWriter::new(
            &mut self.buf,
            Method::BINDING,
            Class::Success,
            msg.transaction_id,
        );
        w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        finish_unauthenticated(w, msg);
    }

    /// RFC 8489 §9.2.4: challenge, check the nonce, find the key, verify the HMAC; then,
    /// for an existing allocation, insist on the same user (441).
    fn authenticate(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'_>,
        attrs: &Attributes<'_>,
    ) -> Result<Authenticated, Reject> {
        if !msg.has_integrity() {
            // The RFC's reason phrase: short, since this answer goes to anyone who asks.
            return Err(Reject::challenge(401, "Unauthorized"));
        }
        let (Some(username), Some(realm), Some(nonce)) = (attrs.username, attrs.realm, attrs.nonce)
        else {
            return Err(Reject::new(
                400,
                "USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY",
            ));
        };
        let unix = self.shared.unix(now);
        if self
            .shared
            .live()
            .auth
            .check_nonce(nonce, unix, ft.client.ip())
            == NonceCheck::Stale
        {
            return Err(Reject::challenge(
                438,
                "stale nonce: retry with the new one",
            ));
        }
        if realm != self.shared.live().auth.realm() {
            return Err(Reject::challenge(401, "wrong realm"));
        }
        let keys = match self.shared.live().auth.keys(username, unix) {
            Ok(k) => k,
            Err(AuthError::Expired) => return Err(Reject::challenge(401, "credentials expired")),
            Err(AuthError::UnknownUser) => {
                return Err(Reject::challenge(401, "wrong username or password"))
            }
        };
        let Some(key) = keys.into_iter().find(|k| msg.verify_integrity(k)) else {
            return Err(Reject::challenge(401, "wrong username or password"));
        };
        if let Some(a) = self.allocation(ft) {
            if &*a.username != username {
                return Err(Reject::new(441, "allocation belongs to another user").signed(key));
            }
        }
        Ok(Authenticated {
            username: username.into(),
            key,
        })
    }

    fn finish_success(
        &mut self,
        msg: &Message<'_>,
        key: &Key,
        f: impl FnOnce(&mut MessageWriter<'_>),
    ) {
        let mut w = MessageWriter::new(
            &mut self.buf,
            msg.method,
            Class::Success,
            msg.transaction_id,
        );
        f(&mut w);
        w.attr(
            attr::SOFTWARE,
            self.shared.live().config.software.as_bytes(),
        )
        .integrity(key, msg.uses_sha256());
        w.finish_with_fingerprint();
    }

    /// The lifetime granted for the LIFETIME asked: 0 deletes (Refresh); otherwise never
    /// below the default or above the max (RFC 8656 §7.2).
    fn lifetime(&self, asked: Option<u32>) -> Duration {
        let live = self.shared.live();
        let c = &live.config;
        match asked {
            None => c.default_lifetime,
            Some(0) => Duration::ZERO,
            Some(secs) => {
                Duration::from_secs(secs as u64).clamp(c.default_lifetime, c.max_lifetime)
            }
        }
    }

    fn allocate(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        req: Request<'_, '_>,
        sockets: &mut dyn RelaySockets,
    ) -> Result<(), Reject> {
        let (msg, key) = (req.msg, req.auth.key);
        if let Some(a) = self.allocation(&ft) {
            if a.allocate_tid != msg.transaction_id {
                return Err(
                    Reject::new(437, "allocation already exists for this 5-tuple").signed(key),
                );
            }
            // A retransmitted Allocate: answer it again.
            let (adv, life) = (a.advertised, a.remaining(now));
            let additional = a.additional.map(|(_, adv)| adv);
            self.finish_success(msg, &key, |w| {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, adv);
                if let Some(adv6) = additional {
                    w.xor_address(attr::XOR_RELAYED_ADDRESS, adv6);
                }
                w.u32(attr::LIFETIME, life.as_secs() as u32)
                    .xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
            });
            return Ok(());
        }
        let ask = AllocateRequest::read(req.attrs).map_err(|r| r.signed(key))?;
        if ask.tcp && ft.transport != Transport::Tcp {
            // RFC 6062 §5.1: data connections are TCP, so the control connection is too.
            return Err(Reject::new(
                400,
                "TCP relaying needs a TCP or TLS connection to the server",
            )
            .signed(key));
        }
        let lifetime = match self.lifetime(req.attrs.lifetime) {
            Duration::ZERO => self.shared.live().config.default_lifetime,
            l => l,
        };
        let live = self.shared.live();
        let config = &live.config;
        let (bind_ip, adv_ip) = if ask.v6 {
            config.relay_v6
        } else {
            config.relay_v4
        }
        .ok_or_else(|| Reject::new(440, "no relay address of that family").signed(key))?;
        if self.shared.is_draining() {
            return Err(Reject::new(508, "server is shutting down; use another").signed(key));
        }
        let username = req.auth.username;
        self.shared.quota.acquire(&username).map_err(|e| {
            match e {
                QuotaError::UserQuota => Reject::new(486, "allocation quota reached for this user"),
                QuotaError::ServerFull => Reject::new(508, "server is at its allocation limit"),
            }
            .signed(key)
        })?;
        let Some((relay, id, reservation_token)) = self.bind_relayed(now, sockets, bind_ip, &ask)
        else {
            self.shared.quota.release(&username);
            return Err(Reject::new(508, "no relay port available").signed(key));
        };
        let advertised = SocketAddr::new(adv_ip, relay.port());
        // The IPv6 half of a dual allocation; without it the IPv4 one still stands and the
        // response says why (ADDRESS-ERROR-CODE).
        let mut additional = None;
        let mut additional_error = None;
        if ask.dual {
            match config.relay_v6 {
                None => additional_error = Some((440, "no IPv6 relay address here")),
                Some((bind6, adv6)) => match self.bind_additional(sockets, bind6, id, &ask) {
                    Some(bound) => additional = Some((bound, SocketAddr::new(adv6, bound.port()))),
                    None => additional_error = Some((508, "no IPv6 relay port available")),
                },
            }
        }
        let bucket = (self.shared.live().config.max_bps > 0)
            .then(|| TokenBucket::new(self.shared.live().config.max_bps, now));
        info!(client = %ft.client, transport = ?ft.transport, relay = %advertised, user = %username, lifetime = lifetime.as_secs(), "allocation created");
        let a = Allocation {
            five_tuple: ft,
            relay,
            advertised,
            additional,
            username,
            key,
            expires: now + lifetime,
            allocate_tid: msg.transaction_id,
            permissions: Vec::new(),
            channels: Vec::new(),
            bucket,
            tcp: ask.tcp,
            connections: Vec::new(),
        };
        self.slots[id.index as usize].allocation = Some(a);
        self.by_five_tuple.insert(ft, id);
        self.metrics.allocation_created();
        self.finish_success(msg, &key, |w| {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, advertised);
            if let Some((_, adv6)) = additional {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, adv6);
            }
            if let Some((code, reason)) = additional_error {
                w.address_error_code(attr::FAMILY_IPV6, code, reason);
            }
            w.u32(attr::LIFETIME, lifetime.as_secs() as u32);
            if let Some(t) = reservation_token {
                w.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
            }
            w.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        });
        Ok(())
    }

    /// Picks and binds the relayed port the request asks for: a reserved one, an even one
    /// (reserving the next when asked), or any. A port in our range may be taken by another
    /// program, so a few are tried. Returns the bound address, its allocation slot and a
    /// new reservation's token.
    fn bind_relayed(
        &mut self,
        now: Instant,
        sockets: &mut dyn RelaySockets,
        bind_ip: IpAddr,
        ask: &AllocateRequest,
    ) -> Option<(SocketAddr, AllocationId, Option<u64>)> {
        match ask.port {
            PortRequest::Reserved(token) => {
                let r = self.reservations.remove(&token)?;
                if r.v6 != ask.v6 {
                    // A token for the other family: refused, and its port goes back.
                    self.shared.ports().release(r.port);
                    return None;
                }
                let addr = SocketAddr::new(bind_ip, r.port);
                match self.open(sockets, addr, ask) {
                    Ok(id) => Some((addr, id, None)),
                    Err(_) => {
                        self.shared.ports().release(r.port);
                        None
                    }
                }
            }
            PortRequest::Even { reserve } => {
                for _ in 0..16 {
                    let p = self.shared.ports().take_even(reserve)?;
                    let addr = SocketAddr::new(bind_ip, p);
                    match self.open(sockets, addr, ask) {
                        Ok(id) if reserve => {
                            let token: u64 = rand::random();
                            let expires = now + RESERVATION_LIFETIME;
                            let (port, v6) = (p + 1, ask.v6);
                            self.reservations
                                .insert(token, Reservation { port, v6, expires });
                            return Some((addr, id, Some(token)));
                        }
                        Ok(id) => return Some((addr, id, None)),
                        Err(_) => {
                            // Taken by another program now: back in the pool after the
                            // cooling sweeps instead of lost from it for good.
                            self.cooling[1].push(p);
                            if reserve {
                                self.shared.ports().release(p + 1);
                            }
                        }
                    }
                }
                None
            }
            PortRequest::Any => {
                for _ in 0..16 {
                    let p = self.shared.ports().take()?;
                    let addr = SocketAddr::new(bind_ip, p);
                    match self.open(sockets, addr, ask) {
                        Ok(id) => return Some((addr, id, None)),
                        Err(_) => self.cooling[1].push(p),
                    }
                }
                None
            }
        }
    }

    /// Binds a dual allocation's IPv6 socket on any free port, for allocation `id`.
    fn bind_additional(
        &mut self,
        sockets: &mut dyn RelaySockets,
        bind_ip: IpAddr,
        id: AllocationId,
        ask: &AllocateRequest,
    ) -> Option<SocketAddr> {
        for _ in 0..16 {
            let p = self.shared.ports().take()?;
            let addr = SocketAddr::new(bind_ip, p);
            match sockets.open(addr, id, ask.dont_fragment) {
                Ok(()) => return Some(addr),
                Err(e) => {
                    debug!(%addr, error = %e, "relay port unavailable");
                    self.cooling[1].push(p);
                }
            }
        }
        None
    }

    /// Reserves a slot and binds the socket; the slot is filled by the caller.
    fn open(
        &mut self,
        sockets: &mut dyn RelaySockets,
        addr: SocketAddr,
        ask: &AllocateRequest,
    ) -> std::io::Result<AllocationId> {
        let index = match self.free_slots.last() {
            Some(&i) => i,
            None => {
                self.slots.push(Slot {
                    generation: self.generation_floor,
                    allocation: None,
                });
                self.free_slots.push((self.slots.len() - 1) as u32);
                (self.slots.len() - 1) as u32
            }
        };
        let id = AllocationId {
            index,
            generation: self.slots[index as usize].generation,
        };
        let opened = if ask.tcp {
            sockets.open_tcp(addr, id)
        } else {
            sockets.open(addr, id, ask.dont_fragment)
        };
        match opened {
            Ok(()) => {
                self.free_slots.pop();
                Ok(id)
            }
            Err(e) => {
                debug!(%addr, error = %e, "relay port unavailable");
                Err(e)
            }
        }
    }

    fn refresh(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        req: Request<'_, '_>,
        sockets: &mut dyn RelaySockets,
    ) -> Result<(), Reject> {
        let (msg, key) = (req.msg, req.auth.key);
        let Some(&id) = self.by_five_tuple.get(&ft) else {
            return Err(Reject::new(437, "no allocation for this 5-tuple").signed(key));
        };
        let requested = self.lifetime(req.attrs.lifetime);
        if requested.is_zero() {
            self.delete(&ft, DeleteReason::Refresh, sockets);
        } else if let Some(a) = self.get_mut(id) {
            a.expires = now + requested;
        }
        self.finish_success(msg, &key, |w| {
            w.u32(attr::LIFETIME, requested.as_secs() as u32);
        });
        Ok(())
    }

    /// Peers named in the request, checked against family and policy.
    fn peers(
        &self,
        attrs: &Attributes<'_>,
        ft: &FiveTuple,
        key: Key,
    ) -> Result<Vec<SocketAddr>, Reject> {
        let id = *self
            .by_five_tuple
            .get(ft)
            .ok_or_else(|| Reject::new(437, "no allocation for this 5-tuple").signed(key))?;
        let allocation = self.get(id);
        let mut out = Vec::new();
        for &peer in attrs.xor_peer_addresses.as_slice() {
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            if allocation.and_then(|a| a.relay_for(peer)).is_none() {
                return Err(Reject::new(
                    443,
                    "peer address family differs from the relayed address",
                )
                .signed(key));
            }
            if let Err(refusal) = self.shared.own.check(&self.shared.live().policy, peer) {
                info!(client = %ft.client, %peer, reason = refusal.reason(), "{refusal}");
                self.metrics.refused(refusal);
                return Err(
                    Reject::new(403, "peer address is forbidden by the server's policy")
                        .signed(key),
                );
            }
            out.push(peer);
        }
        if out.is_empty() {
            return Err(Reject::new(400, "XOR-PEER-ADDRESS is missing").signed(key));
        }
        Ok(out)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        req: Request<'_, '_>,
    ) -> Result<(), Reject> {
        let (msg, key) = (req.msg, req.auth.key);
        let peers = self.peers(req.attrs, ft, key)?;
        let expires = now + self.shared.live().config.permission_lifetime;
        let limit = self.shared.live().config.max_permissions;
        let id = self.by_five_tuple[ft];
        let a = self.get_mut(id).expect("checked by peers()");
        // All or nothing: check the limit before installing any.
        let new = peers
            .iter()
            .filter(|p| !a.permissions.iter().any(|x| x.ip == p.ip()))
            .count();
        if a.permissions.len() + new > limit {
            return Err(Reject::new(508, "too many permissions on this allocation").signed(key));
        }
        for p in peers {
            a.permit(p.ip(), expires, limit);
        }
        self.finish_success(msg, &key, |_| {});
        Ok(())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        req: Request<'_, '_>,
    ) -> Result<(), Reject> {
        let (msg, key) = (req.msg, req.auth.key);
        let Some(number) = req.attrs.channel_number else {
            return Err(Reject::new(400, "CHANNEL-NUMBER is missing or malformed").signed(key));
        };
        if !(codec::CHANNEL_MIN..=codec::CHANNEL_MAX).contains(&number) {
            return Err(Reject::new(400, "channel number outside 0x4000-0x7FFF").signed(key));
        }
        let peers = self.peers(req.attrs, ft, key)?;
        let peer = peers[0];
        if self.allocation(ft).is_some_and(|a| a.tcp) {
            return Err(Reject::new(400, "a TCP allocation has no channels").signed(key));
        }
        let live = self.shared.live();
        let config = &live.config;
        let (perm_exp, chan_exp, limit) = (
            now + config.permission_lifetime,
            now + config.channel_lifetime,
            config.max_permissions,
        );
        let id = self.by_five_tuple[ft];
        let a = self.get_mut(id).expect("checked by peers()");
        a.can_bind(number, peer, now).map_err(|e| {
            match e {
                ChannelBindError::NumberInUse => {
                    Reject::new(400, "channel number is bound to another peer")
                }
                ChannelBindError::PeerInUse => {
                    Reject::new(400, "peer is bound to another channel number")
                }
                ChannelBindError::TooMany => Reject::new(508, "too many channels"),
            }
            .signed(key)
        })?;
        if !a.permit(peer.ip(), perm_exp, limit) {
            return Err(Reject::new(508, "too many permissions on this allocation").signed(key));
        }
        a.bind_channel(number, peer, chan_exp);
        self.finish_success(msg, &key, |_| {});
        Ok(())
    }

    /// Send indication (RFC 8656 §11.4): never answered; dropped when anything is off.
    fn send_indication<'a>(
        &'a mut self,
        now: Instant,
        ft: &FiveTuple,
        attrs: &Attributes<'a>,
    ) -> Option<Transmit<'a>> {
        let id = *self.by_five_tuple.get(ft)?;
        let (Some(&peer), Some(data)) = (attrs.xor_peer_addresses.as_slice().first(), attrs.data)
        else {
            self.metrics.dropped(DropReason::Malformed);
            return None;
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        // A permission is for an IP, so a Send indication could name any port on it:
        // our own listen ports are refused here too.
        if self.shared.own.contains(peer) {
            self.metrics.dropped(DropReason::OwnAddress);
            return None;
        }
        let metrics = &self.metrics;
        let a = self.slots[id.index as usize].allocation.as_mut()?;
        if a.expires <= now {
            return None;
        }
        if a.tcp {
            // RFC 6062: a TCP allocation's data goes over data connections only.
            metrics.dropped(DropReason::UnexpectedMessage);
            return None;
        }
        to_peer(a, metrics, now, peer, data)
    }
}

/// Ends a response to a request nobody authenticated. Such a request can come from a
/// spoofed source address, so its answer carries only what the RFC requires: no SOFTWARE,
/// and FINGERPRINT only when the request had one (a client multiplexing STUN with other
/// protocols sends it and needs it back). BENCHMARKS.md has the amplification factors.
fn finish_unauthenticated(w: MessageWriter<'_>, msg: &Message<'_>) {
    if msg.has_fingerprint() {
        w.finish_with_fingerprint();
    } else {
        w.finish();
    }
}

/// Admits a packet towards a peer (see [`Allocation::admit`]) and sends it from the
/// relayed address.
#[inline]
fn to_peer<'a>(
    a: &mut Allocation,
    metrics: &impl Observer,
    now: Instant,
    peer: SocketAddr,
    data: &'a [u8],
) -> Option<Transmit<'a>> {
    if let Err(reason) = a.admit(peer.ip(), data.len(), usize::MAX, now) {
        metrics.dropped(reason);
        return None;
    }
    let Some(relay) = a.relay_for(peer) else {
        metrics.dropped(DropReason::NoPermission);
        return None;
    };
    metrics.relayed(Direction::ToPeer, data.len());
    Some(Transmit::Peer {
        relay,
        to: peer,
        data,
    })
}
