//! Subscriptions as the broker keeps them: the limits each meets, the router, the
//! store, and the retained messages a new one is sent.

use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use super::session::{Session, Subscription};
use crate::message::{Delivery, Message};
use crate::protocol::{ReasonCode, RetainHandling, topic};
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

    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, subscription: Subscription) {
        self.router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(filter, session, subscription);
    }

    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        self.router
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .unsubscribe(filter, &session.client_id)
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
