//! What the management API reads and does through the broker: the connected clients
//! and their figures, every subscription, subscriptions on a client's behalf, and
//! kicks.

use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use super::link::Link;
use super::session::{CloseReason, Session, Subscription};
use crate::message::{Message, SmallStr};
use crate::protocol::{QoS, ReasonCode, SubscriptionOptions};

/// A connected client as the management API lists it.
pub struct ClientView {
    pub client_id: SmallStr,
    pub info: Arc<Link>,
    pub queued: usize,
    pub inflight: usize,
    pub subscriptions: usize,
    pub dropped: u64,
    /// The session's, in seconds: CONNECT's or what DISCONNECT set.
    pub expiry_interval: u32,
}

/// Why a subscription on a client's behalf was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    NotConnected,
    /// What the client's own SUBSCRIBE would have been told, and why.
    Refused(ReasonCode, String),
}

impl Broker {
    /// The connected clients, with their queue figures.
    pub fn clients(&self) -> Vec<ClientView> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        sessions
            .iter()
            .filter_map(|session| {
                let st = session.lock();
                let info = st.link.clone()?;
                Some(ClientView {
                    client_id: session.client_id.clone(),
                    info,
                    queued: st.queue.len() + st.backlog().map_or(0, |(n, _)| n),
                    inflight: st.inflight.len(),
                    subscriptions: st.subscriptions.len(),
                    dropped: st.dropped,
                    expiry_interval: st.expiry_interval,
                })
            })
            .collect()
    }

    /// Every session's subscriptions (online or not): client id, filter, options.
    pub fn subscription_list(&self) -> Vec<(SmallStr, String, Subscription)> {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut out = Vec::new();
        for session in sessions {
            let st = session.lock();
            for (filter, subscription) in st.subscriptions.iter() {
                out.push((session.client_id.clone(), filter.to_owned(), subscription));
            }
        }
        out
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The retained messages (not those under `$` topics), newest state of each topic.
    pub fn retained_list(&self, now: Instant) -> Vec<Arc<Message>> {
        self.retained_matching("#", now)
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Subscribes a connected client to `filter` on its behalf (the management API),
    /// with the limits its own SUBSCRIBE would meet, storing the subscription when its
    /// session is stored and sending it the retained messages that match.
    pub fn subscribe_for(
        &self,
        client_id: &str,
        filter: &str,
        qos: QoS,
        now: Instant,
    ) -> Result<(), SubscribeError> {
        let session = self.sessions().get(client_id).cloned();
        let Some(session) = session.filter(|s| s.is_online()) else {
            return Err(SubscribeError::NotConnected);
        };
        if let Err((code, why)) = self.check_subscription(&session, filter) {
            return Err(SubscribeError::Refused(code, why));
        }
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let subscription = Subscription { options, id: None };
        let mut ops = Vec::new();
        let retained = self.add_subscription(&session, filter, subscription, &mut ops, now);
        self.submit(ops);
        for delivery in retained {
            self.enqueue(&session, delivery);
        }
        Ok(())
    }

    /// Removes a connected client's subscription on its behalf: `None` when it is not
    /// connected, otherwise whether the subscription existed.
    pub fn unsubscribe_for(&self, client_id: &str, filter: &str) -> Option<bool> {
        let session = self.sessions().get(client_id).cloned()?;
        if !session.is_online() {
            return None;
        }
        let mut ops = Vec::new();
        let existed = self.remove_subscription(&session, filter, &mut ops);
        self.submit(ops);
        Some(existed)
    }

    /// Disconnects `client_id` (DISCONNECT 0x98 for v5); whether it was connected.
    pub fn kick(&self, client_id: &str) -> bool {
        let Some(session) = self.sessions().get(client_id).cloned() else {
            return false;
        };
        let mut st = session.lock();
        if !st.connected {
            return false;
        }
        st.close_reason = Some(CloseReason::Kicked);
        let link = st.link.clone();
        drop(st);
        if let Some(link) = link {
            link.notify();
        }
        true
    }
}
