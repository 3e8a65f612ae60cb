//! A server-side TLS connection driven with non-blocking reads and writes from `&self`,
//! like a tokio `TcpStream`: the WebSocket writer and the relay's TCP path write from
//! whichever task delivers a message, and read into a shared buffer, so they need
//! `try_read`/`try_write` and readiness rather than tokio-rustls's owned `AsyncRead`.
//! It also implements `AsyncRead`/`AsyncWrite`, for hyper.
//!
//! rustls keeps what it could not write yet (bounded by [`OUTPUT_LIMIT`]);
//! [`TlsConn::backlogged`] says so, and [`TlsConn::writable`] waits until it is written,
//! so a writer that sees a backlog waits exactly as it would for a full socket.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TLS output (records not yet taken by the kernel) one connection may hold; past it
/// writes see `WouldBlock`, as with a full socket buffer.
pub const OUTPUT_LIMIT: usize = 256 * 1024;

struct State {
    conn: ServerConnection,
    /// Plaintext read but given back (the first bytes, looked at to tell STUN from HTTP).
    unread: Vec<u8>,
    /// Plaintext rustls holds, decrypted and not read yet.
    plain: usize,
    /// The TCP stream reached end of file.
    eof: bool,
}

/// A TLS connection after its handshake; see the module docs.
pub struct TlsConn {
    tcp: TcpStream,
    state: Mutex<State>,
}

/// A [`TlsConn`] taken off its runtime (`TlsConn::into_parts`), to be carried to another
/// thread's runtime and rebuilt there with [`TlsConn::from_parts`].
pub struct TlsParts {
    tcp: std::net::TcpStream,
    conn: ServerConnection,
    unread: Vec<u8>,
}

impl std::fmt::Debug for TlsParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParts").field("tcp", &self.tcp).finish()
    }
}

/// `io::Read` over a non-blocking tokio socket (for `read_tls`).
struct ReadNow<'a>(&'a TcpStream);
impl Read for ReadNow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}
/// `io::Write` over a non-blocking tokio socket (for `write_tls`).
struct WriteNow<'a>(&'a TcpStream);
impl Write for WriteNow<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// Wraps a connection whose handshake is done (`tokio_rustls::server::TlsStream::into_inner`).
    pub fn new(tcp: TcpStream, mut conn: ServerConnection) -> io::Result<TlsConn> {
        conn.set_buffer_limit(Some(OUTPUT_LIMIT));
        let plain = conn
            .process_new_packets()
            .map_err(tls_error)?
            .plaintext_bytes_to_read();
        Ok(TlsConn {
            tcp,
            state: Mutex::new(State {
                conn,
                unread: Vec::new(),
                plain,
                eof: false,
            }),
        })
    }

    /// Rebuilds a connection carried over from another runtime; needs a tokio runtime.
    pub fn from_parts(p: TlsParts) -> io::Result<TlsConn> {
        p.tcp.set_nonblocking(true)?;
        let c = TlsConn::new(TcpStream::from_std(p.tcp)?, p.conn)?;
        c.lock().unread = p.unread;
        Ok(c)
    }

    /// Takes the connection off this runtime (see [`TlsParts`]).
    pub fn into_parts(self) -> io::Result<TlsParts> {
        let st = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(TlsParts {
            tcp: self.tcp.into_std()?,
            conn: st.conn,
            unread: st.unread,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// The address the client connected to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The first plaintext byte, waiting up to `within` for it; it stays to be read.
    /// `None`: the client closed, failed or said nothing in time.
    pub async fn peek_first(&self, within: std::time::Duration) -> Option<u8> {
        let wait = async {
            loop {
                self.readable().await.ok()?;
                let mut b = [0u8; 512];
                match self.try_read(&mut b) {
                    Ok(0) => return None,
                    Ok(n) => {
                        let mut st = self.lock();
                        let mut v = b[..n].to_vec();
                        v.append(&mut st.unread);
                        st.unread = v;
                        return Some(b[0]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return None,
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }

    /// Writes what rustls holds, as far as the socket takes it.
    fn write_tls(&self, st: &mut State) -> io::Result<()> {
        while st.conn.wants_write() {
            st.conn.write_tls(&mut WriteNow(&self.tcp))?;
        }
        Ok(())
    }

    /// `read(2)` without waiting: decrypted bytes, `Ok(0)` at the end, `WouldBlock` when
    /// nothing is there yet.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.lock();
        if !st.unread.is_empty() {
            let n = st.unread.len().min(buf.len());
            buf[..n].copy_from_slice(&st.unread[..n]);
            st.unread.drain(..n);
            return Ok(n);
        }
        loop {
            match st.conn.reader().read(buf) {
                Ok(n) => {
                    st.plain = st.plain.saturating_sub(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if st.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if st.conn.read_tls(&mut ReadNow(&self.tcp))? == 0 {
                st.eof = true;
            }
            match st.conn.process_new_packets() {
                Ok(s) => st.plain = s.plaintext_bytes_to_read(),
                Err(e) => {
                    // Tell the client why (the alert rustls queued), then fail.
                    let _ = self.write_tls(&mut st);
                    return Err(tls_error(e));
                }
            }
            // Handshake messages after the handshake (key updates) want an answer.
            match self.write_tls(&mut st) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// `write(2)` without waiting: takes what fits in rustls's buffer once the earlier
    /// output has gone out; `WouldBlock` otherwise. Whatever the socket does not take
    /// stays with rustls: see [`TlsConn::backlogged`].
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(buf)])
    }

    /// `writev(2)` without waiting; see [`TlsConn::try_write`].
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut st = self.lock();
        self.write_tls(&mut st)?;
        let n = st.conn.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.write_tls(&mut st) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    /// Output was taken but is not written yet: wait with [`TlsConn::writable`].
    pub fn backlogged(&self) -> bool {
        self.lock().conn.wants_write()
    }

    /// Waits until a read may succeed (decrypted bytes are already there, or the socket
    /// has some).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// [`Self::readable`] as a poll: only one task may poll it at a time (the TCP
    /// stream keeps one read waker).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let st = self.lock();
            if !st.unread.is_empty() || st.plain > 0 || st.eof {
                return Poll::Ready(Ok(()));
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Does nothing: a short read of plaintext does not mean the socket is drained (rustls
    /// takes the kernel's bytes a record buffer at a time), so the read readiness is left
    /// for the next `try_read` to clear when the socket really says `WouldBlock`.
    pub fn clear_readable(&self) {}

    /// Writes the backlog, waiting for the socket; then a write may succeed.
    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_tls(cx)).await
    }

    /// [`Self::writable`] as a poll (one task at a time, as for reads).
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_tls(cx)
    }

    /// close_notify, then FIN.
    pub fn shutdown_write(&self) {
        let mut st = self.lock();
        st.conn.send_close_notify();
        let _ = self.write_tls(&mut st);
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }

    fn poll_flush_tls(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut st = self.lock();
                match self.write_tls(&mut st) {
                    Ok(()) => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A peer that closes without close_notify: an end like any other here
                // (HTTP has its own framing).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut st = self.lock();
            st.conn.send_close_notify();
        }
        ready!(self.poll_flush_tls(cx))?;
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
