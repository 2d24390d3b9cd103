//! Retained messages (MQTT 5.0 section 3.3.1.3): the last retained message per topic,
//! handed to new subscriptions whose filter matches it. Bounded in count and bytes:
//! a retained message for a new topic beyond either limit is not kept (replacing or
//! deleting an existing topic's always works).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::session::earliest;
use crate::message::Message;
use crate::protocol::topic;

pub struct Retained {
    by_topic: HashMap<Box<str>, Entry>,
    /// Topics and bytes of clients' retained messages; the broker's own (`$SYS`) are
    /// outside the limits and these counts.
    topics: usize,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// No message expires before this: [`Retained::purge_expired`] has nothing to do
    /// until then, however many messages are kept.
    next_expiry: Option<Instant>,
}

struct Entry {
    message: Arc<Message>,
    /// A client's message, counted against the limits (not the broker's own).
    counted: bool,
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
            next_expiry: None,
        }
    }

    /// Stores a retained message, or deletes the topic's one for an empty payload.
    /// Returns false when the limits leave no room for it.
    pub fn set(&mut self, message: &Arc<Message>) -> bool {
        let old = self
            .by_topic
            .get(message.topic.as_str())
            .filter(|e| e.counted)
            .map(|e| size(&e.message));
        if !message.payload.is_empty()
            && ((old.is_none() && self.topics >= self.max_messages)
                || self.bytes - old.unwrap_or(0) + size(message) > self.max_bytes)
        {
            return false;
        }
        self.put(message, true);
        true
    }

    /// [`Retained::set`] without the limits or the counts, for the broker's own
    /// messages (`$SYS`, alarms).
    pub fn set_unbounded(&mut self, message: &Arc<Message>) {
        self.put(message, false);
    }

    fn put(&mut self, message: &Arc<Message>, counted: bool) {
        let topic = message.topic.as_str();
        let old = if message.payload.is_empty() {
            self.by_topic.remove(topic)
        } else {
            self.next_expiry = earliest(self.next_expiry, message.expires_at);
            let entry = Entry {
                message: message.clone(),
                counted,
            };
            self.by_topic.insert(topic.into(), entry)
        };
        if let Some(old) = old.filter(|e| e.counted) {
            self.bytes -= size(&old.message);
            self.topics -= 1;
        }
        if counted && !message.payload.is_empty() {
            self.bytes += size(message);
            self.topics += 1;
        }
    }

    /// Retained messages whose topic `filter` matches, skipping expired ones.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.by_topic
            .iter()
            .filter(|(t, e)| topic::matches(filter, t) && !e.message.is_expired(now))
            .map(|(_, e)| e.message.clone())
            .collect()
    }

    /// Forgets retained messages past their expiry.
    pub fn purge_expired(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|next| now < next) {
            return;
        }
        let (mut bytes, mut topics) = (0, 0);
        let mut next_expiry: Option<Instant> = None;
        self.by_topic.retain(|_, e| {
            let keep = !e.message.is_expired(now);
            if !keep && e.counted {
                bytes += size(&e.message);
                topics += 1;
            }
            if keep {
                next_expiry = earliest(next_expiry, e.message.expires_at);
            }
            keep
        });
        self.next_expiry = next_expiry;
        self.bytes -= bytes;
        self.topics -= topics;
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
    fn the_brokers_own_messages_are_not_counted_and_a_client_may_replace_them() {
        let mut r = Retained::new(1, 1000);
        r.set_unbounded(&retained("$SYS/x", b"internal"));
        assert_eq!(r.len(), 0);
        assert!(
            r.set(&retained("a", b"1")),
            "the broker's message takes no room"
        );
        // A client's retained message on a `$` topic replaces an internal one.
        assert!(
            !r.set(&retained("$SYS/x", b"client")),
            "over the count of 1"
        );
        assert!(r.set(&retained("a", b"")), "deleting is always allowed");
        assert!(r.set(&retained("$SYS/x", b"client")));
        assert_eq!(r.len(), 1);
        r.set_unbounded(&retained("$SYS/x", b"internal again"));
        assert_eq!(r.len(), 0);
        assert_eq!(r.bytes, 0);
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

    #[test]
    fn expired_messages_go_at_their_time_and_not_before() {
        let now = Instant::now();
        let mut r = Retained::new(10, 1000);
        let mut soon = Message::new("a", Bytes::from_static(b"x"), QoS::AtMostOnce, true);
        soon.expires_at = Some(now + std::time::Duration::from_secs(5));
        r.set(&Arc::new(soon));
        r.set(&retained("b", b"y"));
        r.purge_expired(now + std::time::Duration::from_secs(4));
        assert_eq!(r.len(), 2);
        r.purge_expired(now + std::time::Duration::from_secs(5));
        assert_eq!(r.len(), 1);
        assert_eq!(r.next_expiry, None, "no other message expires");
    }
}
