//! Routing a publish: the router's matches merged into one delivery per session,
//! queued under one lock per session and batch, retained messages kept within their
//! limits, and what the store must keep of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::router::Match;
use super::session::{Delivered, Session};
use super::{Broker, count};
use crate::message::{Delivery, Message};
use crate::protocol::QoS;
use crate::store::Op;

/// Where one published message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Queued for this many sessions (a v5 publisher is told 0x10 when none).
    Sessions(usize),
    /// A full bridge outbox refused it, so its publisher must be refused too (never
    /// acknowledged).
    Refused,
}

pub struct Routed {
    pub reached: Reached,
    /// A session whose queue passed its high-water mark.
    pub pressure: Option<Arc<Session>>,
}

/// Refusals of retained messages for the limits come in floods: logged throttled.
static RETAINED_FULL: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// What one session receives from the subscriptions of it that matched, or `None`
/// when no-local rules them all out.
fn merge(message: &Arc<Message>, matches: &[Match]) -> Option<Delivery> {
    let mut delivery: Option<Delivery> = None;
    for m in matches {
        let o = &m.subscription.options;
        if o.no_local && message.origin.as_deref() == Some(&*m.session.client_id) {
            continue;
        }
        let d = delivery.get_or_insert_with(|| Delivery {
            message: message.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: m.shared.cloned(),
            seq: None,
        });
        d.qos = d.qos.max(message.qos.min(o.qos));
        d.retain |= o.retain_as_published && message.retain;
        d.subscription_ids.extend(m.subscription.id);
    }
    delivery
}

impl Broker {
    /// Routes one message (a will, say) and stores what it left for stored sessions;
    /// see [`Broker::publish_batch`].
    pub fn publish(&self, message: Message, now: Instant) -> Routed {
        let mut reached = Vec::with_capacity(1);
        let mut ops = Vec::new();
        let pressure = self.publish_batch(vec![Arc::new(message)], &mut reached, &mut ops, now);
        self.submit(ops);
        Routed {
            reached: reached[0],
            pressure,
        }
    }

    /// Routes a batch of messages from one publisher, in order. Appends to `reached`
    /// where each message went,
    /// appends to `ops` what the store must keep of it (the caller submits them,
    /// together with its own), and returns a session whose queue is filling up, which
    /// the publisher should wait for before sending more. Each session is locked and
    /// woken once per batch, not once per message: that is what keeps fan-in and
    /// fan-out cheap.
    pub fn publish_batch(
        &self,
        messages: Vec<Arc<Message>>,
        reached: &mut Vec<Reached>,
        ops: &mut Vec<Op>,
        now: Instant,
    ) -> Option<Arc<Session>> {
        self.metrics
            .messages_received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        // Tallied per batch: the counters are shared by every connection's thread.
        let mut by_qos = [0u64; 3];
        for message in &messages {
            by_qos[message.qos as usize] += 1;
        }
        for (counter, n) in self.metrics.received_by_qos.iter().zip(by_qos) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.route(messages, reached, ops, Some(now))
    }

    /// Publishes what the broker says itself (`$SYS`, bridge states): routed and
    /// retained like any message, not counted as received from a client.
    ///
    /// A retained one is kept in memory only, outside the retained limits: it is
    /// published again after a restart, and writing it to the store every few seconds
    /// would wear an SD card for nothing.
    pub fn publish_internal(&self, message: Message) {
        let message = Arc::new(message);
        if message.retain {
            self.retained
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .set_unbounded(&message);
        }
        let mut reached = Vec::with_capacity(1);
        let mut ops = Vec::new();
        self.route(vec![message], &mut reached, &mut ops, None);
        self.submit(ops);
    }

    /// Routes `messages`; `keep_retained` at `now` keeps (and stores) the retained ones,
    /// within the retained limits (the broker's own keeps them itself).
    pub(super) fn route(
        &self,
        messages: Vec<Arc<Message>>,
        reached: &mut Vec<Reached>,
        ops: &mut Vec<Op>,
        keep_retained: Option<Instant>,
    ) -> Option<Arc<Session>> {
        if let Some(now) = keep_retained {
            for message in messages.iter().filter(|m| m.retain) {
                self.set_retained(message, ops, now);
            }
        }
        let mut staged: Vec<(Arc<Session>, Vec<Delivery>)> = Vec::new();
        let mut slots: HashMap<*const Session, usize> = HashMap::new();
        {
            let router = self.router.read().unwrap_or_else(|p| p.into_inner());
            let mut matches = Vec::new();
            for message in &messages {
                matches.clear();
                router.matches(message.topic.as_str(), &mut matches);
                // One delivery per session however many of its subscriptions matched
                // (MQTT 5.0 section 3.3.4): highest QoS, every subscription identifier.
                matches.sort_unstable_by_key(|m| (m.shared.is_some(), Arc::as_ptr(m.session)));
                let mut n = 0;
                let mut i = 0;
                while i < matches.len() {
                    let first = &matches[i];
                    let mut j = i + 1;
                    while j < matches.len()
                        && first.shared.is_none()
                        && matches[j].shared.is_none()
                        && Arc::ptr_eq(matches[j].session, first.session)
                    {
                        j += 1;
                    }
                    if let Some(delivery) = merge(message, &matches[i..j]) {
                        let slot = *slots.entry(Arc::as_ptr(first.session)).or_insert_with(|| {
                            staged.push((first.session.clone(), Vec::new()));
                            staged.len() - 1
                        });
                        staged[slot].1.push(delivery);
                        n += 1;
                    }
                    i = j;
                }
                reached.push(Reached::Sessions(n));
            }
        }
        let limits = self.queue_limits();
        let mut pressure = None;
        let first = reached.len() - messages.len();
        for (session, deliveries) in staged {
            let delivered = session.deliver(deliveries, &limits, self.store.as_deref(), ops);
            self.count_delivered(&session, &delivered);
            for message in delivered.refused {
                if let Some(i) = messages.iter().position(|m| Arc::ptr_eq(m, &message)) {
                    reached[first + i] = Reached::Refused;
                }
            }
            if delivered.pressure && pressure.is_none() {
                pressure = Some(session);
            }
        }
        pressure
    }

    /// Queues one delivery outside a publish (retained on SUBSCRIBE, a shared message
    /// handed on), counting it if the session's queue drops it.
    pub(super) fn enqueue(&self, session: &Arc<Session>, delivery: Delivery) {
        let mut ops = Vec::new();
        let delivered = session.deliver(
            vec![delivery],
            &self.queue_limits(),
            self.store.as_deref(),
            &mut ops,
        );
        self.submit(ops);
        self.count_delivered(session, &delivered);
    }

    /// Counts what a session's queue dropped, and watches a queue that grew.
    pub(super) fn count_delivered(&self, session: &Arc<Session>, delivered: &Delivered) {
        self.metrics
            .dropped_queue_full
            .fetch_add(delivered.dropped, Ordering::Relaxed);
        if delivered.grew {
            self.watch_grown_queue(session);
        }
    }

    pub(super) fn watch_grown_queue(&self, session: &Arc<Session>) {
        self.grown_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(session));
    }

    /// Keeps (or, for an empty payload, deletes) a topic's retained message, within
    /// the retained limits, and stores it.
    pub(super) fn set_retained(&self, message: &Arc<Message>, ops: &mut Vec<Op>, now: Instant) {
        let kept = self
            .retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set(message);
        if !kept {
            count(&self.metrics.dropped_retained_full);
            if let Some(suppressed) = RETAINED_FULL.check(now) {
                log::warn!(
                    "retained message on {:?} not kept: max_retained_messages {} or max_retained_bytes {} reached{}",
                    message.topic.as_str(),
                    self.settings.max_retained_messages,
                    self.settings.max_retained_bytes,
                    crate::throttle::left_out(suppressed)
                );
            }
            return;
        }
        if self.store.is_some() {
            ops.push(Op::SetRetained {
                topic: message.topic.as_str().to_owned(),
                message: (!message.payload.is_empty()).then(|| message.clone()),
            });
        }
    }
}
