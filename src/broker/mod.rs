//! The broker core: sessions, routing, retained messages and wills, shared by every
//! connection. No I/O and no clock of its own: callers hand in `now`, so all of it is
//! tested without sockets and driven the same way by the listeners and the bridge.
//!
//! Locks are short and never nested the other way round: the session table, then the
//! router or the retained store, then one session's state.
//!
//! `client/` is one connection's state machine and `session/` what outlives it;
//! `sessions.rs` opens and ends sessions, `routing.rs` routes publishes through
//! `router.rs` (the subscription trie), `subscribe.rs` adds subscriptions,
//! `retained.rs` keeps retained messages, `housekeeping.rs` is the 1 s tick,
//! `restore.rs` loads what the store kept, `management.rs` and `alarms.rs` serve the
//! management API, `link.rs` is a connection's shared half and `table.rs` the
//! session table.

mod alarms;
mod client;
mod handover;
mod housekeeping;
pub mod link;
mod management;
mod observe;
mod restore;
pub mod retained;
pub mod router;
pub mod routes;
mod routing;
pub mod session;
mod sessions;
mod subscribe;
mod table;
pub mod tap;
pub mod topics;

#[cfg(test)]
mod spec;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::message::{Message, Ticket};
pub use alarms::Alarm;
pub use client::{
    Admitted, Arrival, Client, Close, ConnectOutcome, Held, Refusal, Role, answer_malformed,
};
pub use handover::{Adopt, ImageDelivery, SessionImage, SessionRecord, SubscriptionList};
use link::Link;
pub use management::{ClientView, SubscribeError};
pub use observe::{MAX_TAPS, TapRefused};
use retained::Retained;
use router::Router;
use routes::LocalRoutes;
pub use routing::{Reached, Routed};
use session::{NEVER_EXPIRES, Session};
pub use sessions::Opened;
use table::SessionTable;
use tap::Tap;
use topics::RecentTopics;

use crate::store::{Loaded, Op, Store};

/// The broker-wide settings the core enforces; `config` fills them from the TOML file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// v5 clients asking for a longer keep-alive get Server Keep Alive = this.
    pub max_keepalive: u16,
    /// What the broker advertises and enforces for inbound QoS 1/2 (DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// Outbound messages in flight per 3.x client (v5 clients say their own).
    pub max_inflight: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// How long publishers are held back for a subscriber that does not drain its
    /// queue before it counts as stalled and the overload rules apply to it.
    pub stall_timeout: Duration,
    /// Longest client identifier accepted (CONNACK 0x85 / 3.x 0x02 beyond it).
    pub max_client_id_len: usize,
    /// Longest topic name or filter, in bytes, and most levels in one.
    pub max_topic_len: usize,
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold (SUBACK 0x97 / 3.x 0x80 beyond it).
    pub max_subscriptions: usize,
    /// The longest session expiry granted to a v5 client, in seconds.
    pub max_session_expiry: u32,
    /// The expiry of a v3 persistent session (clean session 0), which states none
    /// itself; [`NEVER_EXPIRES`] keeps it for ever, as Mosquitto does by default.
    pub persistent_client_expiration: u32,
    /// Queue QoS 0 messages for offline persistent sessions (and store them).
    pub queue_qos0_offline: bool,
    /// Retained messages kept, at most, and their bytes (topics and payloads).
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// Keep the distinct filters of client sessions for a cluster to announce.
    pub track_routes: bool,
    /// A shared subscription prefers members on this node (`shared_strategy = local`)
    /// over a cluster peer's.
    pub shared_prefer_local: bool,
    /// Topics whose last message the dashboard's topic tree keeps, at most; 0 keeps
    /// none (no dashboard).
    pub recent_topics: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            node_name: "tern1".into(),
            max_keepalive: 65535,
            receive_maximum: 32,
            max_inflight: 256,
            max_packet_size: 1_048_576,
            topic_alias_maximum: 16,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            stall_timeout: Duration::from_millis(1000),
            max_client_id_len: 256,
            max_topic_len: 65535,
            max_topic_levels: 128,
            max_subscriptions: 1000,
            max_session_expiry: NEVER_EXPIRES,
            persistent_client_expiration: NEVER_EXPIRES,
            queue_qos0_offline: false,
            max_retained_messages: 10_000,
            max_retained_bytes: 64 * 1024 * 1024,
            track_routes: false,
            shared_prefer_local: false,
            recent_topics: 0,
        }
    }
}

/// Counters for logs and, later, `$SYS` and the metrics endpoint.
#[derive(Default)]
pub struct Metrics {
    /// Network clients connected now (a bridge's or a cluster peer's relay sessions
    /// are counted apart, in `relays_connected`).
    pub clients_connected: std::sync::atomic::AtomicI64,
    pub relays_connected: std::sync::atomic::AtomicI64,
    pub connections: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_retained_full: AtomicU64,
    /// Publishes refused with 0x99: a payload marked UTF-8 that is not.
    pub dropped_payload_format: AtomicU64,
    /// Messages a cluster peer refused for good (one it can never take).
    pub dropped_by_peer: AtomicU64,
    /// Connections that ended before sending a byte: a balancer's TCP health check,
    /// which is counted here and logged at debug level only.
    pub probes: AtomicU64,
    /// Bytes read from and written to client connections.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages received from and sent to clients, by QoS 0, 1, 2.
    pub received_by_qos: [AtomicU64; 3],
    pub sent_by_qos: [AtomicU64; 3],
}

impl Metrics {
    /// The connected count a connection of `role` is in.
    pub fn connected(&self, role: Role) -> &std::sync::atomic::AtomicI64 {
        match role {
            Role::Network => &self.clients_connected,
            Role::BridgeRelay | Role::PeerLink => &self.relays_connected,
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub struct Broker {
    pub settings: Settings,
    pub metrics: Metrics,
    sessions: Mutex<SessionTable>,
    router: RwLock<Router>,
    retained: RwLock<Retained>,
    shutting_down: AtomicBool,
    store: Option<Arc<Store>>,
    pub alarms: Mutex<Vec<Alarm>>,
    /// No offline session has a delayed will or an expiry due before this: [`Broker::tick`]
    /// walks the sessions only once it has passed, not every second (100 000 stored
    /// sessions took 16–21 ms a walk, on an executor thread).
    next_due: Mutex<Option<Instant>>,
    /// The connections with a keep-alive, for [`Broker::tick`] to wake those gone
    /// silent: one shared sweep a second instead of a timer in every connection.
    keep_alive: Mutex<Vec<Weak<Link>>>,
    /// Sessions whose queue grew past [`session::QUEUE_KEPT`]: [`Broker::tick`] gives
    /// the room back once they have drained.
    grown_queues: Mutex<Vec<Weak<Session>>>,
    /// Zero of [`Broker::clock_ms`].
    epoch: Instant,
    /// Session ids without a store (the store numbers them when there is one).
    sessions_made: AtomicU64,
    /// The filters a cluster announces ([`Settings::track_routes`]).
    routes: Mutex<LocalRoutes>,
    /// What a cluster does with the retained messages set here.
    replicator: OnceLock<Arc<dyn Replicator>>,
    /// The dashboard's view of what flows: the last message of each topic, and taps.
    recent: Mutex<RecentTopics>,
    taps: RwLock<Vec<Arc<Tap>>>,
    tapped: AtomicBool,
    /// Sessions handed to another node a moment ago (see `handover.rs`), and whether
    /// there are any: what peers still forward here for them follows them.
    moved: Mutex<HashMap<String, handover::Moved>>,
    moving: AtomicBool,
}

/// What a cluster does with this node's state: it is told of each retained message
/// set (or deleted) here and of each client session whose ownership record changed,
/// and it claims a session from the other nodes before a CONNECT opens it.
pub trait Replicator: Send + Sync {
    /// A retained message set (or deleted) by a client or a bridge. Called with the
    /// retained messages locked, so that two writes to one topic are stamped in the
    /// order they were kept.
    fn retained_changed(&self, message: &Arc<Message>);
    /// A client session's persistence or subscriptions changed, or it ended or moved
    /// away ([`Broker::session_record`] says what it is now). Called with no lock held.
    fn session_changed(&self, client_id: &str);
    /// A network client's CONNECT for `client_id` passed every check: take the session
    /// from whichever other node holds it (a connection there is closed, a persistent
    /// session handed over with [`Broker::adopt_session`]) before it is opened here.
    fn claim(&self, client_id: &str, clean_start: bool) -> Claim;
    /// Messages for the session of `client_id`, which moved to node `to` a moment ago
    /// (see [`Broker::release_session`]), as that session receives them (`image`): send
    /// them there. One `published_here` on that topic went there already if `to`
    /// announces a route for it (this node forwarded it).
    fn redirect(
        &self,
        to: &str,
        client_id: &str,
        image: SessionImage,
        published_here: Option<&str>,
    );
}

/// A claim under way; see [`Replicator::claim`].
pub type Claim = std::pin::Pin<Box<dyn std::future::Future<Output = Claimed> + Send>>;

/// How a claim ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Open the session as the CONNECT asked (it may have been handed over).
    AsAsked,
    /// Open a new session (session present = 0): the node that held it is unreachable.
    Fresh,
    /// Refuse the CONNECT (Server unavailable), for this reason.
    Refused(String),
}

impl Broker {
    /// A broker that keeps everything in memory, made at `now`.
    pub fn new(settings: Settings, now: Instant) -> Arc<Broker> {
        Broker::with_store(settings, None, now)
    }

    /// A broker over a store, with what the store held loaded back: sessions (their
    /// queues stay on disk until they resume), subscriptions and retained messages.
    /// `now` is the zero of its keep-alive clock ([`Broker::clock_ms`]).
    pub fn with_store(
        settings: Settings,
        store: Option<(Arc<Store>, Loaded)>,
        now: Instant,
    ) -> Arc<Broker> {
        let (store, loaded) = match store {
            Some((store, loaded)) => (Some(store), Some(loaded)),
            None => (None, None),
        };
        let mut router = Router::default();
        router.set_prefer_local(settings.shared_prefer_local);
        let recent = RecentTopics::new(settings.recent_topics);
        let broker = Arc::new(Broker {
            retained: RwLock::new(Retained::new(
                settings.max_retained_messages,
                settings.max_retained_bytes,
            )),
            settings,
            metrics: Metrics::default(),
            sessions: Mutex::new(SessionTable::default()),
            router: RwLock::new(router),
            shutting_down: AtomicBool::new(false),
            store,
            alarms: Mutex::new(Vec::new()),
            next_due: Mutex::new(None),
            keep_alive: Mutex::new(Vec::new()),
            grown_queues: Mutex::new(Vec::new()),
            epoch: now,
            sessions_made: AtomicU64::new(0),
            routes: Mutex::new(LocalRoutes::default()),
            replicator: OnceLock::new(),
            recent: Mutex::new(recent),
            taps: RwLock::new(Vec::new()),
            tapped: AtomicBool::new(false),
            moved: Mutex::new(HashMap::new()),
            moving: AtomicBool::new(false),
        });
        if let Some(loaded) = loaded {
            broker.restore(loaded);
        }
        if let Some(q) = broker.store.as_ref().and_then(|s| s.quarantined.clone()) {
            let files: Vec<String> = q.files.iter().map(|f| f.display().to_string()).collect();
            broker.raise_alarm(
                q.at,
                "store-corrupt",
                format!(
                    "the store was corrupt ({}) and was moved aside as {}; Tern started with an empty store",
                    q.reason,
                    files.join(", ")
                ),
            );
        }
        broker
    }

    /// A session id for a broker without a store.
    fn next_sid(&self) -> NonZeroU64 {
        let made = self.sessions_made.fetch_add(1, Ordering::Relaxed);
        NonZeroU64::MIN.saturating_add(made)
    }

    /// The routes a cluster announces (kept only with [`Settings::track_routes`]).
    pub fn local_routes(&self) -> MutexGuard<'_, LocalRoutes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands retained messages set here to a cluster from now on.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) {
        let _ = self.replicator.set(replicator);
    }

    /// The cluster this broker is part of, if any.
    pub fn replicator(&self) -> Option<&Arc<dyn Replicator>> {
        self.replicator.get()
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_deref()
    }

    /// Hands ops to the store; the ticket a strict acknowledgement waits for, `None`
    /// when there is nothing to wait for.
    pub fn submit(&self, ops: Vec<Op>) -> Option<Ticket> {
        match &self.store {
            Some(store) if !ops.is_empty() => store.submit(ops),
            _ => None,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `topic` (a name or a filter) is beyond the configured length or depth.
    pub fn topic_too_big(&self, topic: &str) -> Option<String> {
        let s = &self.settings;
        if topic.len() > s.max_topic_len {
            return Some(format!(
                "topic of {} bytes is longer than max_topic_len {}",
                topic.len(),
                s.max_topic_len
            ));
        }
        let levels = topic.split('/').count();
        if levels > s.max_topic_levels {
            return Some(format!(
                "topic of {levels} levels is deeper than max_topic_levels {}",
                s.max_topic_levels
            ));
        }
        None
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
