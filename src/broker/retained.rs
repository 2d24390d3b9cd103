//! Retained messages (MQTT 5.0 section 3.3.1.3): the last retained message per topic,
//! handed to new subscriptions whose filter matches it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;
use crate::protocol::topic;

#[derive(Default)]
pub struct Retained {
    by_topic: HashMap<Box<str>, Arc<Message>>,
}

impl Retained {
    /// Stores a retained message, or deletes the topic's one for an empty payload.
    pub fn set(&mut self, message: &Arc<Message>) {
        let topic = message.topic.as_str();
        if message.payload.is_empty() {
            self.by_topic.remove(topic);
        } else {
            self.by_topic.insert(topic.into(), message.clone());
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
        self.by_topic.retain(|_, m| !m.is_expired(now));
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}
