//! A session: what the broker keeps for one client id between and across connections
//! (MQTT 5.0 section 4.1): subscriptions, the queue of messages not yet sent, QoS 1/2
//! messages in flight each way, the will, and when the session expires.
//!
//! Everything here is plain data behind one mutex, so the persistence issue can store
//! and reload it as it is. The connection that currently owns the session is named by
//! `generation`: a takeover bumps it and wakes the old connection, which then leaves.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;

use super::subscriptions::Subscriptions;
use crate::message::{Delivery, Message, Seq, SmallStr, Stage};
use crate::protocol::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use crate::store::{Op, Store};

/// Session Expiry Interval meaning "never expires" (MQTT 5.0 section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

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
}

impl Session {
    pub fn new(
        client_id: SmallStr,
        protocol: ProtocolVersion,
        expiry: u32,
        sid: NonZeroU64,
    ) -> Session {
        Session {
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

    /// Queues several deliveries under one lock and wakes the connection at most once;
    /// for a stored session, appends the ops that store them to `ops`.
    pub fn deliver(
        &self,
        deliveries: Vec<Delivery>,
        limits: &QueueLimits,
        store: Option<&Store>,
        ops: &mut Vec<Op>,
    ) -> Delivered {
        let mut st = self.lock();
        let was_empty = st.queue.is_empty();
        let kept_before = st.queue.capacity() <= QUEUE_KEPT;
        let (mut pressure, mut dropped, mut overflow) = (false, 0, false);
        let mut refused = Vec::new();
        let store = store.filter(|_| st.stored).map(|s| (s, self.sid.get()));
        for delivery in deliveries {
            let message = delivery.message.clone();
            match st.enqueue(delivery, limits, store, ops) {
                Enqueued::Queued { pressure: p, .. } => pressure |= p,
                Enqueued::Dropped => dropped += 1,
                Enqueued::Overflow => {
                    dropped += 1;
                    overflow = true;
                }
                Enqueued::Refused => refused.push(message),
            }
        }
        let wake = overflow || (was_empty && !st.queue.is_empty());
        let link = if wake { st.link.clone() } else { None };
        let grew = kept_before && st.queue.capacity() > QUEUE_KEPT;
        drop(st);
        if let Some(link) = link {
            link.notify();
        }
        Delivered {
            pressure,
            dropped,
            refused,
            grew,
        }
    }
}

/// What [`Session::deliver`] did.
pub struct Delivered {
    /// Publishers should wait for this session to drain.
    pub pressure: bool,
    pub dropped: u64,
    /// Messages a full bridge outbox refused: their publishers must not be acknowledged.
    pub refused: Vec<Arc<Message>>,
    /// The queue's buffer grew past [`QUEUE_KEPT`]: the broker watches it until
    /// [`SessionState::shrink_queue`] has given the burst's room back.
    pub grew: bool,
}

/// Deliveries' room a queue keeps between bursts (64 bytes each). A queue that grew
/// past it is shrunk by the broker's tick once drained, not as it drains: giving the
/// buffer back on every drain cost fan-out about 10 % in page faults.
pub const QUEUE_KEPT: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for persistent sessions while they are offline.
    pub queue_qos0_offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// `pressure`: the queue is past half its limit, so the publisher should pause
    /// until it drains (back-pressure) rather than push it over the edge.
    Queued { was_empty: bool, pressure: bool },
    /// QoS 0 to a full queue, or to a session that is offline: dropped and counted.
    Dropped,
    /// QoS 1/2 to a full queue of a session that made no durability promise: its
    /// connection is closed with 0x97 (quota exceeded).
    Overflow,
    /// QoS 1/2 to a full bridge outbox under `strict`: not queued, and its publisher is
    /// refused rather than acknowledged (the design guide's overload rule).
    Refused,
}

/// Client ids of bridge outboxes (`$bridge/NAME`): a network client may not use them,
/// since taking one over would empty the outbox.
pub const OUTBOX_PREFIX: &str = "$bridge/";

/// The client id of bridge `name`'s outbox.
pub fn outbox_client_id(name: &str) -> String {
    format!("{OUTBOX_PREFIX}{name}")
}

/// A bridge's outbox: its own bounds, and what it does when they are reached.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub limits: QueueLimits,
    /// Make room by dropping the oldest message (`batched`, `memory`); otherwise a full
    /// outbox refuses QoS 1/2 messages (`strict`).
    pub drops_oldest: bool,
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

/// Past this many queued messages or bytes, publishers wait for the queue to drain.
fn high_water(limits: &QueueLimits) -> (usize, usize) {
    (limits.max_queued_messages / 2, limits.max_queued_bytes / 2)
}

/// A collection most sessions leave empty: a null pointer until first used, given
/// back whenever it empties again ([`Sparse::tidy`]). An idle session pays 8 bytes for
/// it instead of a collection's header, and a burst's buffer does not linger.
pub struct Sparse<T>(Option<Box<T>>);

/// What [`Sparse`] holds.
pub trait Collection: Default + 'static {
    /// An empty one to show while nothing is allocated.
    fn none() -> &'static Self;
    fn is_empty(&self) -> bool;
}

/// [`Collection`] for types with a `const fn new()` and an `is_empty`.
macro_rules! collection {
    ($($collection:ty),*) => {$(
        impl Collection for $collection {
            fn none() -> &'static Self {
                static NONE: $collection = <$collection>::new();
                &NONE
            }

            fn is_empty(&self) -> bool {
                <$collection>::is_empty(self)
            }
        }
    )*};
}

collection!(VecDeque<Inflight>, VecDeque<Delivery>, Vec<u16>);

impl<T: Collection> Sparse<T> {
    /// Gives the allocation back if the collection is empty.
    pub fn tidy(&mut self) {
        if self.0.as_deref().is_some_and(T::is_empty) {
            self.0 = None;
        }
    }

    /// The collection to take things out of, if there is one (`DerefMut` would make
    /// an empty one first).
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Takes the whole collection, leaving nothing allocated.
    pub fn take(&mut self) -> T {
        self.0.take().map(|boxed| *boxed).unwrap_or_default()
    }
}

impl<T> Default for Sparse<T> {
    fn default() -> Self {
        Sparse(None)
    }
}

impl<T: Collection> From<T> for Sparse<T> {
    fn from(collection: T) -> Self {
        let mut sparse = Sparse(Some(Box::new(collection)));
        sparse.tidy();
        sparse
    }
}

impl<T: Collection> std::ops::Deref for Sparse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(collection) => collection,
            None => T::none(),
        }
    }
}

/// Allocates on first use, so meant for adding: take things out through
/// [`Sparse::get_mut`], then call [`Sparse::tidy`].
impl<T: Collection> std::ops::DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
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

    fn tidy_parked(&mut self) {
        if self
            .parked
            .as_ref()
            .is_some_and(|p| p.will.is_none() && p.backlog.is_none())
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

    /// Gives back what a drained burst left in the queue's buffer: all of it when the
    /// queue is empty, else down to twice what it holds. Whether the buffer is still
    /// larger than [`QUEUE_KEPT`].
    pub fn shrink_queue(&mut self) -> bool {
        let Some(queue) = self.queue.get_mut() else {
            return false;
        };
        if queue.len() * 4 <= queue.capacity() {
            queue.shrink_to(queue.len() * 2);
        }
        let still_large = queue.capacity() > QUEUE_KEPT;
        self.queue.tidy();
        still_large
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

    fn enqueue(
        &mut self,
        delivery: Delivery,
        limits: &QueueLimits,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> Enqueued {
        let outcome = self.try_enqueue(delivery, limits, store, ops);
        if matches!(
            outcome,
            Enqueued::Dropped | Enqueued::Overflow | Enqueued::Refused
        ) {
            self.dropped += 1;
        }
        outcome
    }

    /// Whether the queue has no room for `size` more bytes.
    fn is_full(&self, limits: &QueueLimits, size: usize) -> bool {
        let (backlog_messages, backlog_bytes) = self.backlog().unwrap_or_default();
        self.queue.len() + backlog_messages >= limits.max_queued_messages
            || self.queued_bytes + backlog_bytes + size > limits.max_queued_bytes
    }

    /// Drops the oldest queued messages until `size` more bytes fit; false when the
    /// queue holds nothing in memory to drop (a backlog still on disk).
    fn drop_oldest(
        &mut self,
        limits: &QueueLimits,
        size: usize,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> bool {
        while self.is_full(limits, size) {
            let Some(oldest) = self.queue.get_mut().and_then(VecDeque::pop_front) else {
                return false;
            };
            self.queued_bytes -= oldest.message.payload.len() + oldest.message.topic.as_str().len();
            self.dropped += 1;
            if let Some((_, sid)) = store {
                ops.extend(done_op(sid, &oldest));
            }
        }
        true
    }

    fn try_enqueue(
        &mut self,
        mut delivery: Delivery,
        limits: &QueueLimits,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> Enqueued {
        let outbox = self.outbox.as_deref().copied();
        let limits = outbox.as_ref().map_or(limits, |o| &o.limits);
        let offline = !self.connected;
        if delivery.qos == QoS::AtMostOnce
            && offline
            && !(limits.queue_qos0_offline && self.is_persistent())
        {
            return Enqueued::Dropped;
        }
        let size = delivery.message.payload.len() + delivery.message.topic.as_str().len();
        let mut full = self.is_full(limits, size);
        match outbox {
            Some(o) if full && o.drops_oldest => full = !self.drop_oldest(limits, size, store, ops),
            Some(_) if full && delivery.qos > QoS::AtMostOnce => return Enqueued::Refused,
            _ => {}
        }
        if full {
            if delivery.qos > QoS::AtMostOnce && self.connected && !self.is_persistent() {
                self.close_reason.get_or_insert(CloseReason::QueueFull);
                return Enqueued::Overflow;
            }
            return Enqueued::Dropped;
        }
        if let Some((store, sid)) = store {
            if delivery.qos > QoS::AtMostOnce || offline {
                let seq = store.new_seq();
                delivery.seq = Some(seq);
                ops.push(add_op(sid, seq, &delivery, store));
            }
        }
        let was_empty = self.queue.is_empty();
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        let (messages, bytes) = high_water(limits);
        let pressure = self.connected
            && !self.stalled
            && (self.queue.len() >= messages || self.queued_bytes >= bytes);
        self.pressured |= pressure;
        Enqueued::Queued {
            was_empty,
            pressure,
        }
    }

    /// True once when the queue has drained to half its high-water mark after being
    /// pressured or stalled: the caller wakes waiting publishers.
    /// `limits` are the broker's; a bridge's outbox has its own.
    pub fn take_drained(&mut self, limits: &QueueLimits) -> bool {
        if !(self.pressured || self.stalled) {
            return false;
        }
        let limits = self.outbox.as_deref().map_or(limits, |o| &o.limits);
        let (messages, bytes) = high_water(limits);
        if self.queue.len() <= messages / 2 && self.queued_bytes <= bytes / 2 {
            self.pressured = false;
            self.stalled = false;
            return true;
        }
        false
    }

    pub fn pop_queued(&mut self) -> Option<Delivery> {
        // A drained queue keeps its buffer: giving it back after each batch cost the
        // fan-out scenario about a tenth of its rate in page faults and mallocs.
        let delivery = self.queue.get_mut()?.pop_front()?;
        self.queued_bytes -= delivery.message.payload.len() + delivery.message.topic.as_str().len();
        Some(delivery)
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

    /// The ops that store this whole session as it is now, for a session that starts
    /// to outlive its connection; its deliveries get new sequence numbers.
    pub fn snapshot(&mut self, sid: u64, client_id: &SmallStr, store: &Store) -> Vec<Op> {
        self.stored = true;
        let mut ops = vec![Op::PutSession {
            sid,
            client_id: client_id.clone(),
            protocol: self.protocol.level(),
            expiry: self.expiry_interval,
            disconnected_at: None,
        }];
        ops.extend(
            self.subscriptions
                .iter()
                .map(|(filter, s)| Op::PutSubscription {
                    sid,
                    filter: filter.to_owned(),
                    options: s.options.to_byte(),
                    identifier: s.id,
                }),
        );
        ops.extend(
            self.inbound_qos2
                .iter()
                .map(|&packet_id| Op::AddInbound { sid, packet_id }),
        );
        // Through `get_mut`: `DerefMut` would allocate the lists that are empty.
        for f in self
            .inflight
            .get_mut()
            .into_iter()
            .flat_map(|f| f.iter_mut())
        {
            let seq = store.new_seq();
            f.delivery.seq = Some(seq);
            ops.push(add_op(sid, seq, &f.delivery, store));
            ops.push(Op::SentDelivery {
                sid,
                seq: seq.get(),
                packet_id: f.packet_id,
                stage: f.stage,
            });
        }
        for d in self.queue.get_mut().into_iter().flat_map(|q| q.iter_mut()) {
            let seq = store.new_seq();
            d.seq = Some(seq);
            ops.push(add_op(sid, seq, d, store));
        }
        ops
    }
}

/// The op that stores one delivery under `seq`.
pub fn add_op(sid: u64, seq: Seq, d: &Delivery, store: &Store) -> Op {
    store.message_id(&d.message);
    Op::AddDelivery {
        sid,
        seq: seq.get(),
        message: d.message.clone(),
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids.clone(),
        shared: d.shared.clone(),
    }
}

/// The op that removes a stored delivery, once it is acknowledged or discarded.
pub fn done_op(sid: u64, d: &Delivery) -> Option<Op> {
    d.seq.map(|seq| Op::DoneDelivery {
        sid,
        seq: seq.get(),
        message_id: d.message.store_id.load(Ordering::Acquire),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_sparse_collection_is_allocated_while_it_holds_something() {
        let mut ids: Sparse<Vec<u16>> = Sparse::default();
        assert!(ids.is_empty() && ids.0.is_none());
        ids.push(7);
        ids.push(9);
        assert_eq!(*ids, [7, 9]);
        ids.swap_remove(0);
        ids.tidy();
        assert!(ids.0.is_some(), "still holds 9");
        ids.swap_remove(0);
        ids.tidy();
        assert!(ids.0.is_none(), "given back once empty");
        assert!(Sparse::from(Vec::<u16>::new()).0.is_none());
        assert_eq!(Sparse::from(vec![3]).take(), [3]);
    }

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new("t", Bytes::from_static(b"p"), qos, false)),
            qos,
            retain: false,
            subscription_ids: vec![],
            shared: None,
            seq: None,
        }
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_queued_messages: 2,
        max_queued_bytes: 1 << 20,
        queue_qos0_offline: false,
    };

    #[test]
    fn a_full_outbox_drops_its_oldest_message() {
        let s = Session::new(
            "$bridge/b".into(),
            ProtocolVersion::V5,
            NEVER_EXPIRES,
            NonZeroU64::MIN,
        );
        s.lock().outbox = Some(Box::new(Outbox {
            limits: LIMITS,
            drops_oldest: true,
        }));
        let numbered = |n: &'static [u8]| {
            let mut d = delivery(QoS::AtLeastOnce);
            d.message = Arc::new(Message::new(
                "t",
                Bytes::from_static(n),
                QoS::AtLeastOnce,
                false,
            ));
            d
        };
        // The global limits would allow far more; the outbox's own ones apply.
        let roomy = QueueLimits {
            max_queued_messages: 100,
            ..LIMITS
        };
        for n in [b"1", b"2", b"3"] {
            let queued = s.lock().enqueue(numbered(n), &roomy, None, &mut vec![]);
            assert!(matches!(queued, Enqueued::Queued { .. }));
        }
        let st = s.lock();
        let left: Vec<&[u8]> = st.queue.iter().map(|d| &d.message.payload[..]).collect();
        assert_eq!(left, [b"2", b"3"]);
        assert_eq!(st.dropped, 1);
        drop(st);
        // Under `strict` a full outbox refuses QoS 1/2 instead, and drops QoS 0.
        s.lock().outbox = Some(Box::new(Outbox {
            limits: LIMITS,
            drops_oldest: false,
        }));
        let refused = s.lock().enqueue(numbered(b"4"), &roomy, None, &mut vec![]);
        assert_eq!(refused, Enqueued::Refused);
        let qos0 = s
            .lock()
            .enqueue(delivery(QoS::AtMostOnce), &roomy, None, &mut vec![]);
        assert_eq!(qos0, Enqueued::Dropped);
        assert_eq!(s.lock().queue.len(), 2);
    }

    #[test]
    fn full_queue_drops_qos0_and_overflows_clean_qos1() {
        let s = Session::new("c".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
        s.set_online(&mut s.lock(), true);
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Queued {
                was_empty: true,
                pressure: true
            }
        );
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Queued {
                was_empty: false,
                pressure: true
            }
        );
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Dropped
        );
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Overflow
        );
        assert_eq!(s.lock().close_reason, Some(CloseReason::QueueFull));
        // Popping from a drained queue allocates nothing.
        let mut st = s.lock();
        assert!(st.pop_queued().is_some() && st.pop_queued().is_some());
        assert!(st.pop_queued().is_none() && st.queued_bytes == 0);
        let mut fresh = Session::new("d".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
        assert!(fresh.state.get_mut().unwrap().pop_queued().is_none());
        assert!(fresh.state.get_mut().unwrap().queue.0.is_none());
    }

    #[test]
    fn offline_sessions_do_not_queue_qos0() {
        let s = Session::new("c".into(), ProtocolVersion::V5, 60, NonZeroU64::MIN);
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Dropped
        );
        assert_eq!(
            s.lock()
                .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
            Enqueued::Queued {
                was_empty: true,
                pressure: false
            }
        );
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let s = Session::new("c".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
        let mut st = s.lock();
        st.next_packet_id = 65534;
        let id = st.allocate_packet_id();
        assert_eq!(id, 65535);
        st.inflight.push_back(Inflight {
            packet_id: 1,
            stage: Stage::AwaitingPubAck,
            delivery: delivery(QoS::AtLeastOnce),
        });
        assert_eq!(st.allocate_packet_id(), 2);
    }
}
