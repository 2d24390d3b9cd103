//! What the dashboard sees of the messages routed: the recent topics
//! ([`super::topics`]) and the taps ([`super::tap`]). Both are fed from the publish
//! path, once per batch, and cost one flag test each when nobody looks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Broker;
use super::tap::Tap;
use super::topics::RecentTopics;
use crate::message::Message;
use crate::protocol::topic;

/// Taps open at once, at most: each is a page watching.
pub const MAX_TAPS: usize = 16;

/// Why a tap was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapRefused {
    BadFilter(String),
    TooMany,
}

impl Broker {
    /// Shows `messages`, routed at `now`, to the recent topics and the taps.
    pub(super) fn observe(&self, messages: &[Arc<Message>], now: Instant) {
        if self.settings.recent_topics > 0 {
            self.recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(messages, now);
        }
        if self.tapped.load(Ordering::Relaxed) {
            self.offer_to_taps(messages);
        }
    }

    fn offer_to_taps(&self, messages: &[Arc<Message>]) {
        let mut ended = false;
        {
            let taps = self.taps.read().unwrap_or_else(|p| p.into_inner());
            for tap in taps.iter() {
                for message in messages {
                    if !tap.offer(message) {
                        ended = true;
                        break;
                    }
                }
            }
        }
        if ended {
            self.forget_ended_taps();
        }
    }

    fn forget_ended_taps(&self) {
        let mut taps = self.taps.write().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| !t.is_ended());
        self.tapped.store(!taps.is_empty(), Ordering::Relaxed);
    }

    /// Opens a tap on `filter` (a filter as SUBSCRIBE takes it, not a shared one).
    pub fn open_tap(&self, filter: &str) -> Result<Arc<Tap>, TapRefused> {
        topic::validate_filter(filter)
            .map_err(|e| TapRefused::BadFilter(e.describe().to_owned()))?;
        if filter.starts_with("$share/") {
            return Err(TapRefused::BadFilter(
                "a tap watches a filter, not a shared subscription".into(),
            ));
        }
        self.forget_ended_taps();
        let mut taps = self.taps.write().unwrap_or_else(|p| p.into_inner());
        if taps.len() >= MAX_TAPS {
            return Err(TapRefused::TooMany);
        }
        let tap = Arc::new(Tap::new(filter));
        taps.push(tap.clone());
        self.tapped.store(true, Ordering::Relaxed);
        Ok(tap)
    }

    /// Taps open now.
    pub fn tap_count(&self) -> usize {
        self.forget_ended_taps();
        self.taps.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Ends every tap: the broker stops.
    pub(super) fn close_taps(&self) {
        for tap in self.taps.read().unwrap_or_else(|p| p.into_inner()).iter() {
            tap.close();
        }
        self.forget_ended_taps();
    }

    /// Runs `look` over the recent topics, with them locked: keep it short.
    pub fn recent_topics<T>(&self, look: impl FnOnce(&RecentTopics) -> T) -> T {
        look(&self.recent.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
