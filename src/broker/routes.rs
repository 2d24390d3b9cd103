//! The distinct filters this node's client sessions hold, for a cluster: each peer is
//! told them (aggregated, never per client), so that it sends a message here once
//! whatever number of sessions here it reaches. Kept only while a cluster is on
//! ([`super::Settings::track_routes`]), so a lone broker pays nothing for it.
//!
//! A shared subscription's filter (`$share/GROUP/FILTER`) gets an identifier, a hash
//! of the filter (the same on every node and across restarts): a peer that picks this
//! node for one of the group's messages sends it with that identifier, so it goes to
//! one member here and not to every plain subscriber. Filters of `$` topics are never
//! announced: `$SYS` is each node's own.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use event_listener::{Event, EventListener};

use crate::protocol::topic;

/// One announced filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoute {
    pub filter: Arc<str>,
    /// For a shared subscription: the identifier its messages come back with.
    pub shared: Option<NonZeroU32>,
    /// Client sessions here that hold it (a shared group's members here).
    pub sessions: u32,
}

#[derive(Default)]
pub struct LocalRoutes {
    filters: HashMap<Arc<str>, LocalRoute>,
    /// Bumped by every change that adds or removes a filter, or changes a count.
    version: u64,
    changed: Event,
}

/// The identifier of the shared subscription `filter` (`$share/GROUP/FILTER`): FNV-1a
/// folded to 28 bits, never zero, because it travels as a v5 Subscription Identifier
/// (a variable byte integer of at most 268,435,455). Two groups whose identifiers
/// collide (about one pair in 268 million) are told apart by the topic: see
/// `Broker::match_shared_from_peer`.
pub fn shared_id(filter: &str) -> NonZeroU32 {
    let h = filter.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let folded = (h ^ (h >> 32)) as u32 & MAX_SUBSCRIPTION_ID;
    NonZeroU32::new(folded).unwrap_or(NonZeroU32::MIN)
}

/// The largest Subscription Identifier MQTT 5.0 can carry ([MQTT-3.8.2.1.2]).
const MAX_SUBSCRIPTION_ID: u32 = 268_435_455;

/// Whether a filter is a peer's business: not one of `$` topics (a shared one's inner
/// filter included), which each node keeps to itself.
pub fn is_announced(filter: &str) -> bool {
    let inner = match topic::parse_shared(filter) {
        Some(Ok((_, inner))) => inner,
        Some(Err(_)) => return false,
        None => filter,
    };
    !inner.starts_with('$')
}

impl LocalRoutes {
    /// A client session took `filter`.
    pub fn add(&mut self, filter: &str) {
        if !is_announced(filter) {
            return;
        }
        if let Some(route) = self.filters.get_mut(filter) {
            route.sessions += 1;
        } else {
            let filter: Arc<str> = filter.into();
            let shared = topic::parse_shared(&filter).map(|_| shared_id(&filter));
            self.filters.insert(
                filter.clone(),
                LocalRoute {
                    filter,
                    shared,
                    sessions: 1,
                },
            );
        }
        self.bump();
    }

    /// A client session gave `filter` up.
    pub fn remove(&mut self, filter: &str) {
        let Some(route) = self.filters.get_mut(filter) else {
            return;
        };
        route.sessions -= 1;
        if route.sessions == 0 {
            self.filters.remove(filter);
        }
        self.bump();
    }

    fn bump(&mut self) {
        self.version += 1;
        self.changed.notify(usize::MAX);
    }

    /// Every route, and the version they are as of.
    pub fn snapshot(&self) -> (u64, Vec<LocalRoute>) {
        (self.version, self.filters.values().cloned().collect())
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Notified after every change: listen, then read the version.
    pub fn listen(&self) -> EventListener {
        self.changed.listen()
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_counted_once_each_and_dollar_ones_kept_home() {
        let mut routes = LocalRoutes::default();
        routes.add("a/#");
        routes.add("a/#");
        routes.add("$SYS/#");
        routes.add("$share/g/$SYS/x");
        routes.add("$share/g/b");
        let (version, all) = routes.snapshot();
        assert_eq!(version, 3);
        assert_eq!(all.len(), 2);
        let shared = all.iter().find(|r| r.shared.is_some()).unwrap();
        assert_eq!(shared.shared, Some(shared_id("$share/g/b")));
        assert_ne!(shared_id("$share/g/b"), shared_id("$share/h/b"));
        let long = "$share/workers/jobs/".repeat(50);
        assert!(shared_id(&long).get() <= MAX_SUBSCRIPTION_ID);
        routes.remove("a/#");
        assert_eq!(routes.len(), 2, "one session still holds a/#");
        routes.remove("a/#");
        routes.remove("$share/g/b");
        assert!(routes.is_empty());
        routes.remove("never/added");
        assert_eq!(routes.version(), 6);
    }
}
