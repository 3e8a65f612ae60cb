//! Which peers a relay may talk to. A TURN server is an open door into the network it
//! sits in: by default it refuses loopback, private, link-local, CGNAT, multicast,
//! broadcast and unspecified peers, so a client cannot reach the operator's internal
//! services (the classic TURN SSRF). Operators widen or narrow this with
//! `--allow-peer` / `--deny-peer`; the most specific matching range wins.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allow,
    Deny,
    DefaultDeny,
}

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    rules: Vec<(IpNet, Rule)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub range: IpNet,
    /// Whether the refusal comes from the built-in safe default (then `--allow-peer`
    /// lifts it) or from the operator's own `--deny-peer`.
    pub by_default: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_default {
            write!(
                f,
                "peer is in {}, refused by default; allow it with --allow-peer {}",
                self.range, self.range
            )
        } else {
            write!(f, "peer is in {}, refused by --deny-peer", self.range)
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

impl PeerPolicy {
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        let mut rules: Vec<(IpNet, Rule)> = DEFAULT_DENY
            .iter()
            .map(|s| (s.parse().expect("valid built-in range"), Rule::DefaultDeny))
            .collect();
        rules.extend(allow.iter().map(|n| (n.trunc(), Rule::Allow)));
        rules.extend(deny.iter().map(|n| (n.trunc(), Rule::Deny)));
        PeerPolicy { rules }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        // IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address it names.
        let ip = ip.to_canonical();
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
            Some((_, rule, range)) => Err(Refusal {
                range,
                by_default: rule == Rule::DefaultDeny,
            }),
        }
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
            assert!(r.by_default, "{bad}");
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
        assert!(!r.by_default);
        assert!(pol.check(ip("203.0.113.5")).is_err());
        assert!(pol.check(ip("192.168.0.1")).is_err());
        // allow-list only: deny everything, allow one range
        let pol = p(&["198.51.100.0/24"], &["0.0.0.0/0"]);
        assert!(pol.check(ip("198.51.100.7")).is_ok());
        assert!(pol.check(ip("8.8.8.8")).is_err());
    }
}
