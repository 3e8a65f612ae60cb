//! Which peers a relay may talk to. A TURN server is an open door into the network it
//! sits in: by default it refuses loopback, private, link-local, CGNAT, multicast,
//! broadcast and unspecified peers, so a client cannot reach the operator's internal
//! services (the classic TURN SSRF). Operators widen or narrow this with
//! `--allow-peer` / `--deny-peer`; the most specific matching range wins.
//!
//! Two things hold whatever the flags say:
//! - IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are
//!   judged as that IPv4 address too, so `64:ff9b::127.0.0.1` is not a way around a
//!   refusal of 127.0.0.0/8.
//! - The relay never relays to its own client-facing addresses ([`OwnAddresses`]), in any
//!   spelling (the listen IP, an unspecified address, a mapped or NAT64 form). Otherwise a
//!   client makes the relay serve requests from itself: allocations owned by a relayed
//!   address, and two of them pointed at each other loop one datagram, growing by a Data
//!   indication header per turn, for as long as they live (CVE-2020-26262 was this class
//!   in coturn). A relayed packet can only turn into client input through a listen port,
//!   so refusing those breaks every such loop. Relayed addresses of our own stay valid
//!   peers: two relay-only clients of one server reach each other exactly that way, and a
//!   packet between two relayed sockets is delivered to a real client, once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allow,
    Deny,
    DefaultDeny,
}

/// The operator's peer ranges on top of the built-in safe default.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    rules: Vec<(IpNet, Rule)>,
}

/// Why a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// In a range of the built-in safe default; `--allow-peer` lifts it.
    Default(IpNet),
    /// In a range the operator denied with `--deny-peer`.
    Operator(IpNet),
    /// One of the relay's own client-facing addresses (never allowed).
    OwnAddress(SocketAddr),
}

impl Refusal {
    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Default(_) => "default_deny",
            Refusal::Operator(_) => "operator_deny",
            Refusal::OwnAddress(_) => "own_address",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Default(range) => write!(
                f,
                "peer is in {range}, refused by default; allow it with --allow-peer {range}"
            ),
            Refusal::Operator(range) => write!(f, "peer is in {range}, refused by --deny-peer"),
            Refusal::OwnAddress(a) => {
                write!(f, "peer {a} is this relay's own address, never relayed to")
            }
        }
    }
}

/// Ranges refused unless the operator allows them.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",      // "this network", unspecified
    "10.0.0.0/8",     // RFC 1918
    "100.64.0.0/10",  // CGNAT (RFC 6598)
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local
    "172.16.0.0/12",  // RFC 1918
    "192.0.0.0/24",   // IETF protocol assignments
    "192.168.0.0/16", // RFC 1918
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, and 255.255.255.255 broadcast
    "::/128",         // unspecified
    "::1/128",        // loopback
    "64:ff9b:1::/48", // local-use NAT64
    "fc00::/7",       // unique local
    "fe80::/10",      // link-local
    "ff00::/8",       // multicast
];

fn rank(r: Rule) -> u8 {
    match r {
        Rule::DefaultDeny => 0,
        Rule::Allow => 1,
        Rule::Deny => 2,
    }
}

/// The IPv4 addresses an IPv6 address carries, if any (at most two: Teredo names the
/// client and its server). Every one of them is judged as well as the IPv6 address.
pub fn embedded_v4(ip: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> {
    let o = ip.octets();
    let seg = ip.segments();
    let v4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let mut out = [None, None];
    if let Some(m) = ip.to_ipv4_mapped() {
        // ::ffff:a.b.c.d (RFC 4291 §2.5.5.2)
        out[0] = Some(m);
    } else if seg[..6] == [0; 6] && !(seg[6] == 0 && seg[7] <= 1) {
        // ::a.b.c.d, IPv4-compatible (deprecated, RFC 4291 §2.5.5.1); not :: or ::1
        out[0] = Some(v4(&o[12..]));
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052)
        out[0] = Some(v4(&o[12..]));
    } else if seg[0] == 0x2002 {
        // 2002:AABB:CCDD::/48, 6to4 (RFC 3056)
        out[0] = Some(v4(&o[2..6]));
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        // 2001:0::/32, Teredo (RFC 4380): server in bits 32-63, client obfuscated at the end
        out[0] = Some(v4(&o[4..8]));
        let c: Vec<u8> = o[12..].iter().map(|b| !b).collect();
        out[1] = Some(v4(&c));
    }
    out.into_iter().flatten()
}

impl PeerPolicy {
    /// The safe default plus the operator's `--allow-peer` and `--deny-peer` ranges.
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        let mut rules: Vec<(IpNet, Rule)> = DEFAULT_DENY
            .iter()
            .map(|s| (s.parse().expect("valid built-in range"), Rule::DefaultDeny))
            .collect();
        rules.extend(allow.iter().map(|n| (n.trunc(), Rule::Allow)));
        rules.extend(deny.iter().map(|n| (n.trunc(), Rule::Deny)));
        PeerPolicy { rules }
    }

    /// May the relay talk to `ip`? An IPv6 address that carries IPv4 addresses is refused
    /// when it or any of them is.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        self.check_one(ip)?;
        if let IpAddr::V6(v6) = ip {
            for v4 in embedded_v4(v6) {
                self.check_one(IpAddr::V4(v4))?;
            }
        }
        Ok(())
    }

    fn check_one(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut best: Option<(u8, Rule, IpNet)> = None;
        for &(net, rule) in &self.rules {
            if !net.contains(&ip) {
                continue;
            }
            let len = net.prefix_len();
            let better = match best {
                None => true,
                // Same prefix: the operator's deny beats their allow, which beats the default.
                Some((l, r, _)) => len > l || (len == l && rank(rule) > rank(r)),
            };
            if better {
                best = Some((len, rule, net));
            }
        }
        match best {
            None | Some((_, Rule::Allow, _)) => Ok(()),
            Some((_, Rule::DefaultDeny, range)) => Err(Refusal::Default(range)),
            Some((_, Rule::Deny, range)) => Err(Refusal::Operator(range)),
        }
    }
}

/// The relay's own client-facing addresses: the IPs it is reachable on with its listen
/// ports. Read-only once built, shared by every shard.
pub struct OwnAddresses {
    ips: Vec<IpNet>,
    listen_ports: Vec<u16>,
}

impl OwnAddresses {
    /// `listen`: the client-facing addresses; `ips`: every other IP the relay is reachable
    /// on (relayed and advertised addresses: behind NAT the public one forwards to us). An unspecified IP stands for every address of
    /// this host: `host_ips` (the interfaces' addresses) and all of loopback.
    pub fn new(listen: &[SocketAddr], ips: &[IpAddr], host_ips: &[IpAddr]) -> Self {
        let mut nets: Vec<IpNet> = Vec::new();
        let mut add = |n: IpNet| {
            if !nets.contains(&n) {
                nets.push(n);
            }
        };
        // Sending to the unspecified address reaches this host (Linux treats it as local).
        add("0.0.0.0/32".parse().expect("valid"));
        add("::/128".parse().expect("valid"));
        for ip in listen.iter().map(|a| a.ip()).chain(ips.iter().copied()) {
            let ip = ip.to_canonical();
            if ip.is_unspecified() {
                for h in host_ips {
                    add(IpNet::from(h.to_canonical()));
                }
                add(if ip.is_ipv4() {
                    "127.0.0.0/8".parse().expect("valid")
                } else {
                    "::1/128".parse().expect("valid")
                });
            } else {
                add(IpNet::from(ip));
            }
        }
        let mut listen_ports: Vec<u16> = listen.iter().map(|a| a.port()).collect();
        listen_ports.sort_unstable();
        listen_ports.dedup();
        OwnAddresses {
            ips: nets,
            listen_ports,
        }
    }

    fn is_own_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let own = |ip: IpAddr| self.ips.iter().any(|n| n.contains(&ip));
        own(ip)
            || match ip {
                IpAddr::V6(v6) => embedded_v4(v6).any(|v4| own(IpAddr::V4(v4))),
                IpAddr::V4(_) => false,
            }
    }

    /// Is `addr` one of the relay's own client-facing addresses? Cheap on the packet
    /// path: one or two ports to compare, and the IP only when one matches.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.listen_ports.contains(&addr.port()) && self.is_own_ip(addr.ip())
    }

    /// [`PeerPolicy::check`] for an address, plus the refusal of the relay's own ones.
    pub fn check(&self, policy: &PeerPolicy, addr: SocketAddr) -> Result<(), Refusal> {
        if self.contains(addr) {
            return Err(Refusal::OwnAddress(addr));
        }
        policy.check(addr.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allow: &[&str], deny: &[&str]) -> PeerPolicy {
        let a: Vec<IpNet> = allow.iter().map(|s| s.parse().unwrap()).collect();
        let d: Vec<IpNet> = deny.iter().map(|s| s.parse().unwrap()).collect();
        PeerPolicy::new(&a, &d)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn safe_by_default() {
        let pol = p(&[], &[]);
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            let r = pol.check(ip(bad)).unwrap_err();
            assert!(matches!(r, Refusal::Default(_)), "{bad}");
            assert!(r.to_string().contains("--allow-peer"), "{r}");
        }
        for good in ["203.0.113.9", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(pol.check(ip(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn operator_overrides_most_specific_wins() {
        let pol = p(
            &["127.0.0.0/8", "10.0.0.0/8"],
            &["10.9.0.0/16", "203.0.113.0/24"],
        );
        assert!(pol.check(ip("127.0.0.1")).is_ok());
        assert!(pol.check(ip("10.1.0.1")).is_ok());
        let r = pol.check(ip("10.9.1.1")).unwrap_err();
        assert!(matches!(r, Refusal::Operator(_)));
        assert!(pol.check(ip("203.0.113.5")).is_err());
        assert!(pol.check(ip("192.168.0.1")).is_err());
        // allow-list only: deny everything, allow one range
        let pol = p(&["198.51.100.0/24"], &["0.0.0.0/0"]);
        assert!(pol.check(ip("198.51.100.7")).is_ok());
        assert!(pol.check(ip("8.8.8.8")).is_err());
    }

    #[test]
    fn embedded_ipv4_is_judged_as_ipv4() {
        let pol = p(&[], &[]);
        for bad in [
            "::ffff:127.0.0.1",                     // mapped
            "::127.0.0.1",                          // compatible
            "::10.0.0.1",                           // compatible
            "64:ff9b::127.0.0.1",                   // NAT64
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254 (cloud metadata)
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:c0a8:101::5",                     // 6to4 of 192.168.1.1
            "2001:0:7f00:1::1",                     // Teredo server 127.0.0.1
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo client !f5fffffe = 10.0.0.1
        ] {
            let r = pol.check(ip(bad)).unwrap_err();
            assert!(matches!(r, Refusal::Default(_)), "{bad}: {r:?}");
        }
        for good in [
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo 65.54.227.120 / 192.0.2.45
        ] {
            // 192.0.2.45 is TEST-NET-1, not in the deny list
            assert!(pol.check(ip(good)).is_ok(), "{good}");
        }
        // Allowing the IPv4 range allows its embedded forms, consistently.
        let pol = p(&["127.0.0.0/8"], &[]);
        assert!(pol.check(ip("64:ff9b::127.0.0.1")).is_ok());
        // An operator's IPv6 deny still applies to the IPv6 form.
        let pol = p(&[], &["2002::/16"]);
        assert!(matches!(
            pol.check(ip("2002:808:808::1")),
            Err(Refusal::Operator(_))
        ));
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_addresses_are_refused_whatever_the_policy() {
        let pol = p(&["0.0.0.0/0", "127.0.0.0/8", "::/0"], &[]);
        let own = OwnAddresses::new(
            &[sa("127.0.0.1:3478"), sa("[::1]:3479")],
            &[ip("127.0.0.1")],
            &[],
        );
        for bad in [
            "127.0.0.1:3478",
            "[::ffff:127.0.0.1]:3478",
            "[64:ff9b::7f00:1]:3478",
            "[2002:7f00:1::]:3478",
            "[::127.0.0.1]:3478",
            "0.0.0.0:3478",
            "[::]:3479",
            "[::1]:3479",
        ] {
            let r = own.check(&pol, sa(bad)).unwrap_err();
            assert!(matches!(r, Refusal::OwnAddress(_)), "{bad}");
            assert_eq!(r.reason(), "own_address");
        }
        // Other ports of the same host (relayed ones among them), and other hosts, are the
        // policy's business.
        assert!(own.check(&pol, sa("127.0.0.1:50001")).is_ok());
        assert!(own.check(&pol, sa("127.0.0.2:3478")).is_ok());
    }

    #[test]
    fn unspecified_listen_means_every_host_address() {
        let own = OwnAddresses::new(&[sa("0.0.0.0:3478")], &[], &[ip("203.0.113.7")]);
        assert!(own.contains(sa("203.0.113.7:3478")));
        assert!(own.contains(sa("127.0.0.5:3478")));
        assert!(!own.contains(sa("203.0.113.8:3478")));
        // External (advertised) addresses count as our own too.
        let own = OwnAddresses::new(&[sa("10.0.0.5:3478")], &[ip("198.51.100.1")], &[]);
        assert!(own.contains(sa("198.51.100.1:3478")));
    }
}
