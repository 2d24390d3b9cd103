//! Retained messages (MQTT 5.0 section 3.3.1.3): the last retained message per topic,
//! handed to new subscriptions whose filter matches it. Bounded in count and bytes:
//! a retained message for a new topic beyond either limit is not kept (replacing or
//! deleting an existing topic's always works).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;
use crate::protocol::topic;

pub struct Retained {
    by_topic: HashMap<Box<str>, Arc<Message>>,
    /// Topics and bytes of clients' retained messages; the broker's own (`$SYS`) are
    /// outside the limits and these counts.
    topics: usize,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

fn size(message: &Message) -> usize {
    message.topic.as_str().len() + message.payload.len()
}

impl Retained {
    pub fn new(max_messages: usize, max_bytes: usize) -> Retained {
        Retained {
            by_topic: HashMap::new(),
            topics: 0,
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Stores a retained message, or deletes the topic's one for an empty payload.
    /// Returns false when the limits leave no room for it.
    pub fn set(&mut self, message: &Arc<Message>) -> bool {
        let old = self
            .by_topic
            .get(message.topic.as_str())
            .map_or(0, |m| size(m));
        let is_new = old == 0 && !message.payload.is_empty();
        if !message.payload.is_empty()
            && ((is_new && self.topics >= self.max_messages)
                || self.bytes - old + size(message) > self.max_bytes)
        {
            return false;
        }
        self.set_unbounded(message);
        true
    }

    /// [`Retained::set`] without the limits, for the broker's own `$SYS` messages.
    pub fn set_unbounded(&mut self, message: &Arc<Message>) {
        let topic = message.topic.as_str();
        let old = if message.payload.is_empty() {
            self.by_topic.remove(topic)
        } else {
            self.by_topic.insert(topic.into(), message.clone())
        };
        if topic.starts_with('$') {
            return;
        }
        if let Some(old) = &old {
            self.bytes -= size(old);
            self.topics -= 1;
        }
        if !message.payload.is_empty() {
            self.bytes += size(message);
            self.topics += 1;
        }
    }

    /// Retained messages whose topic `filter` matches, skipping expired ones.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.by_topic
            .iter()
            .filter(|(t, m)| topic::matches(filter, t) && !m.is_expired(now))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Forgets retained messages past their expiry.
    pub fn purge_expired(&mut self, now: Instant) {
        let mut freed = 0;
        self.by_topic.retain(|_, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += size(m);
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Clients' retained messages (not the broker's own `$SYS` ones).
    pub fn len(&self) -> usize {
        self.topics
    }

    pub fn is_empty(&self) -> bool {
        self.topics == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
        ))
    }

    #[test]
    fn limits_refuse_new_topics_but_not_replacements() {
        let mut r = Retained::new(2, 1000);
        assert!(r.set(&retained("a", b"1")));
        assert!(r.set(&retained("b", b"2")));
        assert!(
            !r.set(&retained("c", b"3")),
            "a third topic is over the count"
        );
        assert!(
            r.set(&retained("a", b"replaced")),
            "replacing is always allowed"
        );
        assert!(r.set(&retained("a", b"")), "deleting too");
        assert!(r.set(&retained("c", b"3")), "room again");
        let mut small = Retained::new(10, 8);
        assert!(small.set(&retained("t", b"12345")));
        assert!(!small.set(&retained("u", b"12345")), "over the bytes");
        assert_eq!(small.len(), 1);
    }
}
