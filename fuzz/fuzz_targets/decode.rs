//! Arbitrary bytes into the decoder, in every protocol version: it must never panic,
//! and whatever it accepts must encode back to bytes that decode to the same packet.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern::protocol::{ProtocolVersion, decode, decode_connect_frame, encode};

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 20) {
            let encoded_in = match &packet {
                tern::protocol::Packet::Connect(c) => c.protocol,
                _ => version,
            };
            let mut out = BytesMut::new();
            encode(&packet, encoded_in, &mut out);
            let again = decode(&mut out, encoded_in, usize::MAX)
                .expect("a re-encoded packet decodes")
                .expect("a re-encoded packet is whole");
            assert_eq!(again, packet);
        }
    }
    let _ = decode_connect_frame(Bytes::copy_from_slice(data));
});
