//! The topics published lately, for the dashboard's topic tree: per topic how many
//! messages it carried and the last of them, its payload cut to a preview. Bounded by
//! a number of topics ([`Settings::recent_topics`](super::Settings::recent_topics));
//! past it the topics published longest ago are forgotten first. It sits on the
//! publish path, so a batch updates each topic once however many messages it held
//! for it, the preview's buffer is reused, and none of it exists when the dashboard
//! is off (a cap of 0).
//!
//! The preview is a copy, never the message itself: a decoded payload shares the
//! allocation of the read buffer it arrived in, which a kept reference would pin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;
use crate::protocol::QoS;

/// Payloads longer than this keep only their first bytes.
pub const PREVIEW_BYTES: usize = 1024;
/// Topics longer than this are not recorded: a name may be 64 KiB, and the cap on
/// topics would not bound the memory of a few thousand such names.
pub const LONGEST_TOPIC: usize = 512;

/// A message as the dashboard shows it: a copy of its flags and of the first
/// [`PREVIEW_BYTES`] of its payload, never the message itself.
#[derive(Clone)]
pub struct Preview {
    pub qos: QoS,
    pub retain: bool,
    /// The payload's length, of which `bytes` holds the first [`PREVIEW_BYTES`].
    pub size: usize,
    pub bytes: Vec<u8>,
}

impl Preview {
    pub fn of(message: &Message) -> Preview {
        let mut preview = Preview {
            qos: message.qos,
            retain: message.retain,
            size: 0,
            bytes: Vec::new(),
        };
        preview.copy(message);
        preview
    }

    /// Becomes `message`'s preview, in the buffer it has.
    fn copy(&mut self, message: &Message) {
        let payload = &message.payload;
        self.qos = message.qos;
        self.retain = message.retain;
        self.size = payload.len();
        self.bytes.clear();
        self.bytes
            .extend_from_slice(&payload[..payload.len().min(PREVIEW_BYTES)]);
    }
}

/// The last message seen on one topic, and how many it carried.
pub struct Recent {
    pub count: u64,
    pub at: Instant,
    pub last: Preview,
    /// Which topics were published longest ago: larger is more recent.
    order: u64,
}

#[derive(Default)]
pub struct RecentTopics {
    cap: usize,
    topics: HashMap<Box<str>, Recent>,
    order: u64,
}

impl RecentTopics {
    pub fn new(cap: usize) -> RecentTopics {
        RecentTopics {
            cap,
            ..RecentTopics::default()
        }
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Records `messages`, in order, as seen at `now`.
    pub fn record(&mut self, messages: &[Arc<Message>], now: Instant) {
        if self.cap == 0 {
            return;
        }
        let mut i = 0;
        while i < messages.len() {
            let topic = messages[i].topic.as_str();
            let mut j = i + 1;
            while j < messages.len() && messages[j].topic.as_str() == topic {
                j += 1;
            }
            self.record_run(&messages[j - 1], (j - i) as u64, now);
            i = j;
        }
    }

    /// `count` messages on one topic, of which `last` came last.
    fn record_run(&mut self, last: &Message, count: u64, now: Instant) {
        let topic = last.topic.as_str();
        if topic.len() > LONGEST_TOPIC {
            return;
        }
        self.order += 1;
        let order = self.order;
        if !self.topics.contains_key(topic) {
            if self.topics.len() >= self.cap {
                self.forget_oldest();
            }
            let recent = Recent {
                count: 0,
                at: now,
                last: Preview::of(last),
                order,
            };
            self.topics.insert(topic.into(), recent);
        }
        let recent = self
            .topics
            .get_mut(topic)
            .expect("inserted above when missing");
        recent.count += count;
        recent.at = now;
        recent.last.copy(last);
        recent.order = order;
    }

    /// Forgets the eighth of the topics published longest ago (at least one): a scan
    /// every `cap / 8` new topics rather than an ordered index kept on every publish.
    fn forget_oldest(&mut self) {
        let mut orders: Vec<u64> = self.topics.values().map(|r| r.order).collect();
        orders.sort_unstable();
        let newest_forgotten = orders[(orders.len() / 8).max(1) - 1];
        self.topics.retain(|_, r| r.order > newest_forgotten);
    }

    /// Each topic and what was seen on it, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Recent)> {
        self.topics.iter().map(|(t, r)| (&**t, r))
    }

    pub fn get(&self, topic: &str) -> Option<&Recent> {
        self.topics.get(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::copy_from_slice(payload),
            QoS::AtLeastOnce,
            false,
        ))
    }

    #[test]
    fn a_batch_counts_every_message_and_keeps_the_last() {
        let mut topics = RecentTopics::new(10);
        let now = Instant::now();
        let batch = [
            message("a", b"1"),
            message("a", b"2"),
            message("b", b"x"),
            message("a", b"3"),
        ];
        topics.record(&batch, now);
        assert_eq!(
            topics.get("a").map(|r| (r.count, &r.last.bytes[..])),
            Some((3, &b"3"[..]))
        );
        assert_eq!(topics.get("b").map(|r| r.count), Some(1));
    }

    #[test]
    fn long_payloads_keep_a_preview_and_their_size() {
        let mut topics = RecentTopics::new(10);
        topics.record(&[message("big", &[7u8; 5000])], Instant::now());
        let big = topics.get("big").unwrap();
        assert_eq!((big.last.size, big.last.bytes.len()), (5000, PREVIEW_BYTES));
    }

    #[test]
    fn past_the_cap_the_topics_published_longest_ago_go_first() {
        let mut topics = RecentTopics::new(16);
        let now = Instant::now();
        for i in 0..16 {
            topics.record(&[message(&format!("t/{i}"), b"v")], now);
        }
        topics.record(&[message("t/0", b"again")], now);
        topics.record(&[message("t/new", b"v")], now);
        assert!(topics.len() <= 16);
        assert!(topics.get("t/0").is_some(), "republished, so recent");
        assert!(topics.get("t/new").is_some());
        assert!(topics.get("t/1").is_none(), "the oldest is forgotten");
    }

    #[test]
    fn very_long_topics_are_not_recorded() {
        let mut topics = RecentTopics::new(10);
        topics.record(
            &[message(&"x".repeat(LONGEST_TOPIC + 1), b"v")],
            Instant::now(),
        );
        assert!(topics.is_empty());
    }

    #[test]
    fn a_cap_of_zero_records_nothing() {
        let mut topics = RecentTopics::new(0);
        topics.record(&[message("a", b"1")], Instant::now());
        assert!(topics.is_empty());
    }
}
