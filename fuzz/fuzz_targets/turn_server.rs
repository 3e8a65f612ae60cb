//! The TURN server core (`icebreaker_relay::server::Server`) fed sequences of operations
//! from four clients (each over UDP and TCP) and a few peers, with a fake clock and fake
//! relayed sockets. The model and its invariants are in `fuzz/turn_model.rs`, shared with
//! the CI-sized proptest `relay/tests/prop_server.rs`.
//!
//! Input: a setup byte, then operations. Besides arbitrary bytes, the operations include
//! well-formed requests signed with the right key and the nonce from the last 401/438, so
//! the fuzzer gets past authentication to allocations, permissions, channels and relaying.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../turn_model.rs"]
mod turn_model;

use turn_model::{Op, Req, Setup};

/// Written by hand rather than derived: the model is shared with a proptest test, which
/// cannot depend on `arbitrary`. Keep the variant counts in step with the enums.
impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=4)? {
            0 => Op::Raw {
                conn: u.arbitrary()?,
                data: u.arbitrary()?,
            },
            1 => Op::Request {
                conn: u.arbitrary()?,
                req: u.arbitrary()?,
                sha256: u.arbitrary()?,
                fingerprint: u.arbitrary()?,
                corrupt: u.arbitrary()?,
            },
            2 => Op::Peer {
                relay: u.arbitrary()?,
                from: u.arbitrary()?,
                data: u.arbitrary()?,
            },
            3 => Op::Advance {
                millis: u.arbitrary()?,
            },
            _ => Op::Close {
                conn: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Req {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0u8..=6)? {
            0 => Req::Binding,
            1 => Req::Allocate {
                lifetime: u.arbitrary()?,
                family: u.arbitrary()?,
                even_port: u.arbitrary()?,
                token: u.arbitrary()?,
                dont_fragment: u.arbitrary()?,
                udp: !u.ratio(1u8, 8)?,
                retransmit: u.ratio(1u8, 8)?,
            },
            2 => Req::Refresh {
                lifetime: u.arbitrary()?,
            },
            3 => Req::CreatePermission {
                peers: u.arbitrary()?,
            },
            4 => Req::ChannelBind {
                channel: u.arbitrary()?,
                peer: u.arbitrary()?,
            },
            5 => Req::Send {
                peer: u.arbitrary()?,
                data: u.arbitrary()?,
            },
            _ => Req::ChannelData {
                channel: u.arbitrary()?,
                data: u.arbitrary()?,
                pad: u.arbitrary()?,
            },
        })
    }
}

#[derive(Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let setup = if u.arbitrary::<bool>()? {
            Setup::Tight
        } else {
            Setup::Roomy
        };
        // At most 64 operations: longer sequences add little but time.
        let mut ops = Vec::new();
        while ops.len() < 64 && !u.is_empty() {
            ops.push(u.arbitrary()?);
        }
        Ok(Input { setup, ops })
    }
}

/// `TURN_FUZZ_STATS=1` prints how far each input got (allocations, permissions, channels,
/// packets relayed): run it over the corpus with `-runs=0` to see what the fuzzer reaches.
fn print_stats() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TURN_FUZZ_STATS").is_some())
}

fuzz_target!(|input: Input| {
    let stats = turn_model::run(input.setup, &input.ops);
    if print_stats() {
        eprintln!("{stats:?}");
    }
});
