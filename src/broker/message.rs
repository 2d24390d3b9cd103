//! An application message as the router carries it: decoded once, shared by every
//! subscriber through an `Arc`, its payload never copied.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::small_str::SmallStr;
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
    /// Its id in the store, given when it is first stored; 0 until then.
    pub store_id: AtomicU64,
    /// The store ticket that must be durable before a subscriber may receive it:
    /// set for a QoS 2 message from a stored session under `strict` durability, so that
    /// no client sees a message whose exactly-once record a crash could still lose.
    /// 0: nothing to wait for; [`DURABLE_PENDING`]: the ticket is not known yet.
    pub durable_after: AtomicU64,
}

/// See [`Message::durable_after`].
pub const DURABLE_PENDING: u64 = u64::MAX;

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
            store_id: AtomicU64::new(0),
            durable_after: AtomicU64::new(0),
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
            store_id: AtomicU64::new(0),
            durable_after: AtomicU64::new(0),
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
            store_id: AtomicU64::new(0),
            durable_after: AtomicU64::new(0),
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
    /// Its sequence number in the store; 0 when it is not stored.
    pub seq: u64,
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
}
