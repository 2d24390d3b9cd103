//! The shared half of one connection: what other threads need of it. The broker wakes
//! it through here (messages queued, a reason to close), the keep-alive sweep reads
//! when it must have heard from the client again, and the management API and `$SYS`
//! show what it was at CONNECT and how many messages it carried.
//!
//! One allocation per connection, shared by its task, its session (while the session
//! is attached to it) and the sweep. Each connection has its own, so during a takeover
//! the old and the new connection never steal each other's wake-ups.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atomic_waker::AtomicWaker;

use crate::protocol::ProtocolVersion;

pub struct Link {
    waker: AtomicWaker,
    woken: AtomicBool,
    /// When the connection must have heard from the client again, in milliseconds on
    /// the broker's clock ([`super::Broker::clock_ms`]); `u64::MAX` without keep-alive.
    silent_after_ms: AtomicU64,
    /// The user name and will, boxed together: most clients have neither, and each
    /// idle connection holds a `Link`.
    details: Option<Box<Details>>,
    /// The client's address (the socket's, or the one its PROXY header named), kept
    /// as address and port: 20 bytes where a `SocketAddr` is 32.
    peer_ip: IpAddr,
    peer_port: u16,
    pub listener: ListenerName,
    pub protocol: ProtocolVersion,
    /// Seconds, as agreed at CONNECT; 0 for none.
    pub keep_alive: u16,
    pub clean_start: bool,
    /// Milliseconds since the Unix epoch (8 bytes where a `SystemTime` is 16).
    connected_at_ms: u64,
    /// PUBLISH packets received from the client and sent to it.
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

struct Details {
    username: Option<String>,
    will: Option<WillView>,
}

/// A connected client's will, as the API shows it (not the will itself, which the
/// connection's state machine holds).
pub struct WillView {
    pub topic: String,
    pub qos: crate::protocol::QoS,
    pub retain: bool,
    /// Seconds after the connection ends (v5's Will Delay Interval).
    pub delay: u32,
}

/// What a connection is, as it arrives at CONNECT.
pub struct LinkInfo {
    pub username: Option<String>,
    pub peer: SocketAddr,
    pub listener: ListenerName,
    pub protocol: ProtocolVersion,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub will: Option<WillView>,
}

/// A listener's name, shared by its connections: one word where an `Arc<str>` is two.
pub type ListenerName = Arc<String>;

impl Link {
    /// A link heard from at `now_ms` (the CONNECT), which the wall clock says was at
    /// `wall`.
    pub fn new(info: LinkInfo, now_ms: u64, wall: SystemTime) -> Link {
        let link = Link {
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            silent_after_ms: AtomicU64::new(u64::MAX),
            details: (info.username.is_some() || info.will.is_some()).then(|| {
                Box::new(Details {
                    username: info.username,
                    will: info.will,
                })
            }),
            peer_ip: info.peer.ip(),
            peer_port: info.peer.port(),
            listener: info.listener,
            protocol: info.protocol,
            keep_alive: info.keep_alive,
            clean_start: info.clean_start,
            connected_at_ms: wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        };
        link.heard(now_ms);
        link
    }

    pub fn username(&self) -> Option<&str> {
        self.details.as_ref()?.username.as_deref()
    }

    /// The will the client left at CONNECT, as the API shows it.
    pub fn will(&self) -> Option<&WillView> {
        self.details.as_ref()?.will.as_ref()
    }

    /// A packet arrived at `now_ms`: the client is silent only 1.5 times the
    /// keep-alive after it ([MQTT-3.1.2-24]).
    pub fn heard(&self, now_ms: u64) {
        if self.keep_alive > 0 {
            let grace = u64::from(self.keep_alive) * 1500;
            self.silent_after_ms
                .store(now_ms + grace, Ordering::Relaxed);
        }
    }

    /// Whether nothing has arrived for 1.5 times the keep-alive by `now_ms`.
    pub fn is_silent(&self, now_ms: u64) -> bool {
        now_ms >= self.silent_after_ms.load(Ordering::Relaxed)
    }

    /// Wakes the connection.
    pub fn notify(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once after each [`Link::notify`]; registers the waker otherwise.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    pub fn connected_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.connected_at_ms)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
