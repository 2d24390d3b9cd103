//! The broker core: sessions, routing, retained messages and wills, shared by every
//! connection. No I/O and no clock of its own: callers hand in `now`, so all of it is
//! tested without sockets and driven the same way by the listeners and the bridge.
//!
//! Locks are short and never nested the other way round: the session table, then the
//! router or the retained store, then one session's state.

mod client;
pub mod link;
pub mod retained;
pub mod router;
pub mod session;
mod subscriptions;
mod table;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::message::{Delivery, Message, SmallStr, Ticket};
pub use client::{Arrival, Client, Close, ConnectOutcome, Held, Refusal, answer_malformed};
use link::Link;
use retained::Retained;
use router::{Match, Router};
use session::{
    CloseReason, Delivered, Inflight, NEVER_EXPIRES, Outbox, QueueLimits, Session, SessionState,
    Subscription,
};
use table::SessionTable;

use crate::protocol::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic,
};
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
        }
    }
}

/// Something an operator must look at (a corrupt store moved aside, say): logged,
/// published as a retained `$SYS/tern/alarms/NAME` message, and kept in
/// [`Broker::alarms`] for the management API to list.
#[derive(Debug, Clone)]
pub struct Alarm {
    pub name: String,
    pub message: String,
    pub raised_at: SystemTime,
}

/// Counters for logs and, later, `$SYS` and the metrics endpoint.
#[derive(Default)]
pub struct Metrics {
    pub clients_connected: std::sync::atomic::AtomicI64,
    pub connections: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_too_large: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_retained_full: AtomicU64,
    /// Publishes refused with 0x99: a payload marked UTF-8 that is not.
    pub dropped_payload_format: AtomicU64,
    /// Bytes read from and written to client connections.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages received from and sent to clients, by QoS 0, 1, 2.
    pub received_by_qos: [AtomicU64; 3],
    pub sent_by_qos: [AtomicU64; 3],
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
}

/// Where a publish went.
/// A connected client as the management API lists it.
pub struct ClientView {
    pub client_id: SmallStr,
    pub info: Arc<Link>,
    pub queued: usize,
    pub inflight: usize,
    pub subscriptions: usize,
    pub dropped: u64,
    /// The session's, in seconds: CONNECT's or what DISCONNECT set.
    pub expiry_interval: u32,
}

/// Why a subscription on a client's behalf was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    NotConnected,
    /// What the client's own SUBSCRIBE would have been told, and why.
    Refused(ReasonCode, String),
}

/// Where one published message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Queued for this many sessions (a v5 publisher is told 0x10 when none).
    Sessions(usize),
    /// A full bridge outbox refused it, so its publisher must be refused too (never
    /// acknowledged).
    Refused,
}

pub struct Routed {
    pub reached: Reached,
    /// A session whose queue passed its high-water mark.
    pub pressure: Option<Arc<Session>>,
}

/// What opening a session found.
pub struct Opened {
    pub session: Arc<Session>,
    pub generation: u32,
    pub present: bool,
    /// The store ticket the CONNACK waits for.
    pub ticket: Option<Ticket>,
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
        let broker = Arc::new(Broker {
            retained: RwLock::new(Retained::new(
                settings.max_retained_messages,
                settings.max_retained_bytes,
            )),
            settings,
            metrics: Metrics::default(),
            sessions: Mutex::new(SessionTable::default()),
            router: RwLock::new(Router::default()),
            shutting_down: AtomicBool::new(false),
            store,
            alarms: Mutex::new(Vec::new()),
            next_due: Mutex::new(None),
            keep_alive: Mutex::new(Vec::new()),
            grown_queues: Mutex::new(Vec::new()),
            epoch: now,
            sessions_made: AtomicU64::new(0),
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

    fn restore(&self, loaded: Loaded) {
        let Some(store) = &self.store else { return };
        let clock = &store.clock;
        let mut sessions = self.sessions();
        // Sized once: growing it would hash every session's client id again, through
        // the session, at each doubling.
        sessions.reserve(loaded.sessions.len());
        let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
        for stored in loaded.sessions {
            let protocol = match stored.protocol {
                3 => ProtocolVersion::V31,
                4 => ProtocolVersion::V311,
                _ => ProtocolVersion::V5,
            };
            let expiry = match protocol {
                ProtocolVersion::V5 => stored.expiry.min(self.settings.max_session_expiry),
                _ => self.settings.persistent_client_expiration,
            };
            let client_id = SmallStr::from(stored.client_id);
            let Some(sid) = NonZeroU64::new(stored.sid) else {
                log::warn!("stored session {client_id:?} has session id 0: skipped");
                continue;
            };
            let session = Arc::new(Session::new(client_id.clone(), protocol, expiry, sid));
            {
                let mut st = session.lock();
                st.stored = true;
                st.disconnected_at = Some(clock.instant(stored.disconnected_at));
                st.inbound_qos2 = stored.inbound_qos2.into();
                if let Some((message, due)) = stored.will {
                    let message = message.into_message(Some(client_id.clone()), clock);
                    st.set_pending_will(message, clock.instant(due));
                }
                self.due_by(st.next_deadline());
                if stored.backlog_messages > 0 {
                    st.set_backlog(stored.backlog_messages, stored.backlog_bytes);
                }
                for (filter, options, id) in stored.subscriptions {
                    let Some(options) = SubscriptionOptions::from_byte(options) else {
                        log::warn!(
                            "stored subscription {filter:?} of {client_id:?} has bad options {options:#04x}: skipped"
                        );
                        continue;
                    };
                    let subscription = Subscription { options, id };
                    st.add_subscription(&filter, subscription);
                    router.subscribe(&filter, &session, subscription);
                }
            }
            sessions.insert(session);
        }
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        for message in loaded.retained {
            retained.set(&Arc::new(message));
        }
        log::info!(
            "store loaded: {} sessions, {} retained messages ({} expired sessions and {} expired or orphaned queued messages purged)",
            sessions.len(),
            retained.len(),
            loaded.purged_sessions,
            loaded.purged_deliveries
        );
    }

    /// A session id for a broker without a store.
    fn next_sid(&self) -> NonZeroU64 {
        let made = self.sessions_made.fetch_add(1, Ordering::Relaxed);
        NonZeroU64::MIN.saturating_add(made)
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

    /// Logs an alarm raised at `at`, lists it, and publishes it retained under
    /// `$SYS/tern/alarms/`.
    pub fn raise_alarm(&self, at: SystemTime, name: &str, message: String) {
        log::error!("alarm {name}: {message}");
        let payload = format!(
            "{{\"alarm\":{},\"message\":{},\"raised_at\":{}}}",
            json_string(name),
            json_string(&message),
            at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        );
        let alarm = Message::new(
            format!("$SYS/tern/alarms/{name}"),
            Bytes::from(payload),
            QoS::AtMostOnce,
            true,
        );
        self.retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_unbounded(&Arc::new(alarm));
        self.alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Alarm {
                name: name.into(),
                message,
                raised_at: at,
            });
    }

    fn sessions(&self) -> MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `client_id`'s session a bridge outbox: its own queue limits, the oldest
    /// message dropped when full. Returns the session, for its figures.
    pub fn make_outbox(&self, client_id: &str, limits: QueueLimits) -> Option<Arc<Session>> {
        let session = self.sessions().get(client_id).cloned()?;
        // Under `strict` nothing acknowledged may be dropped: a full outbox refuses.
        let drops_oldest = !self.store().is_some_and(|s| s.is_strict());
        session.lock().outbox = Some(Box::new(Outbox {
            limits,
            drops_oldest,
        }));
        Some(session)
    }

    /// The connected clients, with their queue figures.
    pub fn clients(&self) -> Vec<ClientView> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        sessions
            .iter()
            .filter_map(|session| {
                let st = session.lock();
                let info = st.link.clone()?;
                Some(ClientView {
                    client_id: session.client_id.clone(),
                    info,
                    queued: st.queue.len() + st.backlog().map_or(0, |(n, _)| n),
                    inflight: st.inflight.len(),
                    subscriptions: st.subscriptions.len(),
                    dropped: st.dropped,
                    expiry_interval: st.expiry_interval,
                })
            })
            .collect()
    }

    /// Every session's subscriptions (online or not): client id, filter, options.
    pub fn subscription_list(&self) -> Vec<(SmallStr, String, Subscription)> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut out = Vec::new();
        for session in sessions {
            let st = session.lock();
            for (filter, subscription) in st.subscriptions.iter() {
                out.push((session.client_id.clone(), filter.to_owned(), subscription));
            }
        }
        out
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The retained messages (not those under `$` topics), newest state of each topic.
    pub fn retained_list(&self, now: Instant) -> Vec<Arc<Message>> {
        self.retained_matching("#", now)
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Subscribes a connected client to `filter` on its behalf (the management API),
    /// with the limits its own SUBSCRIBE would meet, storing the subscription when its
    /// session is stored and sending it the retained messages that match.
    pub fn subscribe_for(
        &self,
        client_id: &str,
        filter: &str,
        qos: QoS,
        now: Instant,
    ) -> Result<(), SubscribeError> {
        let session = self.sessions().get(client_id).cloned();
        let Some(session) = session.filter(|s| s.is_online()) else {
            return Err(SubscribeError::NotConnected);
        };
        let (code, why) = match topic::validate_filter(filter) {
            Ok(()) => match self.may_subscribe(&session, filter) {
                Ok(()) => (ReasonCode::SUCCESS, String::new()),
                Err(refusal) => refusal,
            },
            Err(e) => (ReasonCode::TOPIC_FILTER_INVALID, e.describe().to_owned()),
        };
        if code.is_error() {
            return Err(SubscribeError::Refused(code, why));
        }
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let subscription = Subscription { options, id: None };
        let mut ops = Vec::new();
        let retained = self.add_subscription(&session, filter, subscription, &mut ops, now);
        self.submit(ops);
        for delivery in retained {
            self.enqueue(&session, delivery);
        }
        Ok(())
    }

    /// Whether `session` may add a subscription to `filter` (a valid one): the topic
    /// length and depth limits and `max_subscriptions`, as every subscription meets
    /// them, a client's own or one made on its behalf.
    pub fn may_subscribe(
        &self,
        session: &Session,
        filter: &str,
    ) -> Result<(), (ReasonCode, String)> {
        if let Some(why) = self.topic_too_big(filter) {
            return Err((ReasonCode::TOPIC_FILTER_INVALID, why));
        }
        let st = session.lock();
        let is_new = !st.subscriptions.contains(filter);
        let max = self.settings.max_subscriptions;
        if is_new && st.subscriptions.len() >= max {
            return Err((
                ReasonCode::QUOTA_EXCEEDED,
                format!("already {max} subscriptions (max_subscriptions)"),
            ));
        }
        Ok(())
    }

    /// Adds (or replaces) a subscription that [`Broker::may_subscribe`] allowed: to the
    /// session, the router and, for a stored session, to `ops`. Returns the retained
    /// messages its retain handling sends now, for the caller to queue after it has
    /// answered the SUBSCRIBE.
    pub fn add_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        subscription: Subscription,
        ops: &mut Vec<Op>,
        now: Instant,
    ) -> Vec<Delivery> {
        let (existed, stored) = {
            let mut st = session.lock();
            (st.add_subscription(filter, subscription), st.stored)
        };
        self.subscribe(session, filter, subscription);
        if stored && self.store.is_some() {
            ops.push(Op::PutSubscription {
                sid: session.sid.get(),
                filter: filter.to_owned(),
                options: subscription.options.to_byte(),
                identifier: subscription.id,
            });
        }
        let send_retained = match subscription.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send_retained {
            self.retained_for(filter, subscription, now)
        } else {
            Vec::new()
        }
    }

    /// Removes a connected client's subscription on its behalf: `None` when it is not
    /// connected, otherwise whether the subscription existed.
    pub fn unsubscribe_for(&self, client_id: &str, filter: &str) -> Option<bool> {
        let session = self.sessions().get(client_id).cloned()?;
        let (existed, stored) = {
            let mut st = session.lock();
            if !st.connected {
                return None;
            }
            (st.remove_subscription(filter), st.stored)
        };
        if existed {
            self.unsubscribe(&session, filter);
            if stored && self.store.is_some() {
                self.submit(vec![Op::DeleteSubscription {
                    sid: session.sid.get(),
                    filter: filter.to_owned(),
                }]);
            }
        }
        Some(existed)
    }

    /// Disconnects `client_id` (DISCONNECT 0x98 for v5); whether it was connected.
    pub fn kick(&self, client_id: &str) -> bool {
        let Some(session) = self.sessions().get(client_id).cloned() else {
            return false;
        };
        let mut st = session.lock();
        if !st.connected {
            return false;
        }
        st.close_reason = Some(CloseReason::Kicked);
        let link = st.link.clone();
        drop(st);
        if let Some(link) = link {
            link.notify();
        }
        true
    }

    fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_queued_messages: self.settings.max_queued_messages,
            max_queued_bytes: self.settings.max_queued_bytes,
            queue_qos0_offline: self.settings.queue_qos0_offline,
        }
    }

    /// Takes the session for `client_id` for a new connection: a clean start discards
    /// the old one, otherwise it resumes (with its stored queue read back from disk);
    /// a connection still attached is told to leave with 0x8E (session taken over).
    ///
    /// A session with an expiry of 0 ends with its connection ([MQTT-3.1.2-6]): it is
    /// never resumed, even while that connection is still open or closing, so a
    /// persistent session never inherits a clean one's subscriptions. The expiry is
    /// read under the session's lock, under which a DISCONNECT sets it to 0.
    pub fn open_session(
        &self,
        client_id: &str,
        clean_start: bool,
        protocol: ProtocolVersion,
        expiry_interval: u32,
        link: &Arc<Link>,
        now: Instant,
    ) -> Opened {
        let mut sessions = self.sessions();
        let existing = sessions.get(client_id).cloned();
        let mut outlives_its_connection = false;
        if let Some(old) = &existing {
            let mut st = old.lock();
            outlives_its_connection = st.is_persistent();
            if st.connected {
                st.close_reason = Some(CloseReason::TakenOver);
                st.generation = st.generation.wrapping_add(1);
                old.set_online(&mut st, false);
                if let Some(old_link) = st.link.take() {
                    old_link.notify();
                }
            }
        }
        let resumable = existing.filter(|_| !clean_start && outlives_its_connection);
        let (session, present) = match resumable {
            Some(session) => (session, true),
            None => {
                let sid = match &self.store {
                    Some(store) => store.new_sid(),
                    None => self.next_sid(),
                };
                let session = Arc::new(Session::new(
                    client_id.into(),
                    protocol,
                    expiry_interval,
                    sid,
                ));
                if let Some(old) = sessions.insert(session.clone()) {
                    drop(sessions);
                    self.end_session(&old, now);
                    sessions = self.sessions();
                }
                (session, false)
            }
        };
        drop(sessions);
        let mut st = session.lock();
        st.generation = st.generation.wrapping_add(1);
        st.close_reason = None;
        st.protocol = protocol;
        st.expiry_interval = expiry_interval;
        st.disconnected_at = None;
        let had_will = st.take_pending_will().is_some();
        session.set_online(&mut st, true);
        st.link = Some(link.clone());
        let generation = st.generation;
        let ticket = self.store_opened(&session, &mut st, had_will);
        // A stored queue read back is a burst like any other.
        let grown = st.queue.capacity() > session::QUEUE_KEPT;
        drop(st);
        if grown {
            self.watch_grown_queue(&session);
        }
        if link.keep_alive > 0 {
            let mut watched = self.keep_alive.lock().unwrap_or_else(|p| p.into_inner());
            watched.push(Arc::downgrade(link));
        }
        Opened {
            session,
            generation,
            present,
            ticket,
        }
    }

    /// Brings the store up to date with a session just opened: its stored queue read
    /// back, its row written, updated or (expiry 0) deleted. Returns the ticket.
    fn store_opened(
        &self,
        session: &Session,
        st: &mut SessionState,
        had_will: bool,
    ) -> Option<Ticket> {
        let Some(store) = &self.store else {
            return None;
        };
        if st.take_backlog().is_some() {
            match store.load_backlog(session.sid.get()) {
                Ok(stored) => restore_backlog(st, stored),
                Err(e) => log::error!("client_id={}: {e}", session.client_id),
            }
        }
        let sid = session.sid.get();
        let mut ops = Vec::new();
        match (st.is_persistent(), st.stored) {
            (true, true) => {
                ops.push(Op::PutSession {
                    sid,
                    client_id: session.client_id.clone(),
                    protocol: st.protocol.level(),
                    expiry: st.expiry_interval,
                    disconnected_at: None,
                });
                if had_will {
                    ops.push(Op::SetWill { sid, will: None });
                }
            }
            (true, false) => ops = st.snapshot(sid, &session.client_id, store),
            (false, true) => {
                st.stored = false;
                ops.push(Op::DeleteSession { sid });
            }
            (false, false) => {}
        }
        // Under the session's lock, so a publisher's op for this session comes after.
        self.submit(ops)
    }

    /// Whether `session` is still the one registered for its client id.
    pub fn is_current(&self, session: &Arc<Session>) -> bool {
        self.sessions()
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
    }

    /// Removes a session for good if it is still registered, and ends it.
    pub fn remove_session(&self, session: &Arc<Session>, now: Instant) {
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(&session.client_id) {
                Some(s) if Arc::ptr_eq(s, session) => sessions.remove(&session.client_id),
                _ => None,
            }
        };
        if let Some(session) = removed {
            self.end_session(&session, now);
        }
    }

    /// A session's end: its subscriptions leave the router, its pending will is
    /// published, and what it held from shared subscriptions goes to another member.
    fn end_session(&self, session: &Arc<Session>, now: Instant) {
        let (filters, will, held) = {
            let mut st = session.lock();
            if std::mem::take(&mut st.stored) {
                self.submit(vec![Op::DeleteSession {
                    sid: session.sid.get(),
                }]);
            }
            let filters = st.subscriptions.take_filters();
            let will = st.take_pending_will().map(|w| w.0);
            let mut held: Vec<Delivery> =
                st.inflight.take().into_iter().map(|f| f.delivery).collect();
            while let Some(d) = st.pop_queued() {
                held.push(d);
            }
            (filters, will, held)
        };
        {
            let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
            for filter in &filters {
                router.unsubscribe(filter, &session.client_id);
            }
        }
        for delivery in held {
            let Some(key) = &delivery.shared else {
                continue;
            };
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            let next = self
                .router
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .pick_shared(key, &session.client_id);
            if let Some((session, subscription)) = next {
                let qos = delivery.message.qos.min(subscription.options.qos);
                self.enqueue(
                    &session,
                    Delivery {
                        qos,
                        seq: None,
                        ..delivery
                    },
                );
            }
        }
        if let Some(will) = will {
            self.publish(will, now);
        }
    }

    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, subscription: Subscription) {
        self.router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(filter, session, subscription);
    }

    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        self.router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .unsubscribe(filter, &session.client_id)
    }

    /// The retained messages a new `subscription` to `filter` is sent, each at most at
    /// the subscription's QoS; none for a shared subscription.
    pub fn retained_for(
        &self,
        filter: &str,
        subscription: Subscription,
        now: Instant,
    ) -> Vec<Delivery> {
        if crate::protocol::topic::parse_shared(filter).is_some() {
            return Vec::new();
        }
        self.retained_matching(filter, now)
            .into_iter()
            .map(|message| Delivery {
                qos: message.qos.min(subscription.options.qos),
                message,
                retain: true,
                subscription_ids: subscription.id.into_iter().collect(),
                shared: None,
                seq: None,
            })
            .collect()
    }

    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matching(filter, now)
    }

    /// Routes one message (a will, say) and stores what it left for stored sessions;
    /// see [`Broker::publish_batch`].
    pub fn publish(&self, message: Message, now: Instant) -> Routed {
        let mut reached = Vec::with_capacity(1);
        let mut ops = Vec::new();
        let pressure = self.publish_batch(vec![Arc::new(message)], &mut reached, &mut ops, now);
        self.submit(ops);
        Routed {
            reached: reached[0],
            pressure,
        }
    }

    /// Routes a batch of messages from one publisher, in order. Appends to `reached`
    /// where each message went,
    /// appends to `ops` what the store must keep of it (the caller submits them,
    /// together with its own), and returns a session whose queue is filling up, which
    /// the publisher should wait for before sending more. Each session is locked and
    /// woken once per batch, not once per message: that is what keeps fan-in and
    /// fan-out cheap.
    pub fn publish_batch(
        &self,
        messages: Vec<Arc<Message>>,
        reached: &mut Vec<Reached>,
        ops: &mut Vec<Op>,
        now: Instant,
    ) -> Option<Arc<Session>> {
        self.metrics
            .messages_received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        // Tallied per batch: the counters are shared by every connection's thread.
        let mut by_qos = [0u64; 3];
        for message in &messages {
            by_qos[message.qos as usize] += 1;
        }
        for (counter, n) in self.metrics.received_by_qos.iter().zip(by_qos) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.route(messages, reached, ops, Some(now))
    }

    /// Publishes what the broker says itself (`$SYS`, bridge states): routed and
    /// retained like any message, not counted as received from a client.
    ///
    /// A retained one is kept in memory only, outside the retained limits: it is
    /// published again after a restart, and writing it to the store every few seconds
    /// would wear an SD card for nothing.
    pub fn publish_internal(&self, message: Message) {
        let message = Arc::new(message);
        if message.retain {
            self.retained
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .set_unbounded(&message);
        }
        let mut reached = Vec::with_capacity(1);
        let mut ops = Vec::new();
        self.route(vec![message], &mut reached, &mut ops, None);
        self.submit(ops);
    }

    /// Routes `messages`; `keep_retained` at `now` keeps (and stores) the retained ones,
    /// within the retained limits (the broker's own keeps them itself).
    fn route(
        &self,
        messages: Vec<Arc<Message>>,
        reached: &mut Vec<Reached>,
        ops: &mut Vec<Op>,
        keep_retained: Option<Instant>,
    ) -> Option<Arc<Session>> {
        if let Some(now) = keep_retained {
            for message in messages.iter().filter(|m| m.retain) {
                self.set_retained(message, ops, now);
            }
        }
        let mut staged: Vec<(Arc<Session>, Vec<Delivery>)> = Vec::new();
        let mut slots: HashMap<*const Session, usize> = HashMap::new();
        {
            let router = self.router.read().unwrap_or_else(|p| p.into_inner());
            let mut matches = Vec::new();
            for message in &messages {
                matches.clear();
                router.matches(message.topic.as_str(), &mut matches);
                // One delivery per session however many of its subscriptions matched
                // (MQTT 5.0 section 3.3.4): highest QoS, every subscription identifier.
                matches.sort_unstable_by_key(|m| (m.shared.is_some(), Arc::as_ptr(m.session)));
                let mut n = 0;
                let mut i = 0;
                while i < matches.len() {
                    let first = &matches[i];
                    let mut j = i + 1;
                    while j < matches.len()
                        && first.shared.is_none()
                        && matches[j].shared.is_none()
                        && Arc::ptr_eq(matches[j].session, first.session)
                    {
                        j += 1;
                    }
                    if let Some(delivery) = merge(message, &matches[i..j]) {
                        let slot = *slots.entry(Arc::as_ptr(first.session)).or_insert_with(|| {
                            staged.push((first.session.clone(), Vec::new()));
                            staged.len() - 1
                        });
                        staged[slot].1.push(delivery);
                        n += 1;
                    }
                    i = j;
                }
                reached.push(Reached::Sessions(n));
            }
        }
        let limits = self.queue_limits();
        let mut pressure = None;
        let first = reached.len() - messages.len();
        for (session, deliveries) in staged {
            let delivered = session.deliver(deliveries, &limits, self.store.as_deref(), ops);
            self.count_delivered(&session, &delivered);
            for message in delivered.refused {
                if let Some(i) = messages.iter().position(|m| Arc::ptr_eq(m, &message)) {
                    reached[first + i] = Reached::Refused;
                }
            }
            if delivered.pressure && pressure.is_none() {
                pressure = Some(session);
            }
        }
        pressure
    }

    /// Queues one delivery outside a publish (retained on SUBSCRIBE, a shared message
    /// handed on), counting it if the session's queue drops it.
    fn enqueue(&self, session: &Arc<Session>, delivery: Delivery) {
        let mut ops = Vec::new();
        let delivered = session.deliver(
            vec![delivery],
            &self.queue_limits(),
            self.store.as_deref(),
            &mut ops,
        );
        self.submit(ops);
        self.count_delivered(session, &delivered);
    }

    /// Counts what a session's queue dropped, and watches a queue that grew.
    fn count_delivered(&self, session: &Arc<Session>, delivered: &Delivered) {
        self.metrics
            .dropped_queue_full
            .fetch_add(delivered.dropped, Ordering::Relaxed);
        if delivered.grew {
            self.watch_grown_queue(session);
        }
    }

    fn watch_grown_queue(&self, session: &Arc<Session>) {
        self.grown_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(session));
    }

    /// Shrinks the queues that grew in a burst and have drained since; keeps watching
    /// those still large.
    fn shrink_grown_queues(&self) {
        let mut grown = self.grown_queues.lock().unwrap_or_else(|p| p.into_inner());
        if grown.is_empty() {
            return;
        }
        grown.retain(|session| {
            session
                .upgrade()
                .is_some_and(|session| session.lock().shrink_queue())
        });
        if grown.is_empty() {
            *grown = Vec::new();
            // Once every burst has drained: trimming while queues are still busy
            // would hand back pages they take again at once (fan-out lost 3-4 %).
            release_freed_memory();
        }
    }

    /// Keeps (or, for an empty payload, deletes) a topic's retained message, within
    /// the retained limits, and stores it.
    fn set_retained(&self, message: &Arc<Message>, ops: &mut Vec<Op>, now: Instant) {
        let kept = self
            .retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set(message);
        if !kept {
            count(&self.metrics.dropped_retained_full);
            if let Some(suppressed) = RETAINED_FULL.check(now) {
                log::warn!(
                    "retained message on {:?} not kept: max_retained_messages {} or max_retained_bytes {} reached{}",
                    message.topic.as_str(),
                    self.settings.max_retained_messages,
                    self.settings.max_retained_bytes,
                    crate::throttle::left_out(suppressed)
                );
            }
            return;
        }
        if self.store.is_some() {
            ops.push(Op::SetRetained {
                topic: message.topic.as_str().to_owned(),
                message: (!message.payload.is_empty()).then(|| message.clone()),
            });
        }
    }

    /// Makes [`Broker::tick`] look at the sessions again by `at`, when something of an
    /// offline session falls due then.
    fn due_by(&self, at: Option<Instant>) {
        if at.is_some() {
            let mut next = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
            *next = session::earliest(*next, at);
        }
    }

    /// Publishes wills whose delay is over and ends sessions past their expiry, once
    /// one is due; forgets expired retained messages. Called about once a second.
    pub fn tick(&self, now: Instant) {
        let due = {
            let mut next = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
            let due = next.is_some_and(|at| at <= now);
            if due {
                *next = None;
            }
            due
        };
        if due {
            self.end_due_sessions(now);
        }
        self.wake_silent(now);
        self.shrink_grown_queues();
        self.retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .purge_expired(now);
    }

    /// Milliseconds since the broker was made: the keep-alive sweep's clock.
    pub fn clock_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Wakes each connection that has heard nothing for 1.5 times its keep-alive; it
    /// closes itself ([`Client::is_silent`]). Forgets connections that have ended.
    fn wake_silent(&self, now: Instant) {
        let now_ms = self.clock_ms(now);
        let mut watched = self.keep_alive.lock().unwrap_or_else(|p| p.into_inner());
        watched.retain(|link| {
            let Some(link) = link.upgrade() else {
                return false;
            };
            if link.is_silent(now_ms) {
                link.notify();
            }
            true
        });
        let len = watched.len();
        if watched.capacity() > 64 && len < watched.capacity() / 4 {
            watched.shrink_to(len * 2);
        }
    }

    fn end_due_sessions(&self, now: Instant) {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut next_due = None;
        for session in sessions {
            let (will, expired) = {
                let mut st = session.lock();
                if st.connected {
                    continue;
                }
                let will = match st.pending_will() {
                    Some(w) if w.1 <= now => st.take_pending_will().map(|w| w.0),
                    _ => None,
                };
                if will.is_some() && st.stored {
                    self.submit(vec![Op::SetWill {
                        sid: session.sid.get(),
                        will: None,
                    }]);
                }
                let expired = st.expires_at().is_some_and(|at| now >= at);
                if !expired {
                    next_due = session::earliest(next_due, st.next_deadline());
                }
                (will, expired)
            };
            if let Some(will) = will {
                self.publish(will, now);
            }
            if expired {
                log::info!("session expired client_id={}", session.client_id);
                self.remove_session(&session, now);
            }
        }
        self.due_by(next_due);
    }

    /// Asks every connection to close with 0x8B (server shutting down).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in sessions {
            let mut st = session.lock();
            if st.connected {
                st.close_reason.get_or_insert(CloseReason::ShuttingDown);
                drop(st);
                session.notify_owner();
            }
        }
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

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Refusals of retained messages for the limits come in floods: logged throttled.
static RETAINED_FULL: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// Puts a resumed session's stored deliveries before what was queued since: the ones
/// sent before the restart back in flight, the rest at the head of the queue.
fn restore_backlog(st: &mut SessionState, stored: Vec<crate::store::StoredDelivery>) {
    let mut queue = VecDeque::with_capacity(stored.len() + st.queue.len());
    let mut inflight = VecDeque::new();
    for d in stored {
        let delivery = Delivery {
            message: Arc::new(d.message),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids,
            shared: d.shared.map(Into::into),
            seq: Some(d.seq),
        };
        match d.inflight {
            Some((packet_id, stage)) => inflight.push_back(Inflight {
                packet_id,
                stage,
                delivery,
            }),
            None => {
                st.queued_bytes +=
                    delivery.message.payload.len() + delivery.message.topic.as_str().len();
                queue.push_back(delivery);
            }
        }
    }
    queue.append(&mut st.queue.take());
    st.queue = queue.into();
    inflight.append(&mut st.inflight.take());
    st.inflight = inflight.into();
}

/// What one session receives from the subscriptions of it that matched, or `None`
/// when no-local rules them all out.
fn merge(message: &Arc<Message>, matches: &[Match]) -> Option<Delivery> {
    let mut delivery: Option<Delivery> = None;
    for m in matches {
        let o = &m.subscription.options;
        if o.no_local && message.origin.as_deref() == Some(&*m.session.client_id) {
            continue;
        }
        let d = delivery.get_or_insert_with(|| Delivery {
            message: message.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: m.shared.cloned(),
            seq: None,
        });
        d.qos = d.qos.max(message.qos.min(o.qos));
        d.retain |= o.retain_as_published && message.retain;
        d.subscription_ids.extend(m.subscription.id);
    }
    delivery
}

/// Hands the pages a drained burst freed back to the system. glibc keeps freed memory
/// for reuse and returns only the top of its heap, so the burst's messages, freed
/// between longer-lived allocations, would stay in RSS; `malloc_trim` returns every
/// whole free page. Called at most once a tick, and only once a burst has drained.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
