//! Routing a publish: the router's matches merged into one delivery per session,
//! queued under one lock per session and batch, retained messages kept within their
//! limits, and what the store must keep of it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::router::{Match, Router};
use super::routes::shared_id;
use super::session::{Delivered, Session, SessionKind};
use super::{Broker, count};
use crate::message::{Delivery, Message, Via};
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
        self.observe(&messages, now);
        self.route(messages, reached, ops, Some(now))
    }

    /// Publishes what the broker says itself (`$SYS`, bridge states): routed and
    /// retained like any message, not counted as received from a client.
    ///
    /// A retained one is kept in memory only, outside the retained limits: it is
    /// published again after a restart, and writing it to the store every few seconds
    /// would wear an SD card for nothing.
    pub fn publish_internal(&self, message: Message, now: Instant) {
        let message = Arc::new(message);
        self.observe(std::slice::from_ref(&message), now);
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
            // A cluster peer's retained messages are replicated on their own (last
            // writer wins), not kept from what it forwards.
            let kept = |m: &&Arc<Message>| m.retain && !matches!(m.via, Via::Peer { .. });
            for message in messages.iter().filter(kept) {
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
                match message.via {
                    Via::Peer {
                        shared: Some(group),
                    } => self.match_shared_from_peer(&router, message, group, &mut matches),
                    via => {
                        router.matches(message.topic.as_str(), &mut matches);
                        if via != Via::Client {
                            matches.retain(|m| goes_on(via, m));
                        }
                    }
                }
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
        // After the router was read: a session that left it was known as moved first.
        if self.moving.load(Ordering::SeqCst) {
            self.redirect_moved(&messages, |session, message| {
                slots
                    .get(&(session as *const Session))
                    .is_some_and(|&slot| {
                        staged[slot]
                            .1
                            .iter()
                            .any(|d| std::ptr::eq(&*d.message, message))
                    })
            });
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

    /// For a message a cluster peer sent for one member of the shared group whose
    /// identifier is `group` (see `routes::shared_id`): a member here, or, when none is
    /// left here, a member on another peer than the one it came from, so that it is not
    /// dropped while the group has a member anywhere this node can reach.
    fn match_shared_from_peer<'a>(
        &self,
        router: &'a Router,
        message: &Message,
        group: NonZeroU32,
        out: &mut Vec<Match<'a>>,
    ) {
        let mut all = Vec::new();
        router.matches(message.topic.as_str(), &mut all);
        let Some(key) = all
            .iter()
            .find_map(|m| m.shared.filter(|key| shared_id(key) == group))
        else {
            log::debug!(
                "a message on {} for a shared group with no member left: dropped",
                message.topic
            );
            return;
        };
        let here = router.pick_in_group(key, |s| {
            (s.kind == SessionKind::Client).then(|| u8::from(!s.is_online()))
        });
        let chosen = here.or_else(|| {
            let from = message
                .origin
                .as_deref()
                .and_then(|o| o.strip_prefix("$cluster/in/"));
            router.pick_in_group(key, |s| {
                let peer = s.client_id.strip_prefix("$cluster/out/")?;
                (s.kind == SessionKind::PeerOutbox && Some(peer) != from)
                    .then(|| u8::from(!s.is_online()))
            })
        });
        out.extend(chosen);
    }

    /// Keeps a retained message (or its deletion) a cluster peer replicated here,
    /// when `newer` (asked with the retained messages locked, so that no write here
    /// comes between its answer and this one) says it wins over what this node has:
    /// within the retained limits and stored, as one set here, but not passed on.
    pub fn apply_peer_retained(
        &self,
        message: Arc<Message>,
        now: Instant,
        newer: impl FnOnce() -> bool,
    ) {
        let mut ops = Vec::new();
        self.keep_retained(&message, &mut ops, now, Kept::FromPeer(newer));
        self.submit(ops);
    }

    /// Keeps (or, for an empty payload, deletes) a topic's retained message, within
    /// the retained limits, and stores it; tells the cluster when it was kept.
    pub(super) fn set_retained(&self, message: &Arc<Message>, ops: &mut Vec<Op>, now: Instant) {
        self.keep_retained(message, ops, now, Kept::Here::<fn() -> bool>);
    }

    /// Keeps (or, for an empty payload, deletes) a topic's retained message within the
    /// limits, with the op that stores it.
    fn keep_retained<F: FnOnce() -> bool>(
        &self,
        message: &Arc<Message>,
        ops: &mut Vec<Op>,
        now: Instant,
        from: Kept<F>,
    ) {
        let kept = {
            let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
            match from {
                Kept::FromPeer(newer) => {
                    if !newer() {
                        return;
                    }
                    retained.set(message)
                }
                Kept::Here => {
                    let kept = retained.set(message);
                    if let (true, Some(replicator)) = (kept, self.replicator.get()) {
                        replicator.retained_changed(message);
                    }
                    kept
                }
            }
        };
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

/// Where a retained message comes from: set here (the cluster is told), or from a
/// cluster peer, kept only when newer than this node's.
enum Kept<F> {
    Here,
    FromPeer(F),
}

/// Whether a match may receive a message that came `via` another broker: one from a
/// bridge goes everywhere but to a cluster peer (every node has its own copy); one
/// from a peer reaches this node's own sessions only, and its plain subscriptions
/// only (the peer picked the shared groups' members itself).
fn goes_on(via: Via, m: &Match) -> bool {
    match via {
        Via::Client => true,
        Via::Bridge => m.session.kind != SessionKind::PeerOutbox,
        Via::Peer { .. } => m.shared.is_none() && m.session.kind == SessionKind::Client,
    }
}
