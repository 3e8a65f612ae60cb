//! The TURN core driven by random sequences of operations from four clients (UDP and TCP
//! each) and a few peers, with a fake clock and fake relayed sockets: the CI-sized version
//! of the `turn_server` fuzz target. Model, operations and invariants are shared with it
//! (fuzz/turn_model.rs; see its header for the list); here proptest generates the
//! operations. `PROPTEST_CASES` sets the number of sequences (default 20 000, about six
//! seconds in release on two cores); `fuzz/README.md` has the longer runs.

#[path = "../../fuzz/turn_model.rs"]
mod turn_model;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use turn_model::{Op, Req, Setup, PEERS};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Client packets that are almost STUN or ChannelData, or anything at all.
fn raw_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(64),
        (bytes(60), any::<u16>()).prop_map(|(mut b, t)| {
            // A STUN header with the right cookie and length, then garbage attributes.
            let body = b.len() / 4 * 4;
            b.truncate(body);
            let mut p = Vec::with_capacity(20 + body);
            p.extend_from_slice(&(t & 0x3FFF).to_be_bytes());
            p.extend_from_slice(&(body as u16).to_be_bytes());
            p.extend_from_slice(&0x2112_A442u32.to_be_bytes());
            p.extend_from_slice(&[7; 12]);
            p.extend_from_slice(&b);
            p
        }),
        (0x4000u16..0x4004, bytes(16)).prop_map(|(ch, d)| {
            let mut p = ch.to_be_bytes().to_vec();
            p.extend_from_slice(&(d.len() as u16).to_be_bytes());
            p.extend_from_slice(&d);
            p
        }),
    ]
}

/// Peer indices: mostly the first three (allowed IPv4 peers), then any of the fixed ones,
/// sometimes another allocation's relayed address.
fn peer() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => 0u8..3,
        3 => 0..PEERS.len() as u8,
        1 => (PEERS.len() as u8)..(PEERS.len() as u8 + 4),
    ]
}

/// 5-tuples: mostly two clients (alice over UDP, alice from another address), so that one
/// client's allocation, permission and data meet within a short sequence; any of the
/// eight otherwise.
fn conn() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(0u8),
        2 => Just(2u8),
        3 => 0..turn_model::CONNS as u8,
    ]
}

fn channel() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => 0x4000u16..0x4004,
        1 => Just(0x7FFF),
        1 => any::<u16>(),
    ]
}

/// LIFETIME: mostly absent; 0 (delete) now and then, so allocations live long enough for
/// the rest of the sequence to use them.
fn lifetime() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(0)),
        2 => (1u32..4000).prop_map(Some),
        1 => any::<u32>().prop_map(Some),
    ]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        1 => Just(Req::Binding),
        4 => (
            lifetime(),
            prop_oneof![6 => Just(0u8), 2 => Just(1), 2 => Just(2), 1 => any::<u8>()],
            proptest::option::weighted(0.2, any::<bool>()),
            proptest::option::weighted(0.15, any::<u8>()),
            any::<bool>(),
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.1),
        )
            .prop_map(
                |(lifetime, family, even_port, token, dont_fragment, udp, retransmit)| {
                    Req::Allocate {
                        lifetime,
                        family,
                        even_port,
                        token,
                        dont_fragment,
                        udp,
                        retransmit,
                    }
                }
            ),
        2 => lifetime().prop_map(|lifetime| Req::Refresh { lifetime }),
        3 => proptest::collection::vec(peer(), 0..3)
            .prop_map(|peers| Req::CreatePermission { peers }),
        3 => (channel(), peer()).prop_map(|(channel, peer)| Req::ChannelBind { channel, peer }),
        3 => (peer(), bytes(32)).prop_map(|(peer, data)| Req::Send { peer, data }),
        4 => (channel(), bytes(32), any::<bool>())
            .prop_map(|(channel, data, pad)| Req::ChannelData { channel, data, pad }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (conn(), raw_packet()).prop_map(|(conn, data)| Op::Raw { conn, data }),
        10 => (
            conn(),
            req(),
            proptest::bool::weighted(0.2),
            any::<bool>(),
            proptest::option::weighted(0.05, (any::<u16>(), any::<u8>())),
        )
            .prop_map(|(conn, req, sha256, fingerprint, corrupt)| Op::Request {
                conn,
                req,
                sha256,
                fingerprint,
                corrupt,
            }),
        5 => (0u8..8, peer(), bytes(32)).prop_map(|(relay, from, data)| Op::Peer {
            relay,
            from,
            data,
        }),
        // Mostly a moment; sometimes past a nonce, permission, channel or allocation
        // lifetime (of either setup), or anything up to an hour and some.
        2 => prop_oneof![
            24 => 0u32..2_000,
            1 => Just(20_000),
            1 => Just(31_000),
            1 => Just(61_000),
            1 => Just(301_000),
            1 => Just(601_000),
            1 => 0u32..4_000_000,
        ]
        .prop_map(|millis| Op::Advance { millis }),
        1 => (0..turn_model::CONNS as u8).prop_map(|conn| Op::Close { conn }),
    ]
}

fn allocate(conn: u8) -> Op {
    Op::Request {
        conn,
        req: Req::Allocate {
            lifetime: None,
            family: 0,
            even_port: None,
            token: None,
            dont_fragment: false,
            udp: true,
            retransmit: false,
        },
        sha256: false,
        fingerprint: true,
        corrupt: None,
    }
}

/// Random operations, mostly behind two Allocates (for the two favourite 5-tuples) and
/// often a permission for the first three peers, so that most sequences spend their
/// length on channels and data rather than on getting there.
fn sequence() -> impl Strategy<Value = Vec<Op>> {
    (0u8..4, proptest::collection::vec(op(), 1..48)).prop_map(|(prefix, ops)| {
        let mut all = Vec::new();
        if prefix > 0 {
            all.extend([allocate(0), allocate(2)]);
        }
        if prefix > 1 {
            all.push(Op::Request {
                conn: 0,
                req: Req::CreatePermission {
                    peers: vec![0, 1, 2],
                },
                sha256: false,
                fingerprint: false,
                corrupt: None,
            });
        }
        all.extend(ops);
        all
    })
}

fn setup() -> impl Strategy<Value = Setup> {
    prop_oneof![Just(Setup::Roomy), Just(Setup::Tight)]
}

/// Named `prop::…` like the other property tests, so `cargo test --release -p
/// icebreaker-relay prop` with a large `PROPTEST_CASES` runs them all.
mod prop {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// No sequence of operations panics the core or breaks an invariant
        /// (fuzz/turn_model.rs).
        #[test]
        fn server_keeps_its_invariants(setup in setup(), ops in sequence()) {
            turn_model::run(setup, &ops);
        }
    }
}

/// The property is only as good as the states it reaches: a fixed sequence gets through
/// authentication to allocations, permissions, channels and data both ways, relay to
/// relay included. (Guards the model against silently stalling at a 401.)
#[test]
fn model_reaches_relaying() {
    let req = |conn, req| Op::Request {
        conn,
        req,
        sha256: false,
        fingerprint: true,
        corrupt: None,
    };
    let allocate = Req::Allocate {
        lifetime: None,
        family: 0,
        even_port: None,
        token: None,
        dont_fragment: false,
        udp: true,
        retransmit: false,
    };
    let ops = vec![
        req(0, allocate.clone()),
        req(2, allocate.clone()),
        // Client 0 permits peer 0 and client 1's relayed address (the second open socket).
        req(
            0,
            Req::CreatePermission {
                peers: vec![0, PEERS.len() as u8 + 1],
            },
        ),
        req(
            2,
            Req::CreatePermission {
                peers: vec![PEERS.len() as u8],
            },
        ),
        Op::Peer {
            relay: 0,
            from: 0,
            data: b"hello".to_vec(),
        },
        req(
            0,
            Req::Send {
                peer: 0,
                data: b"to peer".to_vec(),
            },
        ),
        req(
            0,
            Req::ChannelBind {
                channel: 0x4000,
                peer: 1,
            },
        ),
        req(
            0,
            Req::ChannelData {
                channel: 0x4000,
                data: b"via channel".to_vec(),
                pad: false,
            },
        ),
        // Relay to relay: from client 0's socket to client 1's, then to client 1.
        req(
            0,
            Req::Send {
                peer: PEERS.len() as u8 + 1,
                data: b"loop?".to_vec(),
            },
        ),
        Op::Advance { millis: 601_000 },
        req(0, Req::Refresh { lifetime: Some(0) }),
        Op::Close { conn: 2 },
    ];
    let stats = turn_model::run(Setup::Roomy, &ops);
    assert_eq!(stats.allocations, 2, "{stats:?}");
    assert_eq!(stats.permissions, 2, "{stats:?}");
    assert_eq!(stats.channels, 1, "{stats:?}");
    assert_eq!(stats.to_peer, 3, "{stats:?}");
    assert_eq!(stats.relay_to_relay, 1, "{stats:?}");
    assert_eq!(stats.from_peer, 2, "{stats:?}");
}

/// The generated sequences get past authentication too, not only the fixed one.
#[test]
fn generated_sequences_reach_allocations() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (setup(), sequence());
    let mut allocations = 0;
    let mut relayed = 0;
    for _ in 0..32 {
        let (setup, ops) = strategy.new_tree(&mut runner).unwrap().current();
        let s = turn_model::run(setup, &ops);
        allocations += s.allocations;
        relayed += s.to_peer + s.from_peer;
    }
    assert!(
        allocations > 10,
        "only {allocations} allocations in 32 sequences"
    );
    assert!(relayed > 0, "nothing relayed in 32 sequences");
}
