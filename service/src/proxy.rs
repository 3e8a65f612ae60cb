//! The PROXY protocol (HAProxy's `send-proxy` and `send-proxy-v2`): an L4 load balancer
//! writes the client's address ahead of the connection's own bytes, so that per-IP limits
//! and logs see the client and not the balancer. Both servers read it only with
//! `--proxy-protocol` and only from `--trusted-proxy` addresses: from anyone else such a
//! header would be a forged address.
//!
//! Parsing is the `ppp` crate's; what is ours is reading exactly the header's bytes off
//! the socket (peek, then consume its length), so that the connection stays the plain
//! `TcpStream` that the HTTP upgrade hands to the WebSocket code and the relay frames
//! TURN on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The most header bytes accepted: v1 is at most 107, v2 is 16 plus addresses (36 for
/// IPv6) plus whatever TLVs the balancer adds; HAProxy's usual ones fit easily.
pub const MAX_HEADER: usize = 512;

/// The longest v1 line, CRLF included (the specification's figure).
const V1_MAX: usize = 107;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The balancer relays a client at this address.
    Client(SocketAddr),
    /// The balancer speaks for itself (v2 `LOCAL`, a health check) or gives no usable
    /// address (v1 `UNKNOWN`, UNIX sockets): the connection's own address stands.
    Local,
}

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes are not a PROXY protocol header.
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
    /// Longer than [`MAX_HEADER`].
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    /// The connection closed before the header was whole.
    #[error("connection closed inside the PROXY header")]
    Closed,
    /// The header did not arrive in time.
    #[error("no complete PROXY header within the time allowed")]
    Timeout,
}

impl ProxyError {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProxyError::Invalid(_) | ProxyError::TooLong => "invalid",
            ProxyError::Closed => "closed",
            ProxyError::Timeout => "timeout",
        }
    }
}

/// `ip` as the limits count it: an IPv4-mapped IPv6 address is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `ip` is one of `trusted` (compared as [`canonical`]).
pub fn is_trusted(trusted: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client of a connection from the trusted load balancer `peer`: the address its
/// PROXY header names, or `peer` itself for a header that names none (a health check).
/// `None` when the header is refused: the connection must be closed. `count` gets the
/// outcome's metric label (`client`, `local`, or the refusal's [`ProxyError::as_str`]).
pub async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    limit: Duration,
    count: impl FnOnce(&'static str),
) -> Option<SocketAddr> {
    match read(stream, limit).await {
        Ok(Source::Client(client)) => {
            count("client");
            Some(client)
        }
        Ok(Source::Local) => {
            count("local");
            Some(peer)
        }
        Err(e) => {
            count(e.as_str());
            tracing::debug!(error = %e, %peer, "PROXY header refused");
            None
        }
    }
}

/// Parses the start of a connection: `Ok(Some((source, length)))` for a complete header of
/// `length` bytes, `Ok(None)` when more bytes could complete it, an error when none can.
pub fn parse(buf: &[u8]) -> Result<Option<(Source, usize)>, ProxyError> {
    // A v1 line is judged once its CRLF is there, and only up to it: `ppp` calls some cut
    // lines invalid (a port cut short), which would refuse a header split across two
    // segments, and it ends a line at a bare CR.
    let v1_prefix = &b"PROXY "[..buf.len().min(6)];
    let v1_line = buf.starts_with(v1_prefix);
    let input = if v1_line {
        match buf.windows(2).position(|w| w == b"\r\n") {
            Some(cr) => &buf[..cr + 2],
            None if buf.len() < V1_MAX => return Ok(None),
            None => return Err(ProxyError::TooLong),
        }
    } else {
        buf
    };
    let r = HeaderResult::parse(input);
    if r.is_incomplete() {
        // A whole v1 line cannot become valid with more bytes.
        return if v1_line {
            Err(ProxyError::Invalid("a malformed v1 line".into()))
        } else if buf.len() >= MAX_HEADER {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    }
    let (source, len) = match r {
        HeaderResult::V1(Ok(h)) => {
            let src = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => Source::Local,
            };
            (src, h.header.len())
        }
        HeaderResult::V2(Ok(h)) => {
            let src = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => Source::Local,
            };
            (src, h.len())
        }
        HeaderResult::V1(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(ProxyError::Invalid(e.to_string())),
    };
    if len > MAX_HEADER {
        return Err(ProxyError::TooLong);
    }
    if v1_line && len != input.len() {
        return Err(ProxyError::Invalid("a CR inside the v1 line".into()));
    }
    Ok(Some((source, len)))
}

/// Reads the PROXY header off `stream` within `limit`, leaving every byte after it unread.
pub async fn read(stream: &mut TcpStream, limit: Duration) -> Result<Source, ProxyError> {
    let work = async {
        let mut buf = [0u8; MAX_HEADER];
        let mut seen = 0;
        loop {
            let n = stream
                .peek(&mut buf)
                .await
                .map_err(|_| ProxyError::Closed)?;
            if n == 0 {
                return Err(ProxyError::Closed);
            }
            if let Some((source, len)) = parse(&buf[..n])? {
                // Consume exactly the header (peeked, so these reads do not wait).
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| ProxyError::Closed)?;
                return Ok(source);
            }
            // Incomplete: the socket stays readable with the same bytes, so wait a little
            // for more instead of spinning. Balancers write the header in one segment, so
            // this is rare.
            if n == seen {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addrs.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_names_the_client_and_its_length_stops_before_the_request() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n";
        let mut input = h.to_vec();
        input.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Ok(Some((
                Source::Client("203.0.113.7:51000".parse().unwrap()),
                h.len()
            )))
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        assert_eq!(
            parse(h6),
            Ok(Some((
                Source::Client("[2001:db8::1]:4000".parse().unwrap()),
                h6.len()
            )))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Ok(Some((Source::Local, 15)))
        );
    }

    #[test]
    fn v2_names_the_client_and_local_keeps_the_connection_address() {
        let addrs = [198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        // A TLV (type 0x04, NOOP) after the addresses counts in the length.
        let h = v2(1, 0x11, &addrs, &[4, 0, 2, 0, 0]);
        let mut input = h.clone();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Ok(Some((
                Source::Client("198.51.100.9:8080".parse().unwrap()),
                h.len()
            )))
        );
        // LOCAL: a health check from the balancer itself.
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(parse(&local), Ok(Some((Source::Local, 16))));
    }

    #[test]
    fn partial_headers_wait_and_other_bytes_are_refused() {
        let h = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[]);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "v2 cut at {cut}");
        }
        let t = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for cut in 0..t.len() - 1 {
            assert_eq!(parse(&t[..cut]), Ok(None), "v1 cut at {cut}");
        }
        // A plain HTTP request from a trusted address is not let through unlabelled.
        assert!(matches!(
            parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\n"),
            Err(ProxyError::Invalid(_))
        ));
        // A v2 length past what we accept is refused without waiting for it.
        let mut big = v2(1, 0x11, &[0; 12], &[]);
        big[14..16].copy_from_slice(&4000u16.to_be_bytes());
        big.resize(MAX_HEADER, 0);
        assert_eq!(parse(&big), Err(ProxyError::TooLong));
        // v1 without its CRLF within 107 bytes.
        assert!(parse(&[b'P'; MAX_HEADER]).is_err());
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX, b'1');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        // A bare CR does not end a v1 line (found by the fuzz target).
        for bare_cr in [
            &b"PROXY UNKNOWN  1P0 \n\rRT1\r\nE"[..],
            b"PROXY UNKNOWN \rx\r\n",
        ] {
            assert!(
                matches!(parse(bare_cr), Err(ProxyError::Invalid(_))),
                "{:?}",
                parse(bare_cr)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_lengths_stay_in_the_input() {
        let pieces: [&[u8]; 8] = [
            b"\r\n\r\n\0\r\nQUIT\n",
            b"PROXY ",
            b"TCP4 ",
            b"\x21\x11",
            b"\x00\x0c",
            b"1.2.3.4 ",
            b"\r\n",
            b"\xff\x00",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut p = Vec::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.extend_from_slice(pieces[(x % 8) as usize]);
            }
            if let Ok(Some((_, len))) = parse(&p) {
                assert!(len <= p.len());
            }
        }
    }

    #[tokio::test]
    async fn read_consumes_exactly_the_header_even_when_it_arrives_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            c.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"192.0.2.2 1234 80\r\nhello").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let src = read(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(src, Source::Client("192.0.2.1:1234".parse().unwrap()));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        let _c = client.await.unwrap();

        // Silence is cut off at the limit.
        let hold = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(
            read(&mut s, Duration::from_millis(50)).await,
            Err(ProxyError::Timeout)
        );
        drop(hold);
    }
}
