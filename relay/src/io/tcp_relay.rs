//! The sockets of TCP allocations (RFC 6062): a listener on each relayed address, the
//! outgoing connections Connect asks for, and the pipe between a bound client data
//! connection and its peer. The core decides who may connect and which connection a
//! ConnectionBind joins; this moves the bytes.
//!
//! Bounded like the rest: a peer data connection is not read before it is bound (the
//! kernel's receive window holds the peer back), a pipe copies through two fixed
//! buffers charged to the shard's TCP budget, peer connections count against the
//! shard's connection limit, and a pipe is paced to its allocation's `max-bps`.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::shard::Ctx;
use super::tcp::ClientIo;
use crate::server::{AllocationId, ConnectionId};
use icebreaker_stun::turn::Direction;
use icebreaker_stun::turn::Observer;

/// How long a Connect waits for its peer (RFC 6062 §5.2: at least 30 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Each direction of a pipe copies through a buffer this large.
const PIPE_BUFFER: usize = 16 * 1024;

/// A peer data connection the driver holds.
pub(crate) struct PeerConn {
    /// The connected stream, until a ConnectionBind takes it into a pipe.
    stream: Option<TcpStream>,
    /// The outgoing connect in progress (a Connect).
    connecting: Option<JoinHandle<()>>,
    /// Ends the pipe once bound.
    close: Rc<Notify>,
}

impl PeerConn {
    /// Closes it, whatever its state.
    pub(crate) fn close(self) {
        if let Some(t) = self.connecting {
            t.abort();
        }
        self.close.notify_one();
    }
}

/// Binds and listens on a TCP allocation's relayed address. SO_REUSEADDR/SO_REUSEPORT:
/// the outgoing connections of Connect leave from this same address while it listens.
///
/// SO_REUSEPORT would also let this listener join another process's listener on the
/// same port (any program of the same user: a second relay, a test's relay), and the
/// kernel would then split the peers' connections between them. So the port is first
/// bound without SO_REUSEPORT: if anything holds it, it is busy (the pool tries another).
pub(crate) fn open_listener(
    ctx: &Rc<Ctx>,
    addr: SocketAddr,
    id: AllocationId,
) -> std::io::Result<()> {
    {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // TIME_WAIT leftovers of our own earlier allocations are no owner.
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(64)?;
    let listener = TcpListener::from_std(s.into())?;
    let task = tokio::task::spawn_local(accept_peers(ctx.clone(), listener, id));
    ctx.tcp_listeners.borrow_mut().insert(addr, task);
    Ok(())
}

/// Whether the shard may hold one more peer connection.
fn room_for_peer(ctx: &Ctx) -> bool {
    if ctx.peer_conns.borrow().len() >= ctx.max_tcp {
        ctx.metrics.drop("tcp_connection_limit");
        return false;
    }
    true
}

async fn accept_peers(ctx: Rc<Ctx>, listener: TcpListener, id: AllocationId) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "relayed TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !room_for_peer(&ctx) {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let mut core = ctx.core.borrow_mut();
        let Some((conn, t)) = core.peer_connected(Instant::now(), id, peer) else {
            continue;
        };
        ctx.transmit(t);
        drop(core);
        ctx.peer_conns.borrow_mut().insert(
            conn,
            PeerConn {
                stream: Some(stream),
                connecting: None,
                close: Rc::new(Notify::new()),
            },
        );
    }
}

/// Connects from `relay` to `peer` for a Connect, then reports to the core.
pub(crate) fn connect(ctx: &Rc<Ctx>, relay: SocketAddr, peer: SocketAddr, conn: ConnectionId) {
    if !room_for_peer(ctx) {
        // Answered 447 once the core is free again (it is borrowed while it asks).
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move { report(&ctx, conn, None) });
        return;
    }
    let c = ctx.clone();
    let task = tokio::task::spawn_local(async move {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect_from(relay, peer)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                debug!(%relay, %peer, error = %e, "connect to peer failed");
                None
            }
            Err(_) => None,
        };
        report(&c, conn, stream);
    });
    ctx.peer_conns.borrow_mut().insert(
        conn,
        PeerConn {
            stream: None,
            connecting: Some(task),
            close: Rc::new(Notify::new()),
        },
    );
}

/// Tells the core how the connect went and keeps the stream if the allocation still wants it.
fn report(ctx: &Rc<Ctx>, conn: ConnectionId, stream: Option<TcpStream>) {
    let ok = stream.is_some();
    let mut core = ctx.core.borrow_mut();
    let Some(t) = core.connect_result(Instant::now(), conn, ok) else {
        drop(core);
        ctx.peer_conns.borrow_mut().remove(&conn);
        return;
    };
    ctx.transmit(t);
    drop(core);
    let mut conns = ctx.peer_conns.borrow_mut();
    match (stream, conns.get_mut(&conn)) {
        (Some(s), Some(c)) => {
            c.stream = Some(s);
            c.connecting = None;
        }
        _ => {
            conns.remove(&conn);
        }
    }
}

async fn connect_from(relay: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if relay.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(relay)?;
    let stream = s.connect(peer).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A bound data connection: `rest` (what followed the ConnectionBind) goes to the peer,
/// then bytes flow as they are both ways until either side closes or the allocation ends.
pub(super) async fn pipe<S: ClientIo>(
    ctx: Rc<Ctx>,
    conn: ConnectionId,
    mut client: S,
    rest: Vec<u8>,
) {
    let taken = ctx
        .peer_conns
        .borrow_mut()
        .get_mut(&conn)
        .and_then(|c| Some((c.stream.take()?, c.close.clone())));
    let Some((mut peer, close)) = taken else {
        ctx.core.borrow_mut().connection_closed(conn);
        return;
    };
    if !ctx.tcp_charge(2 * PIPE_BUFFER) {
        ctx.metrics.drop("tcp_buffer_limit");
        ctx.peer_conns.borrow_mut().remove(&conn);
        ctx.core.borrow_mut().connection_closed(conn);
        return;
    }
    ctx.metrics.all.tcp_data_connections.inc();
    let pace = Pace::new(&ctx, conn);
    let mut peer = Paced {
        inner: &mut peer,
        pace: &pace,
        counted: Some(&ctx.metrics),
    };
    let mut client = Paced {
        inner: &mut client,
        pace: &pace,
        counted: None,
    };
    let relayed = async {
        if !rest.is_empty() {
            pace.charge(rest.len());
            peer.write_all(&rest).await?;
        }
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut peer, PIPE_BUFFER, PIPE_BUFFER)
            .await
    };
    let outcome = tokio::select! {
        r = relayed => Some(r),
        _ = close.notified() => None,
    };
    match outcome {
        Some(Ok(_)) => debug!(conn = conn.0, "data connection ended"),
        Some(Err(e)) => debug!(conn = conn.0, error = %e, "data connection failed"),
        None => debug!(conn = conn.0, "data connection closed with its allocation"),
    }
    ctx.metrics.all.tcp_data_connections.dec();
    ctx.tcp_release(2 * PIPE_BUFFER);
    ctx.peer_conns.borrow_mut().remove(&conn);
    ctx.core.borrow_mut().connection_closed(conn);
}

/// The bandwidth cap of one pipe, both directions together: what either side read is
/// charged to the allocation (`Server::connection_carried`); while it is over, neither side
/// is read, so the kernel's windows fill and TCP slows both senders down.
struct Pace<'a> {
    ctx: &'a Ctx,
    conn: ConnectionId,
    /// Set while over the cap: reading resumes when it fires.
    until: RefCell<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl<'a> Pace<'a> {
    fn new(ctx: &'a Ctx, conn: ConnectionId) -> Self {
        Pace {
            ctx,
            conn,
            until: RefCell::new(None),
        }
    }

    fn charge(&self, n: usize) {
        let now = Instant::now();
        let wait = self
            .ctx
            .core
            .borrow_mut()
            .connection_carried(self.conn, n, now);
        if !wait.is_zero() {
            self.ctx.metrics.all.tcp_bandwidth_waits.inc();
            *self.until.borrow_mut() =
                Some(Box::pin(tokio::time::sleep_until((now + wait).into())));
        }
    }

    /// Ready once the pipe may read again.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut until = self.until.borrow_mut();
        if let Some(s) = until.as_mut() {
            std::task::ready!(s.as_mut().poll(cx));
            *until = None;
        }
        Poll::Ready(())
    }
}

/// One side of a pipe under its [`Pace`]: reads wait while the allocation is over its cap.
/// The peer side also counts what it carries as it goes (reads: to the client; writes: to
/// the peer), so a pipe cut short is counted too.
struct Paced<'a, T> {
    inner: T,
    pace: &'a Pace<'a>,
    counted: Option<&'a crate::metrics::ShardMetrics>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.pace.poll_ready(cx));
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.pace.charge(n);
            if let Some(m) = self.counted {
                m.relayed(Direction::ToClient, n);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(m)) = (&r, self.counted) {
            m.relayed(Direction::ToPeer, *n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
