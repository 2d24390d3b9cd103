//! What the broker and the store both speak of: an application message as the router
//! carries it (decoded once, shared by every subscriber through an `Arc`, its payload
//! never copied), one session's delivery of it and the stage of its QoS flow, and the
//! inline strings that name sessions and topic levels. The store persists these
//! without knowing the broker; the broker keeps them in sessions.

mod small_str;

pub use small_str::SmallStr;

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::{Publish, QoS, Topic, Will};

#[derive(Debug)]
pub struct Message {
    pub topic: Topic,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Payload format, content type, response topic, correlation data and user
    /// properties, encoded once and copied into each v5 delivery unchanged.
    pub forwarded_properties: Bytes,
    /// When the message expires (monotonic clock); `None` means never.
    pub expires_at: Option<Instant>,
    /// The publishing session, for no-local subscriptions.
    pub origin: Option<SmallStr>,
    /// How it reached this broker, which decides where it may go on to.
    pub via: Via,
    /// Its id in the store, given when it is first stored.
    pub store_id: StoreId,
    /// The store ticket that must be durable before a subscriber may receive it:
    /// set for a QoS 2 message from a stored session under `strict` durability, so that
    /// no client sees a message whose exactly-once record a crash could still lose.
    pub durable_after: DurableAfter,
}

/// How a message reached this broker. A message goes on to other brokers at most once:
/// one that came from a cluster peer reaches local sessions only (never a bridge's or
/// another peer's outbox), and one that came through a bridge never goes to a peer
/// (every node runs the same bridges, so each peer has its own copy already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// From a client of this broker (or the broker itself).
    Client,
    /// From a central broker, through one of this broker's bridges.
    Bridge,
    /// From a cluster peer. `shared`: the message was sent here for one member of a
    /// shared subscription this node announced under that identifier, not for its
    /// plain subscriptions.
    Peer { shared: Option<NonZeroU32> },
}

/// A store ticket: the store numbers the changes handed to it in order, and a change
/// is durable once its ticket is (see `crate::store`). "Nothing to wait for" is
/// `None`, never a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(NonZeroU64);

impl Ticket {
    /// `None` for 0, which numbers no change.
    pub fn new(number: u64) -> Option<Ticket> {
        NonZeroU64::new(number).map(Ticket)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// A message's id in the store: none until it is first stored, then one for good,
/// shared by every stored delivery of it.
#[derive(Debug, Default)]
pub struct StoreId(AtomicU64);

impl StoreId {
    pub fn get(&self) -> Option<NonZeroU64> {
        NonZeroU64::new(self.0.load(Ordering::Acquire))
    }

    /// The id, given from `fresh` the first time; of two racing, one wins for both.
    pub fn get_or_give(&self, fresh: impl FnOnce() -> NonZeroU64) -> NonZeroU64 {
        if let Some(id) = self.get() {
            return id;
        }
        let id = fresh();
        match self
            .0
            .compare_exchange(0, id.get(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => id,
            Err(existing) => NonZeroU64::new(existing).unwrap_or(id),
        }
    }

    /// The id a message read back from the store had.
    pub fn set(&self, id: NonZeroU64) {
        self.0.store(id.get(), Ordering::Release);
    }
}

/// A stored delivery's sequence number in the store (never 0).
pub type Seq = NonZeroU64;

/// When subscribers may see a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Now,
    /// Once a store ticket its publisher's connection has not learnt yet is durable.
    Unknown,
    After(Ticket),
}

/// A message's [`Visibility`], shared: its publisher's connection learns the ticket
/// after the message was queued for subscribers, whose connections read it.
#[derive(Debug)]
pub struct DurableAfter(AtomicU64);

impl DurableAfter {
    const UNKNOWN: u64 = u64::MAX;

    pub fn now() -> DurableAfter {
        DurableAfter(AtomicU64::new(0))
    }

    pub fn get(&self) -> Visibility {
        match self.0.load(Ordering::Acquire) {
            Self::UNKNOWN => Visibility::Unknown,
            raw => Ticket::new(raw).map_or(Visibility::Now, Visibility::After),
        }
    }

    pub fn set_unknown(&self) {
        self.0.store(Self::UNKNOWN, Ordering::Release);
    }

    /// Known at last: after `ticket`, or at once.
    pub fn set(&self, ticket: Option<Ticket>) {
        self.0
            .store(ticket.map_or(0, Ticket::get), Ordering::Release);
    }
}

impl Message {
    /// A message with no properties, no expiry and no publisher (the broker's own,
    /// or a test's).
    pub fn new(topic: impl Into<Topic>, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            forwarded_properties: Bytes::new(),
            expires_at: None,
            origin: None,
            via: Via::Client,
            store_id: StoreId::default(),
            durable_after: DurableAfter::now(),
        }
    }

    pub fn from_publish(publish: Publish, origin: Option<SmallStr>, now: Instant) -> Message {
        Message {
            expires_at: expiry(publish.properties.message_expiry_interval, now),
            forwarded_properties: publish.properties.forwarded_message_properties(),
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            origin,
            via: Via::Client,
            store_id: StoreId::default(),
            durable_after: DurableAfter::now(),
        }
    }

    pub fn from_will(will: Will, origin: Option<SmallStr>, now: Instant) -> Message {
        Message {
            expires_at: expiry(will.properties.message_expiry_interval, now),
            forwarded_properties: will.properties.forwarded_message_properties(),
            topic: Topic::from(will.topic),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            origin,
            via: Via::Client,
            store_id: StoreId::default(),
            durable_after: DurableAfter::now(),
        }
    }

    /// Seconds left before expiry, rounded up; `None` when it never expires.
    /// `Some(0)` means it has expired and must not be delivered.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at?.saturating_duration_since(now);
        if left.is_zero() {
            return Some(0);
        }
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(u32::try_from(seconds).unwrap_or(u32::MAX))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry(now) == Some(0)
    }
}

fn expiry(interval: Option<u32>, now: Instant) -> Option<Instant> {
    interval.map(|secs| now + Duration::from_secs(u64::from(secs)))
}

/// One message on its way to one session, with what that session's subscriptions
/// made of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/group/filter`) it came through, so that it can
    /// be handed to another member if this session ends before it is acknowledged.
    pub shared: Option<Arc<str>>,
    /// Its sequence number in the store, while it is stored.
    pub seq: Option<Seq>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitingPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitingPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubComp,
}

impl Stage {
    /// Its code in the store and in a session image handed to another node.
    pub fn code(self) -> u8 {
        match self {
            Stage::AwaitingPubAck => 1,
            Stage::AwaitingPubRec => 2,
            Stage::AwaitingPubComp => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Stage> {
        match code {
            1 => Some(Stage::AwaitingPubAck),
            2 => Some(Stage::AwaitingPubRec),
            3 => Some(Stage::AwaitingPubComp),
            _ => None,
        }
    }
}

impl Stage {
    /// The packet this stage waits for.
    pub fn acknowledgement(self) -> &'static str {
        match self {
            Stage::AwaitingPubAck => "PUBACK",
            Stage::AwaitingPubRec => "PUBREC",
            Stage::AwaitingPubComp => "PUBCOMP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_expiry_rounds_up_to_whole_seconds() {
        let now = Instant::now();
        let mut m = Message::new("t", Bytes::new(), QoS::AtMostOnce, false);
        assert_eq!(m.remaining_expiry(now), None);
        for (left, seconds) in [
            (Duration::ZERO, 0),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(u64::from(u32::MAX) + 5), u32::MAX),
        ] {
            m.expires_at = Some(now + left);
            assert_eq!(m.remaining_expiry(now), Some(seconds), "{left:?} left");
        }
    }

    #[test]
    fn a_message_stays_in_its_allocation_class() {
        // An Arc'd message is one block: glibc adds 8 bytes and rounds to 16, and 176
        // bytes (the Arc's two counts included) is the largest of the 192-byte class.
        let size = std::mem::size_of::<Message>();
        assert!(size + 16 <= 184, "Message is {size} bytes");
    }
}
