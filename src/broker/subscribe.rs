//! Subscriptions as the broker keeps them: the limits each meets, the router, the
//! store, and the retained messages a new one is sent.

use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use super::session::{Session, SessionKind, Subscription};
use crate::message::{Delivery, Message};
use crate::protocol::{QoS, ReasonCode, RetainHandling, SubscriptionOptions, topic};
use crate::store::Op;

impl Broker {
    /// Whether `session` may add a subscription to `filter`: a valid filter, within
    /// the topic length and depth limits and `max_subscriptions`, as every subscription
    /// meets them, a client's own or one made on its behalf. The refusal says why, with
    /// the SUBACK's v5 code.
    pub fn check_subscription(
        &self,
        session: &Session,
        filter: &str,
    ) -> Result<(), (ReasonCode, String)> {
        if let Err(e) = topic::validate_filter(filter) {
            return Err((ReasonCode::TOPIC_FILTER_INVALID, e.describe().to_owned()));
        }
        if let Some(why) = self.topic_too_big(filter) {
            return Err((ReasonCode::TOPIC_FILTER_INVALID, why));
        }
        let st = session.lock();
        let is_new = !st.subscriptions.contains(filter);
        let max = self.settings.max_subscriptions;
        if is_new && st.subscriptions.len() >= max {
            return Err((
                ReasonCode::QUOTA_EXCEEDED,
                format!("already {max} subscriptions (max_subscriptions)"),
            ));
        }
        Ok(())
    }

    /// Adds (or replaces) a subscription that [`Broker::check_subscription`] allowed: to the
    /// session, the router and, for a stored session, to `ops`. Returns the retained
    /// messages its retain handling sends now, for the caller to queue after it has
    /// answered the SUBSCRIBE.
    pub fn add_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        subscription: Subscription,
        ops: &mut Vec<Op>,
        now: Instant,
    ) -> Vec<Delivery> {
        let (existed, stored) = {
            let mut st = session.lock();
            (st.add_subscription(filter, subscription), st.stored)
        };
        self.subscribe(session, filter, subscription);
        if session.kind == SessionKind::Client {
            self.session_changed(&session.client_id);
        }
        if stored && self.store.is_some() {
            ops.push(Op::PutSubscription {
                sid: session.sid.get(),
                filter: filter.to_owned(),
                options: subscription.options.to_byte(),
                identifier: subscription.id,
            });
        }
        let send_retained = match subscription.options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send_retained {
            self.retained_for(filter, subscription, now)
        } else {
            Vec::new()
        }
    }

    /// Removes a subscription from the session, the router and, for a stored session,
    /// with an op in `ops`; whether there was one.
    pub fn remove_subscription(&self, session: &Session, filter: &str, ops: &mut Vec<Op>) -> bool {
        let (existed, stored) = {
            let mut st = session.lock();
            (st.remove_subscription(filter), st.stored)
        };
        if existed {
            self.unsubscribe(session, filter);
            if session.kind == SessionKind::Client {
                self.session_changed(&session.client_id);
            }
            if stored && self.store.is_some() {
                ops.push(Op::DeleteSubscription {
                    sid: session.sid.get(),
                    filter: filter.to_owned(),
                });
            }
        }
        existed
    }

    /// Makes `outbox` (what waits for a cluster peer) subscribe to exactly `routes`,
    /// the filters the peer announced with their shared-group identifiers: QoS 2, so
    /// each message keeps its own QoS; retain as published; no retained messages at
    /// subscribing (those replicate on their own); a shared group's identifier as the
    /// subscription identifier, which the peer gets back on each message sent for it.
    pub fn set_peer_routes(
        &self,
        outbox: &Arc<Session>,
        routes: &[(String, Option<u32>)],
        now: Instant,
    ) {
        let mut ops = Vec::new();
        let held: Vec<String> = outbox
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, _)| filter.to_owned())
            .collect();
        for filter in held {
            if !routes.iter().any(|(f, _)| *f == filter) {
                self.remove_subscription(outbox, &filter, &mut ops);
            }
        }
        for (filter, shared) in routes {
            self.add_peer_route(outbox, filter, *shared, &mut ops, now);
        }
        self.submit(ops);
    }

    /// Adds one route a cluster peer announced to its outbox; see
    /// [`Broker::set_peer_routes`].
    pub fn add_peer_route(
        &self,
        outbox: &Arc<Session>,
        filter: &str,
        shared: Option<u32>,
        ops: &mut Vec<Op>,
        now: Instant,
    ) {
        if topic::validate_filter(filter).is_err() {
            log::warn!(
                "{}: a route with the invalid filter {filter:?} was left out",
                outbox.client_id
            );
            return;
        }
        let subscription = Subscription {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
                ..SubscriptionOptions::default()
            },
            id: shared,
        };
        let current = outbox.lock().subscriptions.get(filter);
        if current != Some(subscription) {
            self.add_subscription(outbox, filter, subscription, ops, now);
        }
    }

    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, subscription: Subscription) {
        let added = self
            .router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(filter, session, subscription);
        if added {
            self.route_added(session, filter);
        }
    }

    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let removed = self
            .router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .unsubscribe(filter, &session.client_id);
        if removed {
            self.route_removed(session, filter);
        }
        removed
    }

    /// Counts a client session's new filter in the routes a cluster announces.
    pub(super) fn route_added(&self, session: &Session, filter: &str) {
        if self.settings.track_routes && session.kind == SessionKind::Client {
            self.local_routes().add(filter);
        }
    }

    pub(super) fn route_removed(&self, session: &Session, filter: &str) {
        if self.settings.track_routes && session.kind == SessionKind::Client {
            self.local_routes().remove(filter);
        }
    }

    /// The retained messages a new `subscription` to `filter` is sent, each at most at
    /// the subscription's QoS; none for a shared subscription.
    pub fn retained_for(
        &self,
        filter: &str,
        subscription: Subscription,
        now: Instant,
    ) -> Vec<Delivery> {
        if crate::protocol::topic::parse_shared(filter).is_some() {
            return Vec::new();
        }
        self.retained_matching(filter, now)
            .into_iter()
            .map(|message| Delivery {
                qos: message.qos.min(subscription.options.qos),
                message,
                retain: true,
                subscription_ids: subscription.id.into_iter().collect(),
                shared: None,
                seq: None,
            })
            .collect()
    }

    pub fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matching(filter, now)
    }
}
