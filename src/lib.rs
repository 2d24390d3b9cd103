//! Tern: an MQTT broker for the edge. See ARCHITECTURE.md for the map of the code.

pub mod protocol;
