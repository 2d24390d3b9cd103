//! The session table: every session by its client id. Each entry is the session's
//! pointer alone, hashed by the client id the session already holds; a map from
//! `Arc<str>` to `Arc<Session>` kept three words per entry, most of an idle
//! connection's share of the table.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::session::Session;

#[derive(Default)]
pub struct SessionTable(HashSet<ById>);

/// A session, equal to another and hashed by its client id.
struct ById(Arc<Session>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, which `Borrow<str>` requires.
        (*self.0.client_id).hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

impl SessionTable {
    pub fn get(&self, client_id: &str) -> Option<&Arc<Session>> {
        self.0.get(client_id).map(|entry| &entry.0)
    }

    /// Adds `session`; returns the one it replaces under the same client id.
    pub fn insert(&mut self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.0.replace(ById(session)).map(|entry| entry.0)
    }

    pub fn remove(&mut self, client_id: &str) -> Option<Arc<Session>> {
        self.0.take(client_id).map(|entry| entry.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.0.iter().map(|entry| &entry.0)
    }

    /// Makes room for `more` sessions.
    pub fn reserve(&mut self, more: usize) {
        self.0.reserve(more);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;
    use std::num::NonZeroU64;

    fn session(client_id: &str) -> Arc<Session> {
        Arc::new(Session::new(
            client_id.into(),
            ProtocolVersion::V5,
            0,
            NonZeroU64::MIN,
        ))
    }

    #[test]
    fn sessions_are_found_and_replaced_by_client_id() {
        let mut table = SessionTable::default();
        let first = session("a");
        assert!(table.insert(first.clone()).is_none());
        assert!(table.insert(session("b")).is_none());
        assert!(Arc::ptr_eq(table.get("a").unwrap(), &first));
        let second = session("a");
        let replaced = table.insert(second.clone()).unwrap();
        assert!(Arc::ptr_eq(&replaced, &first));
        assert!(Arc::ptr_eq(table.get("a").unwrap(), &second));
        assert_eq!(table.len(), 2);
        assert!(Arc::ptr_eq(&table.remove("a").unwrap(), &second));
        assert!(table.get("a").is_none() && table.remove("a").is_none());
        assert_eq!(table.values().count(), 1);
    }
}
