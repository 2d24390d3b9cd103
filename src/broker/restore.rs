//! Start-up: the sessions, subscriptions, pending wills and retained messages the
//! store kept, loaded back into the broker (a session's queue stays on disk until it
//! resumes, then [`restore_backlog`] puts it back in order).

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::Arc;

use super::Broker;
use super::session::{Inflight, Session, SessionState, Subscription};
use crate::message::{Delivery, SmallStr};
use crate::protocol::{ProtocolVersion, SubscriptionOptions};
use crate::store::Loaded;

/// Puts a resumed session's stored deliveries before what was queued since: the ones
/// sent before the restart back in flight, the rest at the head of the queue.
pub(super) fn restore_backlog(st: &mut SessionState, stored: Vec<crate::store::StoredDelivery>) {
    let mut queue = VecDeque::with_capacity(stored.len() + st.queue.len());
    let mut inflight = VecDeque::new();
    for d in stored {
        let delivery = Delivery {
            message: Arc::new(d.message),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids,
            shared: d.shared.map(Into::into),
            seq: Some(d.seq),
        };
        match d.inflight {
            Some((packet_id, stage)) => inflight.push_back(Inflight {
                packet_id,
                stage,
                delivery,
            }),
            None => {
                st.queued_bytes +=
                    delivery.message.payload.len() + delivery.message.topic.as_str().len();
                queue.push_back(delivery);
            }
        }
    }
    queue.append(&mut st.queue.take());
    st.queue = queue.into();
    inflight.append(&mut st.inflight.take());
    st.inflight = inflight.into();
}

impl Broker {
    pub(super) fn restore(&self, loaded: Loaded) {
        let Some(store) = &self.store else { return };
        let clock = &store.clock;
        let mut sessions = self.sessions();
        // Sized once: growing it would hash every session's client id again, through
        // the session, at each doubling.
        sessions.reserve(loaded.sessions.len());
        let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
        for stored in loaded.sessions {
            let protocol = ProtocolVersion::of_level(stored.protocol);
            let expiry = match protocol {
                ProtocolVersion::V5 => stored.expiry.min(self.settings.max_session_expiry),
                _ => self.settings.persistent_client_expiration,
            };
            let client_id = SmallStr::from(stored.client_id);
            let Some(sid) = NonZeroU64::new(stored.sid) else {
                log::warn!("stored session {client_id:?} has session id 0: skipped");
                continue;
            };
            let session = Arc::new(Session::new(client_id.clone(), protocol, expiry, sid));
            {
                let mut st = session.lock();
                st.stored = true;
                st.disconnected_at = Some(clock.instant(stored.disconnected_at));
                st.inbound_qos2 = stored.inbound_qos2.into();
                if let Some((message, due)) = stored.will {
                    let message = message.into_message(Some(client_id.clone()), clock);
                    st.set_pending_will(message, clock.instant(due));
                }
                self.due_by(st.next_deadline());
                if stored.backlog_messages > 0 {
                    st.set_backlog(stored.backlog_messages, stored.backlog_bytes);
                }
                for (filter, options, id) in stored.subscriptions {
                    let Some(options) = SubscriptionOptions::from_byte(options) else {
                        log::warn!(
                            "stored subscription {filter:?} of {client_id:?} has bad options {options:#04x}: skipped"
                        );
                        continue;
                    };
                    let subscription = Subscription { options, id };
                    st.add_subscription(&filter, subscription);
                    if router.subscribe(&filter, &session, subscription) {
                        self.route_added(&session, &filter);
                    }
                }
            }
            sessions.insert(session);
        }
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        for message in loaded.retained {
            retained.set(&Arc::new(message));
        }
        log::info!(
            "store loaded: {} sessions, {} retained messages ({} expired sessions and {} expired or orphaned queued messages purged)",
            sessions.len(),
            retained.len(),
            loaded.purged_sessions,
            loaded.purged_deliveries
        );
    }
}
