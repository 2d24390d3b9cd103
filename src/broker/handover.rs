//! A persistent session moving between brokers (cluster nodes): the node that holds it
//! [`Broker::release_session`]s it into a [`SessionImage`] (subscriptions, queue,
//! messages in flight with their packet ids and stage, inbound QoS 2 ids), and the
//! node its client reconnected to [`Broker::adopt_session`]s that image before it
//! answers CONNECT, so the session resumes there with session present = 1.
//!
//! The image is plain data, encoded by whoever carries it; no clock crosses over
//! (a message's expiry travels as the seconds it has left).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Broker;
use super::restore::restore_backlog;
use super::session::{CloseReason, Inflight, Session, SessionKind, Subscription, add_op};
use crate::message::{Delivery, Message, SmallStr, Stage, Via};
use crate::protocol::{ProtocolVersion, QoS, SubscriptionOptions, Topic, topic};
use crate::store::Op;

/// How long, after the node a session moved to announced its routes, this node still
/// passes on what matches them: what the other nodes sent before they learned those
/// routes is on its way (announcements go out 50 ms apart, and a link may be loaded).
/// What arrives later went to the new node directly.
const REDIRECT_AFTER_ANNOUNCED: Duration = Duration::from_millis(250);

/// How long a node waits at most for that announcement (the new node may be gone).
const REDIRECT_AT_MOST: Duration = Duration::from_secs(10);

/// A session handed to node `to`, a moment ago. Its filters stay among the routes this
/// node announces until `to` announces them, so that no node is left without a route
/// for them in between; what reaches this node for the session meanwhile goes on to
/// `to` (the messages follow the session itself on the same link, so they arrive
/// after it).
pub(super) struct Moved {
    client_id: String,
    to: String,
    protocol: u8,
    expiry: u32,
    subscriptions: Vec<(String, Subscription)>,
    /// The filters this node still announces for it.
    held: Vec<String>,
    /// When `to` announced them.
    announced: Option<Instant>,
    since: Instant,
    /// The session as it was here: a publisher that found it in the router just before
    /// it left may still queue a message on it, which goes on to `to` as well.
    session: Arc<Session>,
    /// Its image goes to `to` ahead of anything this node forwards after it (the answer
    /// to a claim, written on the link at once): a message forwarded by a route `to`
    /// announces then finds the session there, and is not passed on too.
    image_first: bool,
}

impl Moved {
    fn redirects(&self, now: Instant) -> bool {
        match self.announced {
            Some(at) => now < at + REDIRECT_AFTER_ANNOUNCED,
            None => now < self.since + REDIRECT_AT_MOST,
        }
    }

    /// What the session would have received of `message` here, as its subscriptions
    /// make it (highest QoS, every identifier, no-local, retain as published).
    fn delivery(&self, message: &Message, now: Instant) -> Option<ImageDelivery> {
        let mut delivery: Option<ImageDelivery> = None;
        for (filter, s) in &self.subscriptions {
            let o = &s.options;
            if !topic::matches(filter, message.topic.as_str())
                || (o.no_local && message.origin.as_deref() == Some(self.client_id.as_str()))
            {
                continue;
            }
            let d = delivery.get_or_insert_with(|| ImageDelivery {
                qos: 0,
                retain: false,
                ..ImageDelivery::of_message(message, now)
            });
            d.qos = d.qos.max(message.qos.min(o.qos) as u8);
            d.retain |= o.retain_as_published && message.retain;
            d.subscription_ids.extend(s.id);
        }
        delivery
    }
}

/// What a persistent session holds, as it moves to another node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionImage {
    /// The protocol level of its last connection (3, 4 or 5).
    pub protocol: u8,
    /// Session Expiry Interval in seconds.
    pub expiry: u32,
    /// Filter, options byte, subscription identifier.
    pub subscriptions: Vec<(String, u8, Option<u32>)>,
    /// Not yet sent, oldest first.
    pub queue: Vec<ImageDelivery>,
    /// Sent and not yet completed: packet id, stage (`Stage::code`), oldest first.
    pub inflight: Vec<(u16, u8, ImageDelivery)>,
    /// Inbound QoS 2 packet ids not yet released.
    pub inbound_qos2: Vec<u16>,
}

/// One delivery in an image: the message and what the session's subscriptions made
/// of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageDelivery {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The message as published: QoS, retain flag, v5 properties passed on.
    pub message_qos: u8,
    pub message_retain: bool,
    pub properties: Vec<u8>,
    /// Seconds left before it expires.
    pub expiry: Option<u32>,
    /// The publishing client, for no-local.
    pub origin: Option<String>,
    /// As delivered to this session.
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared: Option<String>,
}

impl SessionImage {
    /// Its subscriptions only: a session rebuilt from a replicated record when the
    /// node that held it cannot be reached.
    pub fn subscriptions_only(
        protocol: u8,
        expiry: u32,
        subscriptions: Vec<(String, u8, Option<u32>)>,
    ) -> SessionImage {
        SessionImage {
            protocol,
            expiry,
            subscriptions,
            ..SessionImage::default()
        }
    }

    /// Its messages, in flight or queued, all as queued (to be sent again).
    fn messages_only(self) -> SessionImage {
        let mut queue: Vec<ImageDelivery> = self
            .inflight
            .into_iter()
            .filter(|(_, stage, _)| Stage::from_code(*stage) != Some(Stage::AwaitingPubComp))
            .map(|(_, _, d)| d)
            .collect();
        queue.extend(self.queue);
        SessionImage {
            protocol: self.protocol,
            expiry: self.expiry,
            queue,
            ..SessionImage::default()
        }
    }

    /// Messages queued or in flight.
    pub fn messages(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }
}

/// Why a session is adopted; see [`Broker::adopt_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    Resumed,
    Stale,
}

impl ImageDelivery {
    fn of(delivery: &Delivery, now: Instant) -> ImageDelivery {
        ImageDelivery {
            qos: delivery.qos as u8,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            shared: delivery.shared.as_ref().map(|s| s.to_string()),
            ..ImageDelivery::of_message(&delivery.message, now)
        }
    }

    /// A message as published (a will, say), delivered as it is.
    pub fn of_message(m: &Message, now: Instant) -> ImageDelivery {
        ImageDelivery {
            topic: m.topic.to_string(),
            payload: m.payload.to_vec(),
            message_qos: m.qos as u8,
            message_retain: m.retain,
            properties: m.forwarded_properties.to_vec(),
            expiry: m.remaining_expiry(now),
            origin: m.origin.as_ref().map(|o| o.to_string()),
            qos: m.qos as u8,
            retain: m.retain,
            subscription_ids: Vec::new(),
            shared: None,
        }
    }

    /// The message itself, as published (a will to publish, say).
    pub fn into_message(self, now: Instant) -> Message {
        let mut message = Message::new(
            Topic::from(self.topic.as_str()),
            Bytes::from(self.payload),
            QoS::from_u8(self.message_qos).unwrap_or(QoS::AtMostOnce),
            self.message_retain,
        );
        message.forwarded_properties = Bytes::from(self.properties);
        message.expires_at = self
            .expiry
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        message.origin = self.origin.map(SmallStr::from);
        message
    }

    fn into_delivery(self, now: Instant) -> Delivery {
        let (qos, retain) = (self.qos, self.retain);
        let subscription_ids = self.subscription_ids.clone();
        let shared = self.shared.clone();
        let mut message = self.into_message(now);
        // It is delivered to this one session only, never routed again.
        message.via = Via::Peer { shared: None };
        Delivery {
            message: Arc::new(message),
            qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
            retain,
            subscription_ids,
            shared: shared.map(Into::into),
            seq: None,
        }
    }
}

impl Broker {
    /// Gives up the session of `client_id` to node `to`, where its client connected
    /// (`clean_start` as that CONNECT asked), or where it goes while this node stops.
    /// A connection still attached here is closed for `reason` (0x8E session taken
    /// over, 0x8B server shutting down). A persistent session resumed there comes
    /// back as its image and ends here without its will (the old connection's own will
    /// is published as it closes, as on a takeover within one node); otherwise the
    /// session ends here as a clean start would end it, will and all, and `None` is
    /// returned. For a moment, what reaches this node for the session that moved goes
    /// on to `to` ([`Replicator::redirect`](super::Replicator::redirect)); see [`Moved`]
    /// (`image_first`: the image is written to `to` before anything forwarded after).
    pub fn release_session(
        &self,
        client_id: &str,
        to: &str,
        image_first: bool,
        clean_start: bool,
        reason: CloseReason,
        now: Instant,
    ) -> Option<SessionImage> {
        let session = self.sessions().get(client_id).cloned()?;
        if session.kind != SessionKind::Client {
            return None;
        }
        let persistent = {
            let mut st = session.lock();
            if st.connected {
                st.close_reason = Some(reason);
                // A takeover names the new connection the owner (the old one's pump says
                // 0x8E); a connection closed for its node's stop is told its reason.
                if reason == CloseReason::TakenOver {
                    st.generation = st.generation.wrapping_add(1);
                }
                session.set_online(&mut st, false);
                if let Some(old_link) = st.link.take() {
                    old_link.notify();
                }
            }
            st.is_persistent()
        };
        if clean_start || !persistent {
            self.remove_session(&session, now);
            return None;
        }
        // Out of the table and the router first, so nothing more is queued for it here.
        let removed = {
            let mut sessions = self.sessions();
            match sessions.get(client_id) {
                Some(s) if Arc::ptr_eq(s, &session) => sessions.remove(client_id),
                _ => None,
            }
        };
        removed.as_ref()?;
        let image = {
            let mut st = session.lock();
            let subscriptions: SubscriptionList = st
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.to_owned(), s.options.to_byte(), s.id))
                .collect();
            // Known as moved before it leaves the router: a publisher that no longer
            // finds it there finds it here (see `route`).
            self.moved_to(Moved {
                client_id: client_id.to_owned(),
                to: to.to_owned(),
                protocol: st.protocol.level(),
                expiry: st.expiry_interval,
                subscriptions: st
                    .subscriptions
                    .iter()
                    .filter(|(filter, _)| !filter.starts_with("$share/"))
                    .map(|(filter, s)| (filter.to_owned(), s))
                    .collect(),
                held: Vec::new(),
                announced: None,
                since: now,
                session: session.clone(),
                image_first,
            });
            let filters = st.subscriptions.take_filters();
            let mut held = Vec::new();
            {
                let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
                for filter in filters {
                    if !router.unsubscribe(&filter, &session.client_id) {
                        continue;
                    }
                    if filter.starts_with("$share/") {
                        self.route_removed(&session, &filter);
                    } else {
                        held.push(filter.to_string());
                    }
                }
            }
            if let Some(moved) = self.moved().get_mut(client_id) {
                moved.held = held;
            }
            if let (Some(_), Some(store)) = (st.take_backlog(), &self.store) {
                match store.load_backlog(session.sid.get()) {
                    Ok(stored) => restore_backlog(&mut st, stored),
                    Err(e) => log::error!("client_id={client_id}: {e}"),
                }
            }
            // Its connection's will is published or dropped as the session goes on
            // elsewhere (see `Client::connection_lost`); one waiting for its delay is
            // dropped, as on a resume within its delay.
            let _ = st.take_pending_will();
            let inflight = st
                .inflight
                .take()
                .into_iter()
                .map(|f| {
                    (
                        f.packet_id,
                        f.stage.code(),
                        ImageDelivery::of(&f.delivery, now),
                    )
                })
                .collect();
            let mut queue = Vec::with_capacity(st.queue.len());
            while let Some(d) = st.pop_queued() {
                queue.push(ImageDelivery::of(&d, now));
            }
            let image = SessionImage {
                protocol: st.protocol.level(),
                expiry: st.expiry_interval,
                subscriptions,
                queue,
                inflight,
                inbound_qos2: st.inbound_qos2.take(),
            };
            if std::mem::take(&mut st.stored) {
                self.submit(vec![Op::DeleteSession {
                    sid: session.sid.get(),
                }]);
            }
            image
        };
        self.session_changed(client_id);
        Some(image)
    }

    /// Takes a session another node gave up (see [`Broker::release_session`]) as the
    /// persistent session of `client_id`. For a CONNECT that asked to resume it
    /// (`Resumed`) it is made offline, what was in flight keeps its packet ids, and a
    /// session of that id already here keeps what it holds behind the image's messages.
    /// What a stale copy held (`Stale`: its node was away while the client connected
    /// elsewhere) joins the end of the queue of the session here, in flight or not, to
    /// be sent again (QoS 1 may repeat; nothing is lost).
    pub fn adopt_session(&self, client_id: &str, image: SessionImage, how: Adopt, now: Instant) {
        let existing = self
            .sessions()
            .get(client_id)
            .filter(|s| s.kind == SessionKind::Client)
            .cloned();
        let state = existing.as_ref().map(|s| {
            let st = s.lock();
            (st.is_persistent(), st.connected)
        });
        // A connection here has the session already (it came back before this did):
        // what the image holds joins it as messages only.
        let how = match (how, state) {
            (Adopt::Resumed, Some((_, true))) => Adopt::Stale,
            (how, _) => how,
        };
        if how == Adopt::Resumed {
            self.forget_moved(client_id);
        }
        let session = match (existing, state) {
            (Some(s), Some((true, _))) => s,
            (Some(_), _) if how == Adopt::Stale => {
                // Its client started clean here since: what the copy held was for a
                // session that has ended.
                log::info!(
                    "client_id={client_id}: {} messages of a session that ended are dropped (its client started a clean session)",
                    image.messages()
                );
                return;
            }
            (existing, _) => {
                if let Some(to) = self.moved_where(client_id).filter(|_| how == Adopt::Stale) {
                    // The session moved on from here: so do its messages.
                    if let Some(replicator) = self.replicator.get() {
                        replicator.redirect(&to, client_id, image.messages_only(), None);
                    }
                    return;
                }
                if let Some(old) = existing {
                    self.remove_session(&old, now);
                }
                self.new_offline_session(client_id, &image, now)
            }
        };
        // A stale copy's subscriptions are not the client's any more: the session
        // here has what it subscribed to since.
        let subscriptions = if how == Adopt::Resumed {
            image.subscriptions.as_slice()
        } else {
            &[]
        };
        for (filter, options, id) in subscriptions {
            let Some(options) = SubscriptionOptions::from_byte(*options) else {
                continue;
            };
            if let Err((_, why)) = self.check_subscription(&session, filter) {
                log::warn!(
                    "client_id={client_id}: the subscription to {filter:?} it had on another node is left out: {why}"
                );
                continue;
            }
            // Its retained messages are not sent again: it had them where it subscribed.
            let mut ops = Vec::new();
            let subscription = Subscription { options, id: *id };
            let _sent_before = self.add_subscription(&session, filter, subscription, &mut ops, now);
            self.submit(ops);
        }
        let mut st = session.lock();
        // What a stale copy here kept on disk joins what it holds in memory first.
        if let (Some(_), Some(store)) = (st.take_backlog(), &self.store) {
            match store.load_backlog(session.sid.get()) {
                Ok(stored) => restore_backlog(&mut st, stored),
                Err(e) => log::error!("client_id={client_id}: {e}"),
            }
        }
        let store = self.store.as_deref().filter(|_| st.stored);
        let sid = session.sid.get();
        let mut ops = Vec::new();
        let stored_as = |d: &mut Delivery, ops: &mut Vec<Op>| {
            if let Some(store) = store {
                let seq = store.new_seq();
                d.seq = Some(seq);
                ops.push(add_op(sid, seq, d, store));
            }
        };
        let (mut inflight, mut queue) = (VecDeque::new(), VecDeque::new());
        for (packet_id, stage, d) in image.inflight {
            let mut delivery = d.into_delivery(now);
            let stage = Stage::from_code(stage).unwrap_or(Stage::AwaitingPubComp);
            let keeps_id = how == Adopt::Resumed
                && packet_id != 0
                && st.inflight_position(packet_id).is_none();
            if keeps_id {
                stored_as(&mut delivery, &mut ops);
                if let Some(seq) = delivery.seq {
                    ops.push(Op::SentDelivery {
                        sid,
                        seq: seq.get(),
                        packet_id,
                        stage,
                    });
                }
                inflight.push_back(Inflight {
                    packet_id,
                    stage,
                    delivery,
                });
            } else if stage != Stage::AwaitingPubComp {
                // Sent again under a new packet id: the client may see it twice (QoS 1).
                stored_as(&mut delivery, &mut ops);
                queue.push_back(delivery);
            }
        }
        for d in image.queue {
            let mut delivery = d.into_delivery(now);
            stored_as(&mut delivery, &mut ops);
            queue.push_back(delivery);
        }
        for d in &queue {
            st.queued_bytes += d.message.payload.len() + d.message.topic.as_str().len();
        }
        match how {
            Adopt::Resumed => {
                queue.append(&mut st.queue.take());
                st.queue = queue.into();
                inflight.append(&mut st.inflight.take());
                st.inflight = inflight.into();
            }
            Adopt::Stale => {
                let mut mine = st.queue.take();
                mine.append(&mut queue);
                st.queue = mine.into();
            }
        }
        let mut qos2 = st.inbound_qos2.take();
        // A stale copy's: the client has used those packet ids since.
        let inbound_qos2 = if how == Adopt::Resumed {
            image.inbound_qos2
        } else {
            Vec::new()
        };
        for packet_id in inbound_qos2 {
            if !qos2.contains(&packet_id) {
                qos2.push(packet_id);
                if store.is_some() {
                    ops.push(Op::AddInbound { sid, packet_id });
                }
            }
        }
        st.inbound_qos2 = qos2.into();
        if how == Adopt::Resumed {
            st.protocol = ProtocolVersion::of_level(image.protocol);
            st.expiry_interval = image.expiry;
        }
        // Under the session's lock, so a publisher's op for this session comes after.
        self.submit(ops);
        let connected = st.connected;
        drop(st);
        if connected {
            session.notify_owner();
        }
        self.session_changed(client_id);
    }

    fn moved(&self) -> std::sync::MutexGuard<'_, HashMap<String, Moved>> {
        self.moved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn moved_to(&self, moved: Moved) {
        let mut all = self.moved();
        if let Some(mut old) = all.insert(moved.client_id.clone(), moved) {
            self.release_held(&mut old);
        }
        self.moving.store(true, Ordering::SeqCst);
    }

    fn release_held(&self, moved: &mut Moved) {
        if self.settings.track_routes {
            let mut routes = self.local_routes();
            for filter in moved.held.drain(..) {
                routes.remove(&filter);
            }
        }
    }

    /// The session of `client_id` is here again, or its client connected here: what
    /// peers forward for it stays.
    pub fn forget_moved(&self, client_id: &str) {
        if !self.moving.load(Ordering::SeqCst) {
            return;
        }
        let mut all = self.moved();
        if let Some(mut old) = all.remove(client_id) {
            self.release_held(&mut old);
        }
        self.moving.store(!all.is_empty(), Ordering::SeqCst);
    }

    /// Where the session of `client_id` went a moment ago, if it did.
    pub(super) fn moved_where(&self, client_id: &str) -> Option<String> {
        if !self.moving.load(Ordering::SeqCst) {
            return None;
        }
        self.moved().get(client_id).map(|m| m.to.clone())
    }

    /// Node `to` announced its routes (`announces` says whether a filter is among
    /// them): sessions that moved there whose filters it announces need no route here
    /// any more.
    pub fn moved_announced(&self, to: &str, announces: impl Fn(&str) -> bool, now: Instant) {
        if !self.moving.load(Ordering::SeqCst) {
            return;
        }
        for m in self.moved().values_mut() {
            if m.to == to && m.announced.is_none() && m.held.iter().all(|f| announces(f)) {
                m.announced = Some(now);
                self.release_held(m);
            }
        }
    }

    /// Every second: what a publisher queued on a session just as it left goes on to
    /// where it went, and the moves that are over are forgotten (see
    /// [`REDIRECT_AFTER_ANNOUNCED`]).
    pub(super) fn expire_moved(&self, now: Instant) {
        if !self.moving.load(Ordering::SeqCst) {
            return;
        }
        let left: Vec<(String, String, u8, u32, Arc<Session>)> = self
            .moved()
            .values()
            .map(|m| {
                (
                    m.client_id.clone(),
                    m.to.clone(),
                    m.protocol,
                    m.expiry,
                    m.session.clone(),
                )
            })
            .collect();
        if let Some(replicator) = self.replicator.get() {
            for (client_id, to, protocol, expiry, session) in left {
                let mut queue = Vec::new();
                {
                    let mut st = session.lock();
                    while let Some(d) = st.pop_queued() {
                        queue.push(ImageDelivery::of(&d, now));
                    }
                }
                if !queue.is_empty() {
                    let image = SessionImage {
                        protocol,
                        expiry,
                        queue,
                        ..SessionImage::default()
                    };
                    replicator.redirect(&to, &client_id, image, None);
                }
            }
        }
        let mut all = self.moved();
        all.retain(|_, m| {
            if m.redirects(now) {
                return true;
            }
            self.release_held(m);
            false
        });
        self.moving.store(!all.is_empty(), Ordering::SeqCst);
    }

    /// Passes on, to where they went, what `messages` hold for sessions that moved
    /// away from here a moment ago (see [`Broker::release_session`]), but for a session
    /// `matched` still found here for that message. A bridge's message is left out
    /// (every node has its own copy), and so is one for a shared group (the node it
    /// came from picked the member).
    pub(super) fn redirect_moved(
        &self,
        messages: &[Arc<Message>],
        matched: impl Fn(&Session, &Message) -> bool,
    ) {
        let Some(replicator) = self.replicator.get() else {
            return;
        };
        let now = Instant::now();
        let mut out = Vec::new();
        {
            let all = self.moved();
            for message in messages {
                if !matches!(message.via, Via::Client | Via::Peer { shared: None }) {
                    continue;
                }
                for moved in all.values().filter(|m| m.redirects(now)) {
                    if matched(&moved.session, message) {
                        continue;
                    }
                    if let Some(delivery) = moved.delivery(message, now) {
                        let image = SessionImage {
                            protocol: moved.protocol,
                            expiry: moved.expiry,
                            queue: vec![delivery],
                            ..SessionImage::default()
                        };
                        let forwarded = moved.image_first && message.via == Via::Client;
                        out.push((
                            moved.to.clone(),
                            moved.client_id.clone(),
                            message,
                            image,
                            forwarded,
                        ));
                    }
                }
            }
        }
        for (to, client_id, message, image, forwarded) in out {
            let published_here = forwarded.then(|| message.topic.as_str());
            replicator.redirect(&to, &client_id, image, published_here);
        }
    }

    /// A new persistent session for `client_id`, offline, as `image` describes it,
    /// registered in the table (not stored yet: it is when its client connects).
    fn new_offline_session(
        &self,
        client_id: &str,
        image: &SessionImage,
        now: Instant,
    ) -> Arc<Session> {
        let sid = match &self.store {
            Some(store) => store.new_sid(),
            None => self.next_sid(),
        };
        let session = Arc::new(Session::new(
            client_id.into(),
            ProtocolVersion::of_level(image.protocol),
            image.expiry.max(1),
            sid,
        ));
        session.lock().disconnected_at = Some(now);
        let replaced = self.sessions().insert(session.clone());
        if let Some(old) = replaced {
            self.end_session(&old, now);
        }
        session
    }

    /// A client session's subscriptions or persistence changed (or it ended): a
    /// cluster replicates its ownership record.
    pub(super) fn session_changed(&self, client_id: &str) {
        if let Some(replicator) = self.replicator.get() {
            replicator.session_changed(client_id);
        }
    }

    /// Whether a client session of `client_id` is here.
    pub fn holds_client(&self, client_id: &str) -> bool {
        self.sessions()
            .get(client_id)
            .is_some_and(|s| s.kind == SessionKind::Client)
    }

    /// Whether a client is connected here under `client_id`.
    pub fn holds_connected_client(&self, client_id: &str) -> bool {
        self.sessions()
            .get(client_id)
            .is_some_and(|s| s.kind == SessionKind::Client && s.is_online())
    }

    /// What a cluster replicates of a client session here: `None` when there is none,
    /// or it is neither persistent nor has a will to publish should this node die.
    pub fn session_record(&self, client_id: &str, now: Instant) -> Option<SessionRecord> {
        let session = self.sessions().get(client_id).cloned()?;
        if session.kind != SessionKind::Client {
            return None;
        }
        let st = session.lock();
        let will = st
            .declared_will()
            .or(st.pending_will().map(|(will, _)| will))
            .map(|will| ImageDelivery::of_message(will, now));
        if !st.is_persistent() && will.is_none() {
            return None;
        }
        Some(SessionRecord {
            protocol: st.protocol.level(),
            expiry: st.expiry_interval,
            subscriptions: st
                .subscriptions
                .iter()
                .map(|(filter, s)| (filter.to_owned(), s.options.to_byte(), s.id))
                .collect(),
            connected: st.connected,
            will,
        })
    }
}

/// Filter, options byte, subscription identifier.
pub type SubscriptionList = Vec<(String, u8, Option<u32>)>;

/// What a cluster replicates of one client session (see [`Broker::session_record`]).
pub struct SessionRecord {
    pub protocol: u8,
    /// Session Expiry Interval; 0 for a session that ends with its connection.
    pub expiry: u32,
    pub subscriptions: SubscriptionList,
    pub connected: bool,
    /// The will its connection declared, or the one waiting for its delay.
    pub will: Option<ImageDelivery>,
}
