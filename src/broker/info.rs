//! What the management API and `$SYS` show of a connected client: fixed at CONNECT,
//! plus message counters the connection bumps as it goes. Kept in the session's state
//! while the connection owns it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::protocol::ProtocolVersion;

pub struct ConnInfo {
    pub client_id: Arc<str>,
    pub username: Option<String>,
    /// The client's address: the socket's, or the one its PROXY header named.
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub protocol: ProtocolVersion,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub expiry_interval: u32,
    pub connected_at: SystemTime,
    /// PUBLISH packets received from the client and sent to it.
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

impl ConnInfo {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
