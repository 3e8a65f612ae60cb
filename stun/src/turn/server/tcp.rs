//! TCP allocations (RFC 6062): Connect, ConnectionBind and ConnectionAttempt.
//!
//! The core keeps each peer data connection's state and decides; the driver owns the
//! sockets. A Connect is answered once the driver reports the outgoing connection
//! ([`Server::connect_result`]); a peer connecting to a relayed address is reported with
//! [`Server::peer_connected`]; after a ConnectionBind the driver pipes bytes between the
//! two connections without the core, and says when that ends ([`Server::connection_closed`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Authenticated, Reject, RelaySockets, Reply, Request, Server, Transmit};
use crate::auth::Key;
use crate::codec::{attr, Class, MessageWriter, Method};
use crate::turn::allocation::MAX_CONNECTIONS;
use crate::turn::{ConnectionEvent, FiveTuple, Observer, Transport};

use super::AllocationId;

/// How long a peer data connection waits for its ConnectionBind (RFC 6062 §5.2, §5.3).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// CONNECTION-ID (RFC 6062 §6.2.1): names one peer data connection. Its value modulo the
/// number of shards is the shard that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u32);

/// A peer data connection.
pub(super) struct TcpConnection {
    allocation: AllocationId,
    state: State,
}

enum State {
    /// A Connect's outgoing connection is being opened; its answer is owed.
    Connecting {
        tid: [u8; 12],
        sha256: bool,
        key: Key,
    },
    /// Open, waiting for the client's ConnectionBind until `expires`.
    Pending { expires: Instant },
    /// Joined to a client data connection; the driver pipes it.
    Bound,
}

impl<O: Observer> Server<O> {
    /// A CONNECTION-ID not in use that names this shard.
    fn new_connection_id(&self) -> ConnectionId {
        loop {
            let r: u32 = rand::random();
            let id = (r / self.shards) * self.shards + self.shard;
            let id = ConnectionId(id);
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// Connect (RFC 6062 §5.2): checks the allocation and the peer, then asks the driver to
    /// connect; answered by [`Server::connect_result`].
    pub(super) fn connect(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        req: Request<'_, '_>,
        sockets: &mut dyn RelaySockets,
    ) -> Result<Reply, Reject> {
        let (msg, key) = (req.msg, req.auth.key);
        let Some(&id) = self.by_five_tuple.get(ft) else {
            return Err(Reject::new(437, "no allocation for this 5-tuple").signed(key));
        };
        if !self.get(id).is_some_and(|a| a.tcp) {
            return Err(Reject::new(400, "Connect needs a TCP allocation").signed(key));
        }
        // Family, the peer policy and our own addresses, as for permissions.
        let peer = self.peers(req.attrs, ft, key)?[0];
        let live = self.shared.live();
        let (perm_exp, limit) = (
            now + live.config.permission_lifetime,
            live.config.max_permissions,
        );
        drop(live);
        let conn = self.new_connection_id();
        let a = self.get_mut(id).expect("looked up above");
        if a.connections.iter().any(|(_, p)| *p == peer) {
            return Err(Reject::new(446, "Connection Already Exists").signed(key));
        }
        if a.connections.len() >= MAX_CONNECTIONS {
            return Err(Reject::new(508, "too many connections on this allocation").signed(key));
        }
        // The peer may send as soon as the connection is up: it needs a permission like
        // any peer (and gets one, as ChannelBind gives one).
        if !a.permit(peer.ip(), perm_exp, limit) {
            return Err(Reject::new(508, "too many permissions on this allocation").signed(key));
        }
        a.connections.push((conn, peer));
        let relay = a.relay;
        self.connections.insert(
            conn,
            TcpConnection {
                allocation: id,
                state: State::Connecting {
                    tid: msg.transaction_id,
                    sha256: msg.uses_sha256(),
                    key,
                },
            },
        );
        debug!(client = %ft.client, %peer, conn = conn.0, "connecting to peer");
        sockets.connect(relay, peer, conn);
        Ok(Reply::Later)
    }

    /// The driver's outgoing connection for `conn` is up (`ok`) or failed: the Connect is
    /// answered (CONNECTION-ID, or 447). None when the allocation is gone meanwhile (then
    /// drop the connection).
    pub fn connect_result(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        ok: bool,
    ) -> Option<Transmit<'_>> {
        let c = self.connections.get_mut(&conn)?;
        let State::Connecting { tid, sha256, key } = c.state else {
            return None;
        };
        let id = c.allocation;
        if ok {
            c.state = State::Pending {
                expires: now + BIND_TIMEOUT,
            };
        } else {
            self.connections.remove(&conn);
        }
        let a = self.get_mut(id)?;
        if !ok {
            a.connections.retain(|(c, _)| *c != conn);
        }
        let to = a.five_tuple;
        let software = self.shared.live().config.software.clone();
        let class = if ok { Class::Success } else { Class::Error };
        let mut w = MessageWriter::new(&mut self.buf, Method::CONNECT, class, tid);
        if ok {
            w.u32(attr::CONNECTION_ID, conn.0);
        } else {
            w.error_code(447, "Connection Timeout or Failure");
        }
        w.attr(attr::SOFTWARE, software.as_bytes())
            .integrity(&key, sha256);
        w.finish_with_fingerprint();
        let (event, code) = if ok {
            (ConnectionEvent::Connected, 0)
        } else {
            (ConnectionEvent::ConnectFailed, 447)
        };
        self.metrics.connection(event);
        self.metrics.request(Method::CONNECT, code);
        Some(Transmit::Client {
            to,
            data: &self.buf,
        })
    }

    /// A peer connected to the relayed TCP address of allocation `id` (RFC 6062 §5.3). With
    /// a permission for its IP the client is told (ConnectionAttempt) and the connection
    /// waits for a ConnectionBind; None: close it.
    pub fn peer_connected(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: SocketAddr,
    ) -> Option<(ConnectionId, Transmit<'_>)> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let conn = self.new_connection_id();
        let own = self.shared.own.contains(peer);
        let metrics = &self.metrics;
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let a = slot.allocation.as_mut()?;
        if own
            || a.expires <= now
            || !a.is_permitted(peer.ip(), now)
            || a.connections.len() >= MAX_CONNECTIONS
        {
            debug!(%peer, relay = %a.advertised, "peer connection refused");
            metrics.connection(ConnectionEvent::Refused);
            return None;
        }
        a.connections.push((conn, peer));
        let to = a.five_tuple;
        self.connections.insert(
            conn,
            TcpConnection {
                allocation: id,
                state: State::Pending {
                    expires: now + BIND_TIMEOUT,
                },
            },
        );
        self.metrics.connection(ConnectionEvent::Accepted);
        let mut w = MessageWriter::new(
            &mut self.buf,
            Method::CONNECTION_ATTEMPT,
            Class::Indication,
            rand::random(),
        );
        w.xor_address(attr::XOR_PEER_ADDRESS, peer)
            .u32(attr::CONNECTION_ID, conn.0);
        w.finish_with_fingerprint();
        Some((
            conn,
            Transmit::Client {
                to,
                data: &self.buf,
            },
        ))
    }

    /// ConnectionBind (RFC 6062 §5.4) on a new client connection `ft`: joins it to the
    /// pending peer data connection its CONNECTION-ID names.
    pub(super) fn connection_bind(
        &mut self,
        ft: &FiveTuple,
        req: Request<'_, '_>,
        sockets: &mut dyn RelaySockets,
    ) -> Result<Reply, Reject> {
        let Authenticated { username, key } = req.auth;
        if ft.transport != Transport::Tcp {
            return Err(
                Reject::new(400, "ConnectionBind needs a TCP or TLS connection").signed(key),
            );
        }
        if self.by_five_tuple.contains_key(ft) {
            return Err(Reject::new(400, "this connection holds an allocation").signed(key));
        }
        let Some(conn) = req.attrs.connection_id.map(ConnectionId) else {
            return Err(Reject::new(400, "CONNECTION-ID is missing").signed(key));
        };
        let owner = conn.0 % self.shards;
        if owner != self.shard {
            sockets.hand_over(ft, owner as usize);
            return Ok(Reply::Later);
        }
        let Some(c) = self.connections.get(&conn) else {
            return Err(
                Reject::new(400, "no pending connection with this CONNECTION-ID").signed(key),
            );
        };
        if !matches!(c.state, State::Pending { .. }) {
            return Err(
                Reject::new(400, "no pending connection with this CONNECTION-ID").signed(key),
            );
        }
        let Some(a) = self.get(c.allocation) else {
            return Err(
                Reject::new(400, "no pending connection with this CONNECTION-ID").signed(key),
            );
        };
        if a.username != username {
            return Err(Reject::new(441, "allocation belongs to another user").signed(key));
        }
        info!(client = %ft.client, relay = %a.advertised, conn = conn.0, "data connection bound");
        if let Some(c) = self.connections.get_mut(&conn) {
            c.state = State::Bound;
        }
        self.metrics.connection(ConnectionEvent::Bound);
        sockets.bind_connection(conn, ft);
        self.finish_success(req.msg, &key, |_| {});
        Ok(Reply::Now)
    }

    /// A peer data connection ended (either side closed, or its connect failed after the
    /// answer): forgotten, so the peer can be connected again.
    pub fn connection_closed(&mut self, conn: ConnectionId) {
        let Some(c) = self.connections.remove(&conn) else {
            return;
        };
        if let Some(a) = self.get_mut(c.allocation) {
            a.connections.retain(|(x, _)| *x != conn);
        }
    }

    /// A bound data connection carried `n` more bytes (either way): charged to its
    /// allocation's bandwidth cap (`max-bps`, shared with the allocation's UDP traffic and
    /// its other connections). The driver waits the returned time before reading more from
    /// either side, so over the cap TCP's flow control slows the sender instead of data
    /// being dropped. Zero without a cap.
    pub fn connection_carried(&mut self, conn: ConnectionId, n: usize, now: Instant) -> Duration {
        let Some(c) = self.connections.get(&conn) else {
            return Duration::ZERO;
        };
        match self.get_mut(c.allocation).and_then(|a| a.bucket.as_mut()) {
            Some(b) => b.charge(n, now),
            None => Duration::ZERO,
        }
    }

    /// Closes peer data connections that waited [`BIND_TIMEOUT`] for a ConnectionBind.
    pub(super) fn expire_connections(&mut self, now: Instant, sockets: &mut dyn RelaySockets) {
        let expired: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Pending { expires } if expires <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            self.connection_closed(conn);
            self.metrics.connection(ConnectionEvent::Expired);
            sockets.close_connection(conn);
        }
    }

    /// Peer data connections this shard holds, in any state.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }
}
