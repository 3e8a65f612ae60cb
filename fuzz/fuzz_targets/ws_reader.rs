//! The WebSocket read side (`icebreaker_signaling::ws::Reader`) on arbitrary bytes cut into
//! arbitrary reads, driven the way the session driver does it (leftover + new bytes, walk
//! the events, keep `rest`). Checks: no panic; the events do not depend on how the bytes
//! were cut into reads (the same sequence as one read of everything, up to the first
//! violation); whole messages are within the limit; nothing comes after a violation.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use icebreaker_signaling::ws::{Reader, WsEvent};

#[derive(Debug, Arbitrary)]
struct Input {
    max_message: u16,
    cuts: Vec<u16>,
    data: Vec<u8>,
}

/// Feeds `reads` one after the other; returns the events as text and whether it ended in
/// a violation.
fn drive(max: usize, reads: &[&[u8]]) -> (Vec<String>, bool) {
    let mut r = Reader::new(max);
    let mut leftover: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for chunk in reads {
        let mut buf = std::mem::take(&mut leftover);
        buf.extend_from_slice(chunk);
        let mut events = r.events(&mut buf);
        let mut failed = false;
        for e in events.by_ref() {
            match e {
                Ok(ev) => {
                    match &ev {
                        WsEvent::Text(t) => assert!(t.len() <= max, "text over the limit"),
                        WsEvent::Binary(b) => assert!(b.len() <= max, "binary over the limit"),
                        WsEvent::Ping(p) | WsEvent::Pong(p) => assert!(p.len() <= 125),
                        WsEvent::Close(_) => {}
                    }
                    out.push(format!("{ev:?}"));
                }
                Err(v) => {
                    let _ = (v.close_code(), v.reason());
                    out.push(format!("violation {:?}", v.close_code()));
                    failed = true;
                }
            }
        }
        assert!(events.next().is_none(), "events after the end");
        if failed {
            return (out, true);
        }
        leftover = events.rest().to_vec();
    }
    (out, false)
}

fuzz_target!(|input: Input| {
    let max = input.max_message as usize;
    let (whole, whole_failed) = drive(max, &[&input.data]);
    let mut reads = Vec::new();
    let mut at = 0;
    for c in &input.cuts {
        if at >= input.data.len() {
            break;
        }
        let end = (at + 1 + *c as usize % 64).min(input.data.len());
        reads.push(&input.data[at..end]);
        at = end;
    }
    reads.push(&input.data[at..]);
    let (cut, cut_failed) = drive(max, &reads);
    assert_eq!(whole_failed, cut_failed, "a violation depends on how bytes were read");
    assert_eq!(whole, cut, "events depend on how bytes were read");
});
