//! TURN over TCP and over TLS (RFC 8656 §3.1): STUN messages and padded ChannelData framed
//! on a stream. TLS connections are the same after their handshake (rustls, driven by
//! [`TlsConn`] so that they read into the shard's buffer like plain ones).
//!
//! What a hostile client can hold here is bounded: a connection reads into the shard's
//! one receive buffer and keeps only an unfinished frame of its own, at most
//! `max-tcp-frame` bytes; that frame must arrive whole within [`FRAME_DEADLINE`]; output
//! waiting for a slow reader is capped per connection ([`OUTPUT_BYTES`]); and all of it,
//! over every connection of the shard, counts against the shard's part of
//! `tcp-buffer-limit`. A connection without an allocation that completes no message for
//! [`IDLE_WITHOUT_ALLOCATION`] is closed, and one whose allocation ends is closed with it.

use std::cell::Cell;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use icebreaker_service::proxy;
use icebreaker_service::tls::{self, TlsConn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::shard::Ctx;
use super::{Adopt, Moved};
use crate::codec::tcp_frame_len;
use crate::server::ConnectionId;
use crate::{FiveTuple, Transport};

/// A connection that completes no message for this long without holding an allocation
/// is closed, so idle sockets cannot pile up.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);
/// A frame that has begun must be complete within this: a byte now and then does not
/// keep a connection (and its buffer) alive.
pub(super) const FRAME_DEADLINE: Duration = Duration::from_secs(10);
/// Output queued towards one client that does not read; beyond it packets are dropped.
pub(super) const OUTPUT_BYTES: usize = 256 * 1024;
/// How long a closing connection may take to write what is queued.
const DRAIN: Duration = Duration::from_secs(2);

/// The key of a client connection in the shard's table: client and server address (a
/// client may use one source port towards both the TCP and the TLS port).
pub(super) type ConnKey = (std::net::SocketAddr, std::net::SocketAddr);

/// What a client connection is carried on: a TCP stream, or TLS over one. Both read
/// without waiting into the shard's buffer and are written by the connection's writer.
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + '_;
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + '_;
    /// Output taken but not written yet (TLS records rustls holds).
    fn backlogged(&self) -> bool;
    fn shutdown(&self);
    /// Out of this shard's runtime, to be adopted by another shard's.
    fn into_moved(self) -> std::io::Result<Moved>;
}

impl ClientIo for TcpStream {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        TcpStream::readable(self)
    }
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        TcpStream::writable(self)
    }
    fn backlogged(&self) -> bool {
        false
    }
    fn shutdown(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
    }
    fn into_moved(self) -> std::io::Result<Moved> {
        Ok(Moved::Tcp(self.into_std()?))
    }
}

impl ClientIo for TlsConn {
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        TlsConn::try_read(self, buf)
    }
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        TlsConn::readable(self)
    }
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        TlsConn::try_write(self, buf)
    }
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        TlsConn::writable(self)
    }
    fn backlogged(&self) -> bool {
        TlsConn::backlogged(self)
    }
    fn shutdown(&self) {
        self.shutdown_write()
    }
    fn into_moved(self) -> std::io::Result<Moved> {
        Ok(Moved::Tls(Box::new(self.into_parts()?)))
    }
}

/// The driver's handle on one client connection.
pub(super) struct TcpClient {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes in `tx` not written yet (counted in the shard's budget too).
    queued: Rc<Cell<usize>>,
    /// Woken when the connection must close (its allocation ended).
    close: Rc<Notify>,
    /// Set by a ConnectionBind (RFC 6062): from its answer on, the connection carries the
    /// bytes of this peer data connection.
    pub(super) bound: Rc<Cell<Option<ConnectionId>>>,
    /// Set by a ConnectionBind for a connection another shard holds: move there.
    pub(super) moved: Rc<Cell<Option<usize>>>,
}

impl TcpClient {
    /// Queues `data`; false when the connection's or the shard's output budget is full.
    pub(super) fn send(&self, ctx: &Ctx, data: &[u8]) -> bool {
        let q = self.queued.get();
        if q + data.len() > OUTPUT_BYTES || !ctx.tcp_charge(data.len()) {
            return false;
        }
        self.queued.set(q + data.len());
        if self.tx.send(data.to_vec()).is_err() {
            self.queued.set(q);
            ctx.tcp_release(data.len());
            return false;
        }
        true
    }

    pub(super) fn close(&self) {
        self.close.notify_one();
    }
}

/// Whether the shard may take one more client connection (handshakes in progress and
/// DTLS associations count).
fn room_for_one(ctx: &Ctx) -> bool {
    let dtls: usize = ctx.dtls.iter().map(|d| d.associations()).sum();
    if ctx.tcp.borrow().len() + ctx.handshaking.get() + dtls >= ctx.max_tcp {
        ctx.metrics.drop("tcp_connection_limit");
        return false;
    }
    true
}

/// Accepts client connections on `listener`: plain TURN over TCP, or with `tls` TURN over
/// TLS (the handshake bounded by [`tls::HANDSHAKE_TIMEOUT`] and counted).
pub(super) async fn accept_loop(
    ctx: Rc<Ctx>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if !room_for_one(&ctx) {
                    continue;
                }
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let tls = tls.clone();
                if proxy::is_trusted(&ctx.proxy_from.load(), peer.ip()) {
                    // A load balancer's connection: the client is in its PROXY header. The
                    // read counts as a handshake (against the connection limit, bounded).
                    tokio::task::spawn_local(async move {
                        let mut stream = stream;
                        ctx.handshaking.set(ctx.handshaking.get() + 1);
                        let client =
                            proxy::client_of(&mut stream, peer, tls::HANDSHAKE_TIMEOUT, |r| {
                                ctx.metrics.all.proxy_header(r)
                            })
                            .await;
                        ctx.handshaking.set(ctx.handshaking.get() - 1);
                        let Some(client) = client else { return };
                        serve_accepted(ctx, stream, client, local, tls).await
                    });
                } else {
                    tokio::task::spawn_local(serve_accepted(ctx, stream, peer, local, tls));
                }
            }
            Err(e) => {
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An accepted connection from `client` (the socket's peer, or the client a trusted load
/// balancer named): plain TURN, or TURN over TLS after the handshake (bounded and counted).
async fn serve_accepted(
    ctx: Rc<Ctx>,
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let ft = FiveTuple {
        client,
        server: local,
        transport: Transport::Tcp,
    };
    match tls {
        None => connection(ctx, Rc::new(stream), ft, Vec::new()).await,
        Some(cfg) => {
            ctx.handshaking.set(ctx.handshaking.get() + 1);
            let r = tls::accept(cfg, stream).await;
            ctx.handshaking.set(ctx.handshaking.get() - 1);
            match r {
                Ok(c) => {
                    ctx.metrics.all.tls_handshake("ok");
                    connection(ctx, Rc::new(c), ft, Vec::new()).await
                }
                Err(why) => ctx.metrics.all.tls_handshake(why.as_str()),
            }
        }
    }
}

/// Connections handed over: TURN over TLS from another listener (`icebreaker`'s one TLS
/// port, which tells STUN from HTTP after the handshake), and RFC 6062 data connections
/// from another shard, their ConnectionBind in `prefix`.
pub(super) async fn handed_over(ctx: Rc<Ctx>, mut rx: mpsc::Receiver<Adopt>) {
    while let Some(Adopt {
        conn,
        prefix,
        client: named,
    }) = rx.recv().await
    {
        if !room_for_one(&ctx) {
            continue;
        }
        let ft = |client, server| FiveTuple {
            client,
            server,
            transport: Transport::Tcp,
        };
        match conn {
            Moved::Tls(p) => {
                let conn = match TlsConn::from_parts(*p) {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "cannot adopt a TLS connection");
                        continue;
                    }
                };
                let (Ok(client), Ok(server)) = (conn.peer_addr(), conn.local_addr()) else {
                    continue;
                };
                let ft = ft(named.unwrap_or(client), server);
                tokio::task::spawn_local(connection(ctx.clone(), Rc::new(conn), ft, prefix));
            }
            Moved::Tcp(s) => {
                let conn = match s
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(s))
                {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "cannot adopt a TCP connection");
                        continue;
                    }
                };
                let (Ok(client), Ok(server)) = (conn.peer_addr(), conn.local_addr()) else {
                    continue;
                };
                let ft = ft(named.unwrap_or(client), server);
                tokio::task::spawn_local(connection(ctx.clone(), Rc::new(conn), ft, prefix));
            }
        }
    }
}

/// Writes all of `b`, waiting for the stream as needed.
async fn write_all<S: ClientIo>(io: &S, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        match io.try_write(b) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                io.writable().await?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a connection ends (the metric label, for those that are our decision).
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Closed,
    Framing,
    FrameTooLarge,
    BufferLimit,
    FrameTimeout,
    Idle,
    AllocationEnded,
    /// A ConnectionBind made it a data connection; the bytes after it go to the peer.
    Bound(ConnectionId, Vec<u8>),
    /// A ConnectionBind (first in the bytes) for another shard: the connection moves there.
    Moved(usize, Vec<u8>),
}

/// A client connection: STUN and ChannelData framed on the stream, until it closes or an
/// RFC 6062 ConnectionBind makes it a data connection. `prefix`: bytes read before (on
/// the shard that handed it here), handled first.
async fn connection<S: ClientIo>(ctx: Rc<Ctx>, io: Rc<S>, ft: FiveTuple, mut prefix: Vec<u8>) {
    let key = (ft.client, ft.server);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Rc::new(Cell::new(0));
    let close = Rc::new(Notify::new());
    let bound = Rc::new(Cell::new(None));
    let moved = Rc::new(Cell::new(None));
    // Set when the stream outlives this framing (bound or moved): the writer then flushes
    // what is queued without shutting the stream down.
    let keep_open = Rc::new(Cell::new(false));
    ctx.tcp.borrow_mut().insert(
        key,
        TcpClient {
            tx,
            queued: queued.clone(),
            close: close.clone(),
            bound: bound.clone(),
            moved: moved.clone(),
        },
    );
    ctx.metrics.all.tcp_connections.inc();
    let wctx = ctx.clone();
    let wqueued = queued.clone();
    let wio = io.clone();
    let wkeep = keep_open.clone();
    let writer = tokio::task::spawn_local(async move {
        while let Some(b) = rx.recv().await {
            let mut ok = write_all(&*wio, &b).await.is_ok();
            wqueued.set(wqueued.get() - b.len());
            wctx.tcp_release(b.len());
            // TLS: what rustls holds goes out before the writer sleeps.
            if ok && rx.is_empty() && wio.backlogged() {
                ok = wio.writable().await.is_ok();
            }
            if !ok {
                break;
            }
        }
        if wio.backlogged() {
            let _ = wio.writable().await;
        }
        if !wkeep.get() {
            wio.shutdown();
        }
    });

    let max_frame = ctx.max_tcp_frame;
    // The unfinished frame this connection holds (charged to the shard's budget).
    let mut partial: Vec<u8> = Vec::new();
    let mut frame_started: Option<Instant> = None;
    let mut last_message = Instant::now();
    let end = 'conn: loop {
        let deadline = match frame_started {
            Some(t) => Some((t + FRAME_DEADLINE, End::FrameTimeout)),
            None if ctx.core.borrow().allocation(&ft).is_none() => {
                Some((last_message + IDLE_WITHOUT_ALLOCATION, End::Idle))
            }
            None => None,
        };
        let waits = deadline.is_some();
        let (until, why) = deadline.unwrap_or((last_message + FRAME_DEADLINE, End::Idle));
        if prefix.is_empty() {
            tokio::select! {
                r = io.readable() => if r.is_err() { break End::Closed },
                _ = close.notified() => break End::AllocationEnded,
                _ = tokio::time::sleep_until(until), if waits => break why,
            }
        }
        // Read what is there into the shard's buffer, behind the unfinished frame.
        let mut buf = ctx.buf.borrow_mut();
        let held = partial.len();
        buf[..held].copy_from_slice(&partial);
        let n = if !prefix.is_empty() {
            // At most one read's worth, taken on another shard from an empty buffer.
            let p = std::mem::take(&mut prefix);
            if held + p.len() > buf.len() {
                break End::BufferLimit;
            }
            buf[held..held + p.len()].copy_from_slice(&p);
            p.len()
        } else {
            match io.try_read(&mut buf[held..]) {
                Ok(0) => break End::Closed,
                Ok(n) => n,
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    continue
                }
                Err(_) => break End::Closed,
            }
        };
        let data = &buf[..held + n];
        let mut at = 0;
        loop {
            let rest = &data[at..];
            match tcp_frame_len(rest) {
                None => break 'conn End::Framing,
                Some(Some(len)) if len > max_frame => break 'conn End::FrameTooLarge,
                Some(Some(len)) if rest.len() >= len => {
                    ctx.client_packet(ft, &rest[..len]);
                    if let Some(shard) = moved.get() {
                        break 'conn End::Moved(shard, rest.to_vec());
                    }
                    at += len;
                    last_message = Instant::now();
                    frame_started = None;
                    if let Some(conn) = bound.get() {
                        break 'conn End::Bound(conn, data[at..].to_vec());
                    }
                }
                _ => break,
            }
        }
        let rest = &data[at..];
        // A read brought new bytes (n > 0), so what is left always differs from before.
        ctx.tcp_release(partial.len());
        partial = Vec::new();
        if !rest.is_empty() {
            if !ctx.tcp_charge(rest.len()) {
                break End::BufferLimit;
            }
            partial.extend_from_slice(rest);
            frame_started.get_or_insert_with(Instant::now);
        }
    };
    ctx.tcp_release(partial.len());
    match &end {
        End::Closed | End::AllocationEnded | End::Bound(..) | End::Moved(..) => {}
        End::Framing => ctx.metrics.drop("tcp_framing"),
        End::FrameTooLarge => ctx.metrics.drop("tcp_frame_too_large"),
        End::BufferLimit => ctx.metrics.drop("tcp_buffer_limit"),
        End::FrameTimeout => ctx.metrics.drop("tcp_frame_timeout"),
        End::Idle => ctx.metrics.drop("tcp_idle"),
    }
    debug!(client = %ft.client, ?end, "TCP connection ends");
    // Dropping our sender lets the writer finish what is queued (a Refresh answer before
    // the close, say), then shut the stream down.
    ctx.tcp.borrow_mut().remove(&key);
    ctx.core
        .borrow_mut()
        .close_client(&ft, &mut super::shard::Binder(&ctx));
    ctx.metrics.all.tcp_connections.dec();
    let keep = matches!(end, End::Bound(..) | End::Moved(..));
    keep_open.set(keep);
    let mut writer = writer;
    if tokio::time::timeout(DRAIN, &mut writer).await.is_err() {
        writer.abort();
        ctx.tcp_release(queued.get());
        return;
    }
    if !keep {
        return;
    }
    // The writer is done, so this is the stream's last handle.
    let Ok(io) = Rc::try_unwrap(io) else {
        return;
    };
    match end {
        End::Bound(conn, rest) => super::tcp_relay::pipe(ctx, conn, io, rest).await,
        End::Moved(shard, bytes) => match io.into_moved() {
            Ok(m) => {
                if !ctx.handoff.to_shard(shard, m, bytes) {
                    ctx.metrics.drop("handoff_queue_full");
                }
            }
            Err(e) => debug!(error = %e, "cannot move a connection to its shard"),
        },
        _ => {}
    }
}
