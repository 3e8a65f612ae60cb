//! A WebSocket connection's socket, shared between the task that owns it (reads, pings,
//! closes) and whoever delivers a message to its peer (writes).
//!
//! A message is written by the delivering task directly, with one `writev` (frame header
//! and the message, no copy), when nothing is queued before it. Only what the kernel does
//! not take is kept in `pending`, and the owner is woken to write it when the socket is
//! writable again. So a forwarded signal costs one read on the sender's socket and one
//! write on the recipient's, with no hand-over between tasks, and an idle connection holds
//! no buffer at all.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use futures_util::task::AtomicWaker;
use icebreaker_service::tls::TlsConn;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use crate::room::{Delivery, Detach, Hold, Outbox, Pushed};
use crate::ws::frame::{self, Opcode};
use crate::ws::CloseCode;

struct Out {
    /// Bytes not written yet, in order: deferred to the end of a batch, or refused by
    /// the kernel (`blocked`).
    pending: Vec<u8>,
    /// Messages in `pending` (counted until it is drained).
    pending_msgs: usize,
    /// The kernel refused part of `pending`: the owner writes it when the socket drains.
    blocked: bool,
    /// `pending` holds messages deferred by a batch, written by [`Outbox::flush`].
    deferred: bool,
    /// The last sequenced message written or queued: a ping sent now is answered only
    /// after the client has read it.
    last_seq: u64,
    closing: Option<Detach>,
    /// The close frame is written or queued: nothing may follow it.
    close_sent: bool,
    /// A write failed: the connection is gone.
    broken: bool,
}

/// What the writer needs from a stream: non-blocking reads and writes plus readiness.
/// A client's TCP connection in the server; one end of a Unix socket pair in the session
/// tests, which run whole connections in-process without a port.
pub trait Stream: Send + Sync + 'static {
    /// `write(2)` without waiting.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// `writev(2)` without waiting.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `read(2)` without waiting.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Forgets the read readiness seen so far (the last read drained the kernel's queue).
    fn clear_readable(&self);
    /// Ready when a read may succeed. Polled by the connection's own task only (the
    /// stream keeps one waker per direction): no waiter node lives in that task's future.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ready when a write may succeed; the same one-task rule.
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Sends FIN.
    fn shutdown_write(&self);
    /// Output was taken but is not on the wire yet (TLS records rustls holds): the
    /// connection is blocked until [`Stream::writable`] has written it.
    fn backlogged(&self) -> bool {
        false
    }
}

macro_rules! tokio_stream {
    ($t:ty) => {
        impl Stream for $t {
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn clear_readable(&self) {
                let _ = self.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                });
            }
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }
            fn shutdown_write(&self) {
                let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
            }
        }
    };
}
tokio_stream!(TcpStream);
tokio_stream!(UnixStream);

/// wss: a TLS connection, read and written without waiting like a TCP stream.
impl Stream for TlsConn {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TlsConn::try_write(self, buf)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TlsConn::try_write_vectored(self, bufs)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TlsConn::try_read(self, buf)
    }
    fn clear_readable(&self) {
        TlsConn::clear_readable(self)
    }
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TlsConn::poll_read_ready(self, cx)
    }
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TlsConn::poll_write_ready(self, cx)
    }
    fn shutdown_write(&self) {
        TlsConn::shutdown_write(self)
    }
    fn backlogged(&self) -> bool {
        TlsConn::backlogged(self)
    }
}

/// A WebSocket connection's socket and its unwritten output; the [`Outbox`] of the peer it
/// carries.
pub struct WsSocket<S = TcpStream> {
    io: S,
    out: Mutex<Out>,
    /// Wakes the owner: output is blocked, or the connection should close. A flag and a
    /// waker rather than a `Notify`, whose `notified()` future would sit in every idle
    /// connection's task.
    woken: AtomicBool,
    owner: AtomicWaker,
    max_pending_msgs: usize,
    max_pending_bytes: usize,
    /// The client's per-IP slot, handed to the peer it joins (see [`Outbox::hold`]).
    hold: Option<Hold>,
}

/// `pending` keeps at most this much capacity once drained (a busy connection reuses
/// it); [`WsSocket::trim`] frees it when the connection goes quiet.
const KEEP_CAPACITY: usize = 64 * 1024;

impl<S: Stream> WsSocket<S> {
    /// Wraps `stream`; more than `max_pending_msgs` messages or `max_pending_bytes` bytes
    /// waiting unwritten cut the connection off as too slow.
    pub fn new(
        stream: S,
        max_pending_msgs: usize,
        max_pending_bytes: usize,
        hold: Option<Hold>,
    ) -> Self {
        WsSocket {
            io: stream,
            out: Mutex::new(Out {
                pending: Vec::new(),
                pending_msgs: 0,
                blocked: false,
                deferred: false,
                last_seq: 0,
                closing: None,
                close_sent: false,
                broken: false,
            }),
            woken: AtomicBool::new(false),
            owner: AtomicWaker::new(),
            max_pending_msgs,
            max_pending_bytes,
            hold,
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes as much of `pending` as the kernel takes. Whatever it refuses makes the
    /// socket `blocked`, and the owner is woken to finish when it drains.
    fn write_out(&self, out: &mut Out) -> Pushed {
        out.deferred = false;
        while !out.pending.is_empty() {
            match self.io.try_write(&out.pending) {
                Ok(0) => return self.broke(out),
                Ok(n) => {
                    out.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !out.blocked {
                        out.blocked = true;
                        self.wake_owner();
                    }
                    return Pushed::Ok;
                }
                Err(_) => return self.broke(out),
            }
        }
        self.drained(out);
        self.blocked_if_backlogged(out);
        Pushed::Ok
    }

    /// TLS keeps what the kernel refused inside rustls: the owner must write it.
    fn blocked_if_backlogged(&self, out: &mut Out) {
        if !out.blocked && self.io.backlogged() {
            out.blocked = true;
            self.wake_owner();
        }
    }

    fn drained(&self, out: &mut Out) {
        out.blocked = false;
        out.pending_msgs = 0;
        if out.pending.capacity() > KEEP_CAPACITY {
            out.pending = Vec::new();
        }
    }

    fn broke(&self, out: &mut Out) -> Pushed {
        out.broken = true;
        out.pending = Vec::new();
        self.wake_owner();
        Pushed::Gone
    }

    /// Writes one frame now (one `writev`, header and payload, no copy) when nothing is
    /// pending; otherwise queues it behind what is. `defer`: queue it even so, for a batch
    /// that writes each connection once at its end.
    fn write_frame(
        &self,
        out: &mut Out,
        opcode: Opcode,
        payload: &[u8],
        bounded: bool,
        defer: bool,
    ) -> Pushed {
        if out.broken || out.close_sent {
            return Pushed::Gone;
        }
        let mut h = [0u8; 10];
        let hl = frame::header(opcode, payload.len(), &mut h);
        let total = hl + payload.len();
        if out.pending.is_empty() && !defer {
            let written = loop {
                let bufs = [IoSlice::new(&h[..hl]), IoSlice::new(payload)];
                match self.io.try_write_vectored(&bufs) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                    Err(_) => return self.broke(out),
                }
            };
            if written == total {
                self.blocked_if_backlogged(out);
                return Pushed::Ok;
            }
            if written < hl {
                out.pending.extend_from_slice(&h[written..hl]);
                out.pending.extend_from_slice(payload);
            } else {
                out.pending.extend_from_slice(&payload[written - hl..]);
            }
            out.pending_msgs = 1;
            out.blocked = true;
            self.wake_owner();
            return Pushed::Ok;
        }
        if bounded
            && out.blocked
            && (out.pending_msgs >= self.max_pending_msgs
                || out.pending.len() + total > self.max_pending_bytes)
        {
            out.closing = Some(Detach::TooSlow);
            self.wake_owner();
            return Pushed::TooSlow;
        }
        out.pending.extend_from_slice(&h[..hl]);
        out.pending.extend_from_slice(payload);
        out.pending_msgs += 1;
        if !out.blocked {
            if defer || out.deferred {
                // Written by whoever flushes (the bus, once it has released its lock).
                out.deferred = true;
            } else {
                return self.write_out(out);
            }
        }
        Pushed::Ok
    }

    /// A message outside the peer's sequence (before joining: errors, pongs). Bounded
    /// like everything else: a client that sends and never reads is cut off.
    pub fn send_unsequenced(&self, json: &[u8]) -> Pushed {
        let mut out = self.out();
        self.write_frame(&mut out, Opcode::Text, json, true, false)
    }

    /// Frees the output buffer of a connection with nothing pending (called when it is
    /// quiet, so an idle connection holds no buffer).
    pub fn trim(&self) {
        let mut out = self.out();
        if out.pending.is_empty() && out.pending.capacity() > 0 {
            out.pending = Vec::new();
        }
    }

    /// A ping whose payload names the last sequenced message before it: its pong
    /// acknowledges everything up to there (heartbeats, and [`Outbox::request_ack`]).
    pub fn ping(&self, defer: bool) -> Pushed {
        let mut out = self.out();
        let seq = out.last_seq;
        self.write_frame(&mut out, Opcode::Ping, &seq.to_be_bytes(), true, defer)
    }

    /// The answer to a client's ping; bounded, so pings from a client that does not read
    /// cannot pile up pongs.
    pub fn pong(&self, payload: &[u8]) -> Pushed {
        let mut out = self.out();
        self.write_frame(&mut out, Opcode::Pong, payload, true, false)
    }

    /// Queues a close frame; nothing is written after it. Not bounded: it is the last
    /// frame, at most 125 bytes.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut out = self.out();
        let p = frame::close_payload(code.as_u16(), reason);
        self.write_frame(&mut out, Opcode::Close, &p, false, false);
        out.close_sent = true;
    }

    /// (output blocked?, closing reason, broken?)
    pub fn status(&self) -> (bool, Option<Detach>, bool) {
        let o = self.out();
        (o.blocked, o.closing, o.broken)
    }

    /// Tells the owner (the connection's task): output is blocked, or the connection
    /// should close. Not lost when the owner is busy: it sees the flag on its next poll.
    fn wake_owner(&self) {
        self.woken.store(true, Ordering::Release);
        self.owner.wake();
    }

    /// Ready once [`Self::wake_owner`] was called since the last time it was.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.owner.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Ready when the stream may be read (the connection's own task only).
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    /// Waits until the stream may be read.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// Reads what is there into `buf`; `Ok(None)`: nothing after all (wait again).
    /// A short read means the kernel's queue is empty: readiness is cleared without the
    /// extra `read` that would only return `EAGAIN` (epoll is edge-triggered, and the
    /// clearing only applies to the readiness this read saw, so new data wakes us again).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.io.try_read(buf) {
            Ok(n) => {
                if n > 0 && n < buf.len() {
                    self.io.clear_readable();
                }
                Ok(Some(n))
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes everything pending, waiting for the socket to drain as needed.
    pub async fn flush(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// [`Self::flush`] as a poll (the connection's own task only).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_write_ready(cx))?;
            let mut out = self.out();
            if self.write_out(&mut out) == Pushed::Gone {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if out.pending.is_empty() && !out.blocked {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Ends the connection: no more writes from anyone, FIN to the client.
    pub fn shutdown_write(&self) {
        let mut out = self.out();
        out.broken = true;
        out.pending = Vec::new();
        self.io.shutdown_write();
    }
}

impl<S: Stream> Outbox for WsSocket<S> {
    fn push(&self, seq: u64, json: &bytes::Bytes, delivery: Delivery) -> Pushed {
        let mut out = self.out();
        let bounded = delivery == Delivery::Live;
        let r = self.write_frame(&mut out, Opcode::Text, json, bounded, true);
        if r == Pushed::Ok {
            out.last_seq = seq;
        }
        r
    }

    fn request_ack(&self) {
        self.ping(true);
    }

    fn flush(&self) {
        let mut out = self.out();
        if out.deferred && !out.blocked {
            self.write_out(&mut out);
        }
    }

    fn detach(&self, why: Detach) {
        self.out().closing.get_or_insert(why);
        self.wake_owner();
    }

    fn hold(&self) -> Option<Hold> {
        self.hold.clone()
    }
}
