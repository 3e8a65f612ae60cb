//! The PROXY protocol header reader's parse step (`icebreaker_signaling::proxy::parse`) on
//! arbitrary bytes, as the accept path calls it on what a socket peek returned. Checks that
//! a complete header's length lies within the input and the limit, that "need more" only
//! comes while more bytes could still make a header (under the limit), and that every
//! prefix of a complete header is "need more" or the same verdict, never a different
//! address (a header split across segments reads the same).

#![no_main]

use libfuzzer_sys::fuzz_target;

use icebreaker_signaling::proxy::{parse, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((source, len))) => {
            assert!(len <= data.len() && len <= MAX_HEADER, "length {len}");
            // The header alone, without what follows, says the same.
            assert_eq!(parse(&data[..len]), Ok(Some((source, len))));
            // Cut short, it is never a different header.
            for cut in 0..len {
                if let Ok(Some(other)) = parse(&data[..cut]) {
                    panic!("prefix of {cut} bytes read as {other:?}, whole as {source:?}");
                }
            }
        }
        Ok(None) => assert!(data.len() < MAX_HEADER, "waits past the limit"),
        Err(e) => {
            let _ = (e.to_string(), e.as_str());
        }
    }
});
