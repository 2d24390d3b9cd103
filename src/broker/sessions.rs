//! The session table's life cycle: a CONNECT opens a session (new, resumed or taken
//! over) and brings the store up to date; a session ends by expiry, a clean start or
//! its connection, publishing its pending will and handing on what it held from
//! shared subscriptions.

use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use super::link::Link;
use super::restore::restore_backlog;
use super::session::{
    self, CloseReason, NEVER_EXPIRES, Outbox, QueueLimits, Session, SessionKind, SessionState,
};
use crate::message::{Delivery, Ticket};
use crate::protocol::{ProtocolVersion, QoS};
use crate::store::Op;

/// What opening a session found.
pub struct Opened {
    pub session: Arc<Session>,
    pub generation: u32,
    pub present: bool,
    /// The store ticket the CONNACK waits for.
    pub ticket: Option<Ticket>,
}

impl Broker {
    pub(super) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_queued_messages: self.settings.max_queued_messages,
            max_queued_bytes: self.settings.max_queued_bytes,
            queue_qos0_offline: self.settings.queue_qos0_offline,
        }
    }

    /// Takes the session for `client_id` for a new connection: a clean start discards
    /// the old one, otherwise it resumes (with its stored queue read back from disk);
    /// a connection still attached is told to leave with 0x8E (session taken over).
    ///
    /// A session with an expiry of 0 ends with its connection ([MQTT-3.1.2-6]): it is
    /// never resumed, even while that connection is still open or closing, so a
    /// persistent session never inherits a clean one's subscriptions. The expiry is
    /// read under the session's lock, under which a DISCONNECT sets it to 0.
    pub fn open_session(
        &self,
        client_id: &str,
        clean_start: bool,
        protocol: ProtocolVersion,
        expiry_interval: u32,
        link: &Arc<Link>,
        now: Instant,
    ) -> Opened {
        let mut sessions = self.sessions();
        let existing = sessions.get(client_id).cloned();
        let mut outlives_its_connection = false;
        if let Some(old) = &existing {
            let mut st = old.lock();
            outlives_its_connection = st.is_persistent();
            if st.connected {
                st.close_reason = Some(CloseReason::TakenOver);
                st.generation = st.generation.wrapping_add(1);
                old.set_online(&mut st, false);
                if let Some(old_link) = st.link.take() {
                    old_link.notify();
                }
            }
        }
        let resumable = existing.filter(|_| !clean_start && outlives_its_connection);
        let (session, present) = match resumable {
            Some(session) => (session, true),
            None => {
                let sid = match &self.store {
                    Some(store) => store.new_sid(),
                    None => self.next_sid(),
                };
                let session = Arc::new(Session::new(
                    client_id.into(),
                    protocol,
                    expiry_interval,
                    sid,
                ));
                if let Some(old) = sessions.insert(session.clone()) {
                    drop(sessions);
                    self.end_session(&old, now);
                    sessions = self.sessions();
                }
                (session, false)
            }
        };
        drop(sessions);
        let mut st = session.lock();
        st.generation = st.generation.wrapping_add(1);
        st.close_reason = None;
        st.protocol = protocol;
        st.expiry_interval = expiry_interval;
        st.disconnected_at = None;
        let had_will = st.take_pending_will().is_some();
        session.set_online(&mut st, true);
        st.link = Some(link.clone());
        let generation = st.generation;
        let ticket = self.store_opened(&session, &mut st, had_will);
        // A stored queue read back is a burst like any other.
        let grown = st.queue.capacity() > session::QUEUE_KEPT;
        drop(st);
        if grown {
            self.watch_grown_queue(&session);
        }
        if link.keep_alive > 0 {
            let mut watched = self.keep_alive.lock().unwrap_or_else(|p| p.into_inner());
            watched.push(Arc::downgrade(link));
        }
        if session.kind == SessionKind::Client {
            self.session_changed(client_id);
        }
        Opened {
            session,
            generation,
            present,
            ticket,
        }
    }

    /// Brings the store up to date with a session just opened: its stored queue read
    /// back, its row written, updated or (expiry 0) deleted. Returns the ticket.
    pub(super) fn store_opened(
        &self,
        session: &Session,
        st: &mut SessionState,
        had_will: bool,
    ) -> Option<Ticket> {
        let Some(store) = &self.store else {
            return None;
        };
        if st.take_backlog().is_some() {
            match store.load_backlog(session.sid.get()) {
                Ok(stored) => restore_backlog(st, stored),
                Err(e) => log::error!("client_id={}: {e}", session.client_id),
            }
        }
        let sid = session.sid.get();
        let mut ops = Vec::new();
        match (st.is_persistent(), st.stored) {
            (true, true) => {
                ops.push(Op::PutSession {
                    sid,
                    client_id: session.client_id.clone(),
                    protocol: st.protocol.level(),
                    expiry: st.expiry_interval,
                    disconnected_at: None,
                });
                if had_will {
                    ops.push(Op::SetWill { sid, will: None });
                }
            }
            (true, false) => ops = st.snapshot(sid, &session.client_id, store),
            (false, true) => {
                st.stored = false;
                ops.push(Op::DeleteSession { sid });
            }
            (false, false) => {}
        }
        // Under the session's lock, so a publisher's op for this session comes after.
        self.submit(ops)
    }

    /// Whether `session` is still the one registered for its client id.
    pub fn is_current(&self, session: &Arc<Session>) -> bool {
        self.sessions()
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
    }

    /// Removes a session for good if it is still registered, and ends it.
    pub fn remove_session(&self, session: &Arc<Session>, now: Instant) {
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(&session.client_id) {
                Some(s) if Arc::ptr_eq(s, session) => sessions.remove(&session.client_id),
                _ => None,
            }
        };
        if let Some(session) = removed {
            self.end_session(&session, now);
        }
    }

    /// A session's end: its subscriptions leave the router, its pending will is
    /// published, and what it held from shared subscriptions goes to another member.
    pub(super) fn end_session(&self, session: &Arc<Session>, now: Instant) {
        let (filters, will, held) = {
            let mut st = session.lock();
            if std::mem::take(&mut st.stored) {
                self.submit(vec![Op::DeleteSession {
                    sid: session.sid.get(),
                }]);
            }
            let filters = st.subscriptions.take_filters();
            let will = st.take_pending_will().map(|w| w.0);
            let mut held: Vec<Delivery> =
                st.inflight.take().into_iter().map(|f| f.delivery).collect();
            while let Some(d) = st.pop_queued() {
                held.push(d);
            }
            (filters, will, held)
        };
        {
            let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
            for filter in &filters {
                if router.unsubscribe(filter, &session.client_id) {
                    self.route_removed(session, filter);
                }
            }
        }
        for delivery in held {
            let Some(key) = &delivery.shared else {
                continue;
            };
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            let next = self
                .router
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .pick_shared(key, &session.client_id);
            if let Some((session, subscription)) = next {
                // The new member's own subscription identifier: a cluster peer's
                // outbox reads it as the group the message is for.
                let qos = delivery.message.qos.min(subscription.options.qos);
                self.enqueue(
                    &session,
                    Delivery {
                        qos,
                        seq: None,
                        subscription_ids: subscription.id.into_iter().collect(),
                        ..delivery
                    },
                );
            }
        }
        if let Some(will) = will {
            self.publish(will, now);
        }
        if session.kind == SessionKind::Client {
            self.session_changed(&session.client_id);
        }
    }

    /// Makes `client_id`'s session a bridge outbox: its own queue limits, the oldest
    /// message dropped when full. Returns the session, for its figures.
    pub fn make_outbox(&self, client_id: &str, limits: QueueLimits) -> Option<Arc<Session>> {
        let session = self.sessions().get(client_id).cloned()?;
        // Under `strict` nothing acknowledged may be dropped: a full outbox refuses.
        let drops_oldest = !self.store().is_some_and(|s| s.is_strict());
        session.lock().outbox = Some(Box::new(Outbox {
            limits,
            drops_oldest,
        }));
        Some(session)
    }

    /// The session the broker keeps for itself under `client_id` (what waits for a
    /// cluster peer): made persistent and offline, and stored, when it does not exist
    /// yet, so that it queues (and keeps) what is meant for the peer from now on,
    /// whether or not the peer is reachable.
    pub fn keep_session(&self, client_id: &str, now: Instant) -> Arc<Session> {
        let mut sessions = self.sessions();
        if let Some(session) = sessions.get(client_id) {
            return session.clone();
        }
        let sid = match &self.store {
            Some(store) => store.new_sid(),
            None => self.next_sid(),
        };
        let session = Arc::new(Session::new(
            client_id.into(),
            ProtocolVersion::V5,
            NEVER_EXPIRES,
            sid,
        ));
        {
            let mut st = session.lock();
            st.disconnected_at = Some(now);
            if let Some(store) = &self.store {
                let ops = st.snapshot(sid.get(), &session.client_id, store);
                self.submit(ops);
            }
        }
        sessions.insert(session.clone());
        session
    }

    /// Ends the session kept under `client_id`, what it held with it (a cluster peer
    /// gone for longer than its routes are kept).
    pub fn drop_session(&self, client_id: &str, now: Instant) {
        let session = self.sessions().get(client_id).cloned();
        if let Some(session) = session {
            let held = {
                let st = session.lock();
                st.queue.len() + st.inflight.len()
            };
            if held > 0 {
                self.metrics
                    .dropped_queue_full
                    .fetch_add(held as u64, std::sync::atomic::Ordering::Relaxed);
            }
            self.remove_session(&session, now);
        }
    }

    /// The client ids of the sessions of one kind (the outboxes a cluster kept for its
    /// peers across a restart, say).
    pub fn client_ids_of(&self, kind: SessionKind) -> Vec<String> {
        self.sessions()
            .values()
            .filter(|s| s.kind == kind)
            .map(|s| s.client_id.to_string())
            .collect()
    }
}
