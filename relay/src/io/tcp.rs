//! TURN over TCP (RFC 8656 §3.1): STUN messages and padded ChannelData framed on a stream.

use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::shard::{Binder, Ctx, TCP_QUEUE};
use crate::codec::tcp_frame_len;
use crate::{FiveTuple, Transport};

/// A connection that sends nothing for this long without holding an allocation is
/// closed, so idle sockets cannot pile up.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);

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

async fn connection(ctx: Rc<Ctx>, stream: TcpStream, ft: FiveTuple) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
    ctx.tcp.borrow_mut().insert(ft.client, tx);
    ctx.metrics.all.tcp_connections.inc();
    let writer = tokio::task::spawn_local(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::new();
    'conn: loop {
        let has_allocation = ctx.core.borrow().allocation(&ft).is_some();
        let read = if has_allocation {
            rd.read_buf(&mut buf).await
        } else {
            match tokio::time::timeout(IDLE_WITHOUT_ALLOCATION, rd.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match tcp_frame_len(&buf) {
                None => {
                    debug!(client = %ft.client, "garbage on TCP stream, closing it");
                    ctx.metrics.drop("tcp_framing");
                    break 'conn;
                }
                Some(None) => break,
                Some(Some(n)) if buf.len() < n => {
                    buf.reserve(n - buf.len());
                    break;
                }
                Some(Some(n)) => {
                    ctx.client_packet(ft, &buf[..n]);
                    buf.drain(..n);
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 4096 {
            buf = Vec::new();
        }
    }
    ctx.tcp.borrow_mut().remove(&ft.client);
    ctx.core.borrow_mut().close_client(&ft, &mut Binder(&ctx));
    ctx.metrics.all.tcp_connections.dec();
    writer.abort();
}
