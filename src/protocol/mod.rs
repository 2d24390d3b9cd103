//! The MQTT wire protocol: a pure codec for MQTT 3.1, 3.1.1 and 5.0 with no I/O.
//!
//! The broker, the bridge and the benchmark all speak through this module, so the rules
//! of the specs (what is malformed, which reason code a violation earns) are written once.

mod codec;
mod packet;
pub mod properties;
pub mod reason;
pub mod topic;
mod wire;

#[cfg(test)]
mod tests;

pub use codec::{
    ConnectError, OutgoingPublish, decode, decode_connect_frame, decode_frame, encode,
    encode_within, frame_len, next_frame,
};
pub use packet::*;
pub use properties::{Properties, PropertyValues};
pub use reason::ReasonCode;
pub use wire::DecodeError;
