//! Batched UDP syscalls: `recvmmsg` for what arrives, `sendmmsg` for what goes to clients,
//! and one epoll set for every relayed socket of a shard.
//!
//! Written on libc rather than taken from quinn-udp: quinn-udp's `UdpSocketState` turns
//! on IP_MTU_DISCOVER=PROBE (DF on every datagram) and GRO on the sockets it serves, which
//! would change what the relay does to its clients' and peers' packets, and its send path
//! batches only segments to one destination (GSO), while the replies a relay sends in one
//! batch go to as many clients as there were packets. mio/tokio register sockets
//! edge-triggered only, which costs one more `recv` per packet (the one that answers
//! EAGAIN); a level-triggered set of our own reports a socket again while it has data, so
//! each ready socket costs exactly one `recvmmsg`. The `polling` crate re-arms a timerfd on
//! every wait, two syscalls more per batch.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub(super) const BATCH: usize = 32;
/// Room for the largest UDP datagram: a slot never truncates what it receives. The slots
/// are calloc'ed, so only the pages packets touch become resident (one page each for
/// typical media packets).
const SLOT: usize = 65536;
/// What one send batch may hold in bytes before it is flushed: bounded whatever arrives.
const SEND_BYTES: usize = 2 * SLOT;

/// A `recvmmsg` batch: up to [`BATCH`] datagrams and their sources per syscall.
pub(super) struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    len: usize,
}

impl RecvBatch {
    pub(super) fn new() -> Self {
        // SAFETY (both `zeroed`): plain C structs, for which all-zero is a valid value.
        Self {
            bufs: vec![0u8; BATCH * SLOT],
            addrs: Box::new([unsafe { std::mem::zeroed() }; BATCH]),
            iovs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; BATCH],
            ),
            hdrs: Box::new([unsafe { std::mem::zeroed() }; BATCH]),
            len: 0,
        }
    }

    /// One non-blocking `recvmmsg` on `fd`: how many datagrams arrived (WouldBlock when
    /// none was waiting).
    pub(super) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.len = 0;
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside `bufs` (BATCH * SLOT bytes).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `self`, which `&mut self`
        // keeps in place for the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.len = rc as usize;
        Ok(self.len)
    }

    /// Datagram `i` of the last `recv` and where it came from (None for a source that is
    /// not an IP address, which a UDP socket never reports).
    pub(super) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.len {
            return None;
        }
        let h = &self.hdrs[i];
        // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into `addrs[i]`.
        let from = unsafe { SockAddr::new(self.addrs[i], h.msg_hdr.msg_namelen) }.as_socket()?;
        let n = (h.msg_len as usize).min(SLOT);
        Some((from, &self.bufs[i * SLOT..i * SLOT + n]))
    }
}

/// Datagrams gathered while a batch of input is handled: to clients (`K` = their address),
/// sent with one `sendmmsg`, each to its own destination; or between two allocations of a
/// shard (`K` = the receiving allocation), handed over at the end of the batch.
pub(super) struct SendBatch<K> {
    data: Vec<u8>,
    items: Vec<(usize, usize, K, Option<SocketAddr>)>,
}

impl<K> SendBatch<K> {
    pub(super) fn new() -> Self {
        Self {
            data: Vec::with_capacity(SEND_BYTES),
            items: Vec::with_capacity(BATCH),
        }
    }

    /// An empty batch that allocates only as datagrams join it (one handed between
    /// shards is a new one each time).
    pub(super) fn empty() -> Self {
        Self {
            data: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Whether `len` more bytes need a flush first.
    pub(super) fn is_full_for(&self, len: usize) -> bool {
        self.items.len() == BATCH || (!self.items.is_empty() && self.data.len() + len > SEND_BYTES)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Datagrams queued.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues `data` for `to`, sent by `from` (check `is_full_for` first).
    pub(super) fn push_from(&mut self, to: K, from: SocketAddr, data: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(data);
        self.items.push((start, data.len(), to, Some(from)));
    }

    /// What is queued: destination, source and bytes.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, SocketAddr, &[u8])> {
        self.items.iter().filter_map(|(start, len, to, from)| {
            Some((to, (*from)?, &self.data[*start..*start + *len]))
        })
    }

    /// Forgets what is queued.
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }
}

impl SendBatch<SockAddr> {
    /// Queues `data` for `to` (call [`SendBatch::flush`] first when `is_full_for`).
    pub(super) fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(data);
        self.items
            .push((start, data.len(), SockAddr::from(to), None));
    }

    /// Sends everything queued on `fd`. A datagram the kernel refuses (a full socket
    /// buffer, an unreachable destination) is dropped and reported to `failed`, and the
    /// rest still go: what a congested router would do.
    pub(super) fn flush(&mut self, fd: RawFd, mut failed: impl FnMut(io::Error)) {
        let n = self.items.len();
        if n == 0 {
            return;
        }
        // SAFETY: plain C structs; zero is valid, and the pointers set below stay valid
        // until the last `sendmmsg` returns (nothing touches `data` or `items` meanwhile).
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.data.as_ptr();
        for (i, (start, len, to, _)) in self.items.iter().enumerate() {
            iovs[i] = libc::iovec {
                // SAFETY: start..start+len lies inside `data`.
                iov_base: unsafe { base.add(*start) } as *mut libc::c_void,
                iov_len: *len,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = to.as_ptr() as *mut libc::c_void;
            h.msg_namelen = to.len();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let mut done = 0;
        while done < n {
            // SAFETY: hdrs[done..n] are initialised above and point at live memory.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                done += rc as usize;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram of the rest failed: drop it, send the others.
                failed(e);
                done += 1;
            }
        }
        self.clear();
    }
}

/// A level-triggered epoll set: the shard's relayed sockets, watched for input through one
/// descriptor that the shard's runtime waits on.
pub(super) struct ReadySet {
    fd: OwnedFd,
    events: std::cell::RefCell<Vec<libc::epoll_event>>,
}

impl ReadySet {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: a plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: std::cell::RefCell::new(vec![
                libc::epoll_event { events: 0, u64: 0 };
                4 * BATCH
            ]),
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: valid descriptors and a live event struct.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for input (it is reported by its descriptor number).
    pub(super) fn add(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd)
    }

    /// Stops watching `fd` (before it is closed).
    pub(super) fn remove(&self, fd: RawFd) {
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd);
    }

    /// How many descriptors one `ready` reports at most.
    pub(super) fn capacity(&self) -> usize {
        self.events.borrow().len()
    }

    /// Puts the descriptors with input now into `out`, without waiting (WouldBlock when
    /// none has any).
    pub(super) fn ready(&self, out: &mut Vec<RawFd>) -> io::Result<usize> {
        out.clear();
        let mut events = self.events.borrow_mut();
        // SAFETY: the buffer holds `events.len()` entries.
        let rc = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        out.extend(events[..rc as usize].iter().map(|e| e.u64 as RawFd));
        Ok(out.len())
    }
}

impl AsRawFd for ReadySet {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn recv_batch_reads_several_datagrams_with_their_sources_in_one_call() {
        let (a, b) = pair();
        let big = vec![7u8; 60_000];
        a.send_to(b"one", b.local_addr().unwrap()).unwrap();
        a.send_to(&big, b.local_addr().unwrap()).unwrap();
        a.send_to(b"three", b.local_addr().unwrap()).unwrap();
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(b.as_raw_fd()).unwrap(), 3);
        let from = a.local_addr().unwrap();
        assert_eq!(r.get(0), Some((from, &b"one"[..])));
        assert_eq!(r.get(1), Some((from, &big[..])), "a large datagram whole");
        assert_eq!(r.get(2), Some((from, &b"three"[..])));
        assert_eq!(r.get(3), None);
        let e = r.recv(b.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(r.get(0), None, "nothing left from the earlier batch");
    }

    #[test]
    fn send_batch_goes_to_each_destination_and_stays_bounded() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (_, x) = pair();
        let (_, y) = pair();
        let mut out = SendBatch::new();
        let mut sent = Vec::new();
        for i in 0..(BATCH + 5) {
            let to = if i % 2 == 0 { &x } else { &y };
            let msg = format!("m{i}");
            if out.is_full_for(msg.len()) {
                assert_eq!(out.items.len(), BATCH, "full only at BATCH datagrams");
                out.flush(s.as_raw_fd(), |e| panic!("{e}"));
            }
            out.push(to.local_addr().unwrap(), msg.as_bytes());
            sent.push((i % 2, msg));
        }
        out.flush(s.as_raw_fd(), |e| panic!("{e}"));
        assert!(out.is_empty());
        let mut got = Vec::new();
        let mut r = RecvBatch::new();
        for (k, sock) in [&x, &y].into_iter().enumerate() {
            while let Ok(n) = r.recv(sock.as_raw_fd()) {
                for i in 0..n {
                    let (from, d) = r.get(i).unwrap();
                    assert_eq!(from, s.local_addr().unwrap());
                    got.push((k, String::from_utf8(d.to_vec()).unwrap()));
                }
            }
        }
        sent.sort();
        got.sort();
        assert_eq!(
            got, sent,
            "every datagram arrived once, at its own destination"
        );
        // Bytes bound: big datagrams flush before the arena outgrows SEND_BYTES.
        let big = vec![1u8; 50_000];
        out.push(x.local_addr().unwrap(), &big);
        out.push(x.local_addr().unwrap(), &big);
        assert!(out.is_full_for(big.len()));
    }

    #[test]
    fn send_batch_drops_only_what_the_kernel_refuses() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (_, x) = pair();
        let mut out = SendBatch::new();
        out.push(x.local_addr().unwrap(), b"before");
        // Port 0 is not a destination: that one fails, the others still go.
        out.push("127.0.0.1:0".parse().unwrap(), b"lost");
        out.push(x.local_addr().unwrap(), b"after");
        let mut failures = 0;
        out.flush(s.as_raw_fd(), |_| failures += 1);
        assert_eq!(failures, 1);
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(x.as_raw_fd()).unwrap(), 2);
        assert_eq!(r.get(0).unwrap().1, b"before");
        assert_eq!(r.get(1).unwrap().1, b"after");
    }

    #[test]
    fn ready_set_reports_a_socket_while_it_has_input() {
        let (a, b) = pair();
        let (_, c) = pair();
        let set = ReadySet::new().unwrap();
        set.add(b.as_raw_fd()).unwrap();
        set.add(c.as_raw_fd()).unwrap();
        let mut fds = Vec::new();
        assert_eq!(
            set.ready(&mut fds).err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        a.send_to(b"y", b.local_addr().unwrap()).unwrap();
        assert_eq!(set.ready(&mut fds).unwrap(), 1);
        assert_eq!(fds, vec![b.as_raw_fd()]);
        // Level-triggered: still reported until read empty.
        assert_eq!(set.ready(&mut fds).unwrap(), 1);
        assert_eq!(fds, vec![b.as_raw_fd()]);
        let mut r = RecvBatch::new();
        assert_eq!(r.recv(b.as_raw_fd()).unwrap(), 2);
        assert!(set.ready(&mut fds).is_err());
        set.remove(b.as_raw_fd());
        a.send_to(b"z", b.local_addr().unwrap()).unwrap();
        assert!(
            set.ready(&mut fds).is_err(),
            "a removed socket is not reported"
        );
    }
}
