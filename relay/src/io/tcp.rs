//! TURN over TCP (RFC 8656 §3.1): STUN messages and padded ChannelData framed on a stream.
//!
//! What a hostile client can hold here is bounded: a connection reads into the shard's
//! one receive buffer and keeps only an unfinished frame of its own, at most
//! `max-tcp-frame` bytes; that frame must arrive whole within [`FRAME_DEADLINE`]; output
//! waiting for a slow reader is capped per connection ([`OUTPUT_BYTES`]); and all of it,
//! over every connection of the shard, counts against the shard's part of
//! `tcp-buffer-limit`. A connection without an allocation that completes no message for
//! [`IDLE_WITHOUT_ALLOCATION`] is closed, and one whose allocation ends is closed with it.

use std::cell::Cell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::shard::Ctx;
use crate::codec::tcp_frame_len;
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

/// The driver's handle on one client connection.
pub(super) struct TcpClient {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes in `tx` not written yet (counted in the shard's budget too).
    queued: Rc<Cell<usize>>,
    /// Woken when the connection must close (its allocation ended).
    close: Rc<Notify>,
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

pub(super) async fn accept_loop(ctx: Rc<Ctx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if ctx.tcp.borrow().len() >= ctx.max_tcp {
                    ctx.metrics.drop("tcp_connection_limit");
                    continue;
                }
                let local = match stream.local_addr() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let ft = FiveTuple {
                    client: peer,
                    server: local,
                    transport: Transport::Tcp,
                };
                tokio::task::spawn_local(connection(ctx.clone(), stream, ft));
            }
            Err(e) => {
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a connection ends (the metric label, for those that are our decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Framing,
    FrameTooLarge,
    BufferLimit,
    FrameTimeout,
    Idle,
    AllocationEnded,
}

async fn connection(ctx: Rc<Ctx>, stream: TcpStream, ft: FiveTuple) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Rc::new(Cell::new(0));
    let close = Rc::new(Notify::new());
    ctx.tcp.borrow_mut().insert(
        ft.client,
        TcpClient {
            tx,
            queued: queued.clone(),
            close: close.clone(),
        },
    );
    ctx.metrics.all.tcp_connections.inc();
    let wctx = ctx.clone();
    let wqueued = queued.clone();
    let writer = tokio::task::spawn_local(async move {
        while let Some(b) = rx.recv().await {
            let ok = wr.write_all(&b).await.is_ok();
            wqueued.set(wqueued.get() - b.len());
            wctx.tcp_release(b.len());
            if !ok {
                break;
            }
        }
        let _ = wr.shutdown().await;
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
        let (until, why) = deadline.unwrap_or((last_message + FRAME_DEADLINE, End::Idle));
        tokio::select! {
            r = rd.readable() => if r.is_err() { break End::Closed },
            _ = close.notified() => break End::AllocationEnded,
            _ = tokio::time::sleep_until(until), if deadline.is_some() => break why,
        }
        // Read what is there into the shard's buffer, behind the unfinished frame.
        let mut buf = ctx.buf.borrow_mut();
        let held = partial.len();
        buf[..held].copy_from_slice(&partial);
        let n = match rd.try_read(&mut buf[held..]) {
            Ok(0) => break End::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                continue
            }
            Err(_) => break End::Closed,
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
                    at += len;
                    last_message = Instant::now();
                    frame_started = None;
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
    match end {
        End::Closed | End::AllocationEnded => {}
        End::Framing => ctx.metrics.drop("tcp_framing"),
        End::FrameTooLarge => ctx.metrics.drop("tcp_frame_too_large"),
        End::BufferLimit => ctx.metrics.drop("tcp_buffer_limit"),
        End::FrameTimeout => ctx.metrics.drop("tcp_frame_timeout"),
        End::Idle => ctx.metrics.drop("tcp_idle"),
    }
    debug!(client = %ft.client, ?end, "TCP connection ends");
    // Dropping our sender lets the writer finish what is queued (a Refresh answer before
    // the close, say), then shut the stream down.
    ctx.tcp.borrow_mut().remove(&ft.client);
    ctx.core
        .borrow_mut()
        .close_client(&ft, &mut super::shard::Binder(&ctx));
    ctx.metrics.all.tcp_connections.dec();
    let mut writer = writer;
    if tokio::time::timeout(DRAIN, &mut writer).await.is_err() {
        writer.abort();
        ctx.tcp_release(queued.get());
    }
}
