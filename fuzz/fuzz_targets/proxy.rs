//! Arbitrary bytes into the PROXY protocol v1/v2 header parser, as a balancer (or
//! anyone who reaches a `proxy_protocol` listener) may send them: it must never panic,
//! and a header it accepts lies within the bytes it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::transport::proxy;

fuzz_target!(|data: &[u8]| {
    let _ = proxy::looks_like_header(data);
    if let Ok(Some((_, len))) = proxy::parse(data) {
        assert!(len <= data.len(), "a header of {len} bytes in {}", data.len());
    }
    // Arriving a byte at a time must never decide differently from all at once.
    for end in 0..data.len().min(64) {
        if let Ok(Some((_, len))) = proxy::parse(&data[..end]) {
            assert!(len <= end);
        }
    }
});
