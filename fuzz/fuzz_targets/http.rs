//! Arbitrary bytes into the management API's HTTP request parser (the API and the
//! dashboard listen on the network): it must never panic, keeps to its limits, and a
//! request it accepts took no more bytes than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::admin::http::{Parsed, parse_request};

fuzz_target!(|data: &[u8]| {
    let peer = ([127, 0, 0, 1], 40000).into();
    let mut buf = data;
    // Several requests in a row, as on a keep-alive connection.
    for _ in 0..8 {
        match parse_request(buf, peer) {
            Parsed::Request(request, _, consumed) => {
                assert!(consumed > 0 && consumed <= buf.len());
                assert!(request.body.len() <= 1 << 20);
                buf = &buf[consumed..];
            }
            Parsed::Refuse(status, _) => {
                assert!((400..500).contains(&status));
                break;
            }
            Parsed::Incomplete => break,
        }
    }
});
