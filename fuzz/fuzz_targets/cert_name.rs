//! Arbitrary bytes into the certificate-name walk (`use_identity_as_username` reads the
//! common name of a client certificate's subject from its DER): it must never panic on
//! a certificate an attacker crafts, however its lengths and tags lie.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::transport::tls;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = tls::common_name(data) {
        assert!(name.len() <= data.len());
    }
});
