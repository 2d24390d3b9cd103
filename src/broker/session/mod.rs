//! A session: what the broker keeps for one client id between and across connections
//! (MQTT 5.0 section 4.1): subscriptions, the queue of messages not yet sent, QoS 1/2
//! messages in flight each way, the will, and when the session expires.
//!
//! Everything here is plain data behind one mutex, which the store keeps and loads
//! back as it is. The connection that currently owns the session is named by
//! `generation`: a takeover bumps it and wakes the old connection, which then leaves.
//!
//! `queue.rs` is the queue and its overload rules, `subscriptions.rs` the session's
//! packed list of subscriptions, `sparse.rs` the collections most sessions leave
//! empty, `stored.rs` the store ops that describe a session.

mod queue;
mod sparse;
mod stored;
mod subscriptions;
#[cfg(test)]
mod tests;

pub use queue::{Delivered, Enqueued, Outbox, QUEUE_KEPT, QueueLimits};
pub use sparse::{Collection, Sparse};
pub use stored::{add_op, done_op};
use subscriptions::Subscriptions;

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;

use crate::message::{Delivery, Message, SmallStr, Stage};
use crate::protocol::{ProtocolVersion, ReasonCode, SubscriptionOptions};

/// Session Expiry Interval meaning "never expires" (MQTT 5.0 section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// Client ids of the sessions the broker keeps for itself: bridges' outboxes
/// (`$bridge/NAME`) and a cluster's (`$cluster/out/NODE`, `$cluster/in/NODE`). A network
/// client may not use them, since taking one over would empty it.
pub const RESERVED_CLIENT_ID_PREFIXES: [&str; 2] = ["$bridge/", "$cluster/"];

/// The client id of bridge `name`'s outbox.
pub fn outbox_client_id(name: &str) -> String {
    format!("$bridge/{name}")
}

/// The client id of the session that keeps what waits for cluster peer `node`.
pub fn peer_outbox_client_id(node: &str) -> String {
    format!("$cluster/out/{node}")
}

/// The client id of the session that keeps the inbound QoS 2 ids of peer `node`.
pub fn peer_inbound_client_id(node: &str) -> String {
    format!("$cluster/in/{node}")
}

/// What a session is for: most serve a client; the broker keeps the others itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Client,
    /// A bridge's outbox: what waits for a central broker.
    BridgeOutbox,
    /// What waits for a cluster peer, subscribed to the routes it announced.
    PeerOutbox,
    /// What a cluster peer sends here: it holds the peer's inbound QoS 2 ids.
    PeerInbound,
}

impl SessionKind {
    pub fn of(client_id: &str) -> SessionKind {
        if client_id.starts_with("$bridge/") {
            SessionKind::BridgeOutbox
        } else if client_id.starts_with("$cluster/out/") {
            SessionKind::PeerOutbox
        } else if client_id.starts_with("$cluster/in/") {
            SessionKind::PeerInbound
        } else {
            SessionKind::Client
        }
    }

    /// Whether what it holds waits for another broker.
    pub fn is_outbox(self) -> bool {
        matches!(self, SessionKind::BridgeOutbox | SessionKind::PeerOutbox)
    }
}

pub struct Session {
    pub client_id: SmallStr,
    /// Its id, unique per session (a new session under an old client id gets a new
    /// one); with a store, for the life of the database, since the store numbers them.
    pub sid: NonZeroU64,
    state: Mutex<SessionState>,
    /// Wakes publishers held back by this session's full queue once it has drained.
    pub drained: Event,
    /// Mirrors `state.connected` without the lock, for choosing shared-subscription members.
    online: AtomicBool,
    pub kind: SessionKind,
}

impl Session {
    pub fn new(
        client_id: SmallStr,
        protocol: ProtocolVersion,
        expiry: u32,
        sid: NonZeroU64,
    ) -> Session {
        Session {
            kind: SessionKind::of(&client_id),
            client_id,
            sid,
            state: Mutex::new(SessionState::new(protocol, expiry)),
            drained: Event::new(),
            online: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the connection that owns this session, if one does.
    pub fn notify_owner(&self) {
        let link = self.lock().link.clone();
        if let Some(link) = link {
            link.notify();
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, state: &mut SessionState, online: bool) {
        state.connected = online;
        self.online.store(online, Ordering::Relaxed);
        if !online {
            // Nobody drains an offline session: publishers must not wait for it.
            state.pressured = false;
            self.drained.notify(usize::MAX);
        }
    }

    /// Whether publishers should still wait for this session to drain.
    pub fn is_pressured(&self) -> bool {
        self.lock().pressured
    }

    /// A publisher waited out the stall timeout: stop holding publishers back for this
    /// session until it drains; meanwhile the overload rules apply to it.
    pub fn mark_stalled(&self) -> bool {
        let mut st = self.lock();
        let newly = !st.stalled;
        st.stalled = true;
        st.pressured = false;
        drop(st);
        self.drained.notify(usize::MAX);
        newly
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub stage: Stage,
    pub delivery: Delivery,
}

pub struct SessionState {
    pub protocol: ProtocolVersion,
    /// Bumped by every connection that takes the session; see the module doc.
    pub generation: u32,
    /// Why the current connection must close (takeover, queue overflow, admin kick).
    pub close_reason: Option<CloseReason>,
    pub connected: bool,
    /// The connection attached to this session: to wake it, and what the management
    /// API shows of it.
    pub link: Option<Arc<super::link::Link>>,
    /// Session Expiry Interval in seconds, [`NEVER_EXPIRES`] for "never".
    pub expiry_interval: u32,
    pub disconnected_at: Option<Instant>,
    /// By filter, packed (routing uses the router's trie).
    pub subscriptions: Subscriptions,
    pub queue: Sparse<VecDeque<Delivery>>,
    pub queued_bytes: usize,
    /// Outbound QoS 1/2 messages sent and not yet completed, oldest first.
    pub inflight: Sparse<VecDeque<Inflight>>,
    /// Inbound QoS 2 packet ids received and not yet released by PUBREL.
    pub inbound_qos2: Sparse<Vec<u16>>,
    next_packet_id: u16,
    /// What an offline session may wait on: boxed, as most sessions have none.
    parked: Option<Box<Parked>>,
    /// The session has a row in the store, so its changes are stored too.
    pub stored: bool,
    /// The queue passed its high-water mark; publishers are waiting on `drained`.
    pub pressured: bool,
    /// The session did not drain within the stall timeout: publishers no longer wait.
    pub stalled: bool,
    /// A bridge's outbox: its own limits and overload rule.
    pub outbox: Option<Box<Outbox>>,
    /// Messages this session lost to a full queue (or, offline, QoS 0 not kept).
    pub dropped: u64,
}

/// Why the broker wants a session's connection closed: one byte where an
/// `Option<ReasonCode>` takes two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed while the client read too slowly.
    QueueFull,
    ShuttingDown,
    /// Kicked through the management API.
    Kicked,
    TakenOver,
}

impl CloseReason {
    pub fn code(self) -> ReasonCode {
        match self {
            CloseReason::QueueFull => ReasonCode::QUOTA_EXCEEDED,
            CloseReason::ShuttingDown => ReasonCode::SERVER_SHUTTING_DOWN,
            CloseReason::Kicked => ReasonCode::ADMINISTRATIVE_ACTION,
            CloseReason::TakenOver => ReasonCode::SESSION_TAKEN_OVER,
        }
    }

    /// For the log line.
    pub fn why(self) -> &'static str {
        match self {
            CloseReason::QueueFull => "queue full: the client reads too slowly",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::Kicked => "kicked through the management API",
            CloseReason::TakenOver => "another connection took the session",
        }
    }
}

/// What an offline session may wait on.
#[derive(Default)]
struct Parked {
    /// A will waiting for its delay (or the session's end) before it is published.
    will: Option<Box<(Message, Instant)>>,
    /// In a cluster, the will of the connection attached now (the connection holds
    /// it; this copy is what the other nodes are told, should this node die).
    declared_will: Option<Box<Message>>,
    /// Deliveries an earlier run stored that stay on disk until the session resumes:
    /// how many, and their bytes (counted against the queue limits meanwhile).
    backlog: Option<(usize, usize)>,
}

/// The earlier of two deadlines, either of which may be absent.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl SessionState {
    /// A will waiting for its delay (or the session's end), and when it is due.
    pub fn pending_will(&self) -> Option<&(Message, Instant)> {
        self.parked.as_ref()?.will.as_deref()
    }

    pub fn set_pending_will(&mut self, message: Message, due: Instant) {
        self.parked.get_or_insert_default().will = Some(Box::new((message, due)));
    }

    pub fn take_pending_will(&mut self) -> Option<(Message, Instant)> {
        let will = self.parked.as_mut()?.will.take();
        self.tidy_parked();
        will.map(|will| *will)
    }

    /// Deliveries an earlier run stored that stay on disk until the session resumes:
    /// how many, and their bytes.
    pub fn backlog(&self) -> Option<(usize, usize)> {
        self.parked.as_ref()?.backlog
    }

    pub fn set_backlog(&mut self, messages: usize, bytes: usize) {
        self.parked.get_or_insert_default().backlog = Some((messages, bytes));
    }

    pub fn take_backlog(&mut self) -> Option<(usize, usize)> {
        let backlog = self.parked.as_mut()?.backlog.take();
        self.tidy_parked();
        backlog
    }

    /// In a cluster: the will of the connection attached now (see `Parked`).
    pub fn declared_will(&self) -> Option<&Message> {
        self.parked.as_ref()?.declared_will.as_deref()
    }

    pub fn set_declared_will(&mut self, will: Option<Message>) {
        match will {
            Some(will) => self.parked.get_or_insert_default().declared_will = Some(Box::new(will)),
            None => {
                if let Some(parked) = self.parked.as_mut() {
                    parked.declared_will = None;
                }
                self.tidy_parked();
            }
        }
    }

    fn tidy_parked(&mut self) {
        if self
            .parked
            .as_ref()
            .is_some_and(|p| p.will.is_none() && p.backlog.is_none() && p.declared_will.is_none())
        {
            self.parked = None;
        }
    }

    /// When this session, disconnected, expires; `None` while connected or when it
    /// never does.
    pub fn expires_at(&self) -> Option<Instant> {
        self.disconnected_at
            .filter(|_| !self.connected && self.expiry_interval != NEVER_EXPIRES)
            .map(|at| at + Duration::from_secs(u64::from(self.expiry_interval)))
    }

    /// When this session, offline, next needs the broker: its delayed will falls due
    /// or it expires. `None` while connected or when neither will happen.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.connected {
            return None;
        }
        earliest(self.pending_will().map(|will| will.1), self.expires_at())
    }

    fn new(protocol: ProtocolVersion, expiry_interval: u32) -> SessionState {
        SessionState {
            protocol,
            generation: 0,
            close_reason: None,
            connected: false,
            link: None,
            expiry_interval,
            disconnected_at: None,
            subscriptions: Subscriptions::default(),
            queue: Sparse::default(),
            queued_bytes: 0,
            inflight: Sparse::default(),
            inbound_qos2: Sparse::default(),
            next_packet_id: 0,
            parked: None,
            stored: false,
            pressured: false,
            stalled: false,
            outbox: None,
            dropped: 0,
        }
    }

    /// Adds or replaces a subscription; whether one to that filter existed.
    pub fn add_subscription(&mut self, filter: &str, subscription: Subscription) -> bool {
        self.subscriptions.set(filter, subscription)
    }

    /// Removes a subscription; whether there was one.
    pub fn remove_subscription(&mut self, filter: &str) -> bool {
        self.subscriptions.remove(filter)
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// The next packet id not used by a message in flight (ids wrap from 65535 to 1).
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let id = self.next_packet_id;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == packet_id)
    }

    /// Ends the outbound flow at `index` of `inflight`.
    pub fn remove_inflight(&mut self, index: usize) -> Option<Inflight> {
        let removed = self.inflight.remove(index);
        self.inflight.tidy();
        removed
    }
}
