//! Arbitrary bytes into the PROXY protocol v1/v2 header parser, as a balancer (or
//! anyone who reaches a `proxy_protocol` listener) may send them: it must never panic,
//! and a header it accepts lies within the bytes it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::transport::proxy;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::looks_like_header(data);
    let whole = proxy::parse(data);
    if let Ok(Some((_, len))) = &whole {
        assert!(*len <= data.len(), "a header of {len} bytes in {}", data.len());
    }
    // Arriving in pieces must not decide differently from all at once: a header whole
    // in a prefix is the header of the whole.
    for end in 0..data.len().min(256) {
        if let Ok(Some(found)) = proxy::parse(&data[..end]) {
            assert!(found.1 <= end);
            assert_eq!(whole.as_ref().ok(), Some(&Some(found)), "prefix of {end} bytes");
        }
    }
});
