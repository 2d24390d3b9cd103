//! Tern: an MQTT broker for the edge. See ARCHITECTURE.md for the map of the code.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod civil;
pub mod cluster;
pub mod config;
pub mod message;
pub mod protocol;
pub mod server;
pub mod store;
pub mod systemd;
pub mod throttle;
pub mod transport;
pub mod watchdog;
