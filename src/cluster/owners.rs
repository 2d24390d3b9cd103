//! Sessions that follow their clients between nodes.
//!
//! Every client session with something to outlive a node (persistent, or a will) has
//! an ownership record on every node: its owner, the epoch of the CONNECT that made it
//! the owner (the hybrid clock, so the later CONNECT wins), its subscriptions and its
//! will. A CONNECT here claims the client id from every linked node: one that holds
//! the session closes its connection (0x8E) and answers with the session's image
//! (subscriptions, queue, messages in flight with their packet ids, inbound QoS 2
//! ids), which this node adopts before it answers CONNECT. When the owner of record
//! cannot be reached within `takeover_timeout`, `on_owner_unreachable` decides.
//!
//! A node that learns of a newer owner while it still holds a copy (it was away, or
//! cut off) hands that copy to the owner, unasked: what it held is delivered there
//! (QoS 1 may repeat) and its will is dropped. The wills of a dead node's clients are
//! published, after `lost_node_wills_after`, by the live node whose name sorts first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use smol::future::FutureExt;

use super::settings::OwnerUnreachable;
use super::wire::{self, Frame, OwnerRecord};
use super::{Cluster, TOMBSTONE_KEEP_MS, clock, wall_ms};
use crate::broker::session::CloseReason;
use crate::broker::session::SessionKind;
use crate::broker::{Adopt, Claimed, SessionImage};
use crate::protocol::topic;

/// A claim waiting for answers: the node that owns the session by its record (if
/// any), whether an image was taken as the session resumed, and where to tell the
/// claim of each answer (the node, and how many messages it handed over, if any).
pub(super) struct Claiming {
    owner: Option<String>,
    resumed: bool,
    answers: smol::channel::Sender<(String, Option<usize>)>,
}

/// How long a claim waits for the nodes that do not hold the session by its record:
/// a linked node answers in milliseconds; one that does not is cut off, and a CONNECT
/// is not kept waiting for it.
const OTHERS_PATIENCE: Duration = Duration::from_millis(500);

/// How often a claim looks again for the owner's link while it waits.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// How long a stopping node that handed its sessions on keeps its links: a few route
/// announcements and link delays.
const ROUTES_SETTLE: Duration = Duration::from_millis(300);

impl Cluster {
    pub(super) fn owners(&self) -> MutexGuard<'_, HashMap<String, OwnerRecord>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<u64, Claiming>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peers a claim or a record can be sent to: linked, at a version that knows
    /// of sessions.
    pub(super) fn session_links(&self) -> Vec<(String, smol::channel::Sender<Frame>)> {
        self.peers()
            .iter()
            .filter(|(_, p)| p.link_version >= wire::SESSIONS_VERSION)
            .filter_map(|(name, p)| {
                p.link
                    .as_ref()
                    .filter(|l| !l.is_closed())
                    .map(|l| (name.clone(), l.clone()))
            })
            .collect()
    }

    /// Takes `client_id` from whichever node holds it, for a CONNECT here.
    pub(super) async fn claim(self: Arc<Self>, client_id: String, clean_start: bool) -> Claimed {
        let started = Instant::now();
        let me = self.settings.name.clone();
        let epoch = self.clock.tick(wall_ms(SystemTime::now()));
        self.broker.forget_moved(&client_id);
        let record = {
            let mut owners = self.owners();
            let record = owners.get(&client_id).cloned();
            // The epoch of this CONNECT, for the session it opens; a clean start with
            // no record leaves none (one with a will gets one as it opens: see
            // `refresh_records`), so client ids that come and go do not pile up.
            if record.is_some() || !clean_start {
                let mine = owners
                    .entry(client_id.clone())
                    .or_insert_with(|| OwnerRecord {
                        client_id: client_id.clone(),
                        owner: me.clone(),
                        epoch,
                        stamp: epoch,
                        protocol: 0,
                        expiry: 0,
                        subscriptions: Vec::new(),
                        will: None,
                        ended: true,
                    });
                mine.owner = me.clone();
                mine.epoch = epoch;
                mine.stamp = epoch;
            }
            record
        };
        // Whose answer decides: the owner of record, when another node holds a session
        // that outlives its connection.
        let owner = record
            .as_ref()
            .filter(|r| !r.ended && r.owner != me && r.expiry > 0)
            .map(|r| r.owner.clone());
        let id = self.next_claim.fetch_add(1, Ordering::Relaxed) + 1;
        let (answers, answer_rx) = smol::channel::unbounded();
        let claiming = Claiming {
            owner: owner.clone(),
            resumed: false,
            answers,
        };
        self.claims().insert(id, claiming);
        let deadline = started + self.settings.takeover_timeout;
        let others_deadline = started + OTHERS_PATIENCE.min(self.settings.takeover_timeout);
        let (mut asked, mut answered) = (BTreeSet::new(), BTreeSet::new());
        let mut handed = Vec::new();
        loop {
            for (name, link) in self.session_links() {
                if asked.contains(&name) {
                    continue;
                }
                let claim = Frame::Claim {
                    id,
                    client_id: client_id.clone(),
                    clean_start,
                    epoch,
                };
                if link.try_send(claim).is_ok() {
                    asked.insert(name);
                }
            }
            let now = Instant::now();
            // The others are asked in case one of them holds the client's connection
            // (a clean session has no record); a node cut off from here answers when
            // its link is back, and its connection then closes (the later CONNECT wins).
            let others_done = answered.is_superset(&asked) || now >= others_deadline;
            // An owner gossip says is down is not waited for: it is not coming back
            // within a CONNECT's patience.
            let owner_done = owner
                .as_ref()
                .is_none_or(|o| answered.contains(o) || !self.peer_is_up(o));
            if (owner_done && others_done) || now >= deadline {
                break;
            }
            let wake = deadline.min(now + CLAIM_POLL);
            let answer = answer_rx
                .recv()
                .or(async {
                    smol::Timer::at(wake).await;
                    Err(smol::channel::RecvError)
                })
                .await;
            if let Ok((from, messages)) = answer {
                handed.extend(messages);
                answered.insert(from);
            }
        }
        let resumed = self.claims().remove(&id).is_some_and(|c| c.resumed);
        let now = Instant::now();
        if resumed {
            log::info!(
                "client_id={client_id}: session taken over from another node ({} messages) in {:?}",
                handed.iter().sum::<usize>(),
                started.elapsed()
            );
            self.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
            return Claimed::AsAsked;
        }
        let (Some(owner), Some(record)) = (owner, record) else {
            return Claimed::AsAsked;
        };
        if answered.contains(&owner) || clean_start {
            // The owner answered without a session (it had ended), or none is wanted.
            return Claimed::AsAsked;
        }
        self.metrics
            .owner_unreachable
            .fetch_add(1, Ordering::Relaxed);
        let policy = self.settings.on_owner_unreachable;
        log::warn!(
            "client_id={client_id}: its session's node {owner} {} (on_owner_unreachable): {}",
            if self.peer_is_up(&owner) {
                format!("did not answer within {:?}", self.settings.takeover_timeout)
            } else {
                "is down".to_owned()
            },
            match policy {
                OwnerUnreachable::Rebuild => "rebuilt from its record (subscriptions only)",
                OwnerUnreachable::New => "a new session",
                OwnerUnreachable::Refuse => "refused (Server unavailable)",
            }
        );
        match policy {
            OwnerUnreachable::Rebuild => {
                let image = SessionImage::subscriptions_only(
                    record.protocol,
                    record.expiry,
                    record.subscriptions,
                );
                self.broker
                    .adopt_session(&client_id, image, Adopt::Resumed, now);
                Claimed::AsAsked
            }
            OwnerUnreachable::New => Claimed::Fresh,
            OwnerUnreachable::Refuse => {
                // The session stays its owner's: the client tries again later.
                self.owners().insert(client_id, record);
                Claimed::Refused(format!(
                    "the node holding this session ({owner}) cannot be reached"
                ))
            }
        }
    }

    fn peer_is_up(&self, name: &str) -> bool {
        self.peers().get(name).is_some_and(|p| p.up)
    }

    /// Peer `from` claimed `client_id` for a CONNECT there: the connection here is
    /// closed, and a persistent session handed over (its filters sent that way from
    /// now on, before the peer announces them itself). Returns the answer's frame.
    pub(super) fn claimed_by(
        &self,
        from: &str,
        id: u64,
        client_id: String,
        clean_start: bool,
        epoch: u64,
    ) -> Frame {
        self.clock.observe(epoch);
        let me = self.settings.name.as_str();
        {
            let mut owners = self.owners();
            // A client connected here after the claimer's: the later CONNECT keeps it.
            let later_here = owners
                .get(&client_id)
                .is_some_and(|r| r.owner == me && !r.ended && (r.epoch, me) > (epoch, from));
            if later_here && self.broker.holds_connected_client(&client_id) {
                return Frame::Handover {
                    id,
                    client_id,
                    image: None,
                    resume: true,
                };
            }
            // A clean start makes no record where there was none (as on the claimer's
            // side, see `claim`): the record its connection may get comes from there.
            let newer = match owners.get(&client_id) {
                Some(r) => (epoch, from) > (r.epoch, r.owner.as_str()),
                None => !clean_start,
            };
            if newer {
                let record = owners
                    .entry(client_id.clone())
                    .or_insert_with(|| OwnerRecord {
                        client_id: client_id.clone(),
                        owner: String::new(),
                        epoch: 0,
                        stamp: 0,
                        protocol: 0,
                        expiry: 0,
                        subscriptions: Vec::new(),
                        will: None,
                        ended: true,
                    });
                record.owner = from.to_owned();
                record.epoch = epoch;
                record.stamp = record.stamp.max(epoch);
                record.will = None;
                self.state_dirty.store(true, Ordering::Relaxed);
            }
        }
        // The other nodes learn where the session goes at once (the claimer tells them
        // only once it has the session).
        if !clean_start {
            if let Some(here) = self.broker.session_record(&client_id, Instant::now()) {
                let moved = self.owners().get(&client_id).cloned().map(|r| OwnerRecord {
                    subscriptions: here.subscriptions,
                    protocol: here.protocol,
                    expiry: here.expiry,
                    ended: here.expiry == 0,
                    ..r
                });
                for (name, link) in self.session_links() {
                    if let (Some(record), true) = (&moved, name != from) {
                        let _ = link.try_send(Frame::Owners(vec![record.clone()]));
                    }
                }
            }
        }
        let image = self.broker.release_session(
            &client_id,
            from,
            true,
            clean_start,
            CloseReason::TakenOver,
            Instant::now(),
        );
        if let Some(image) = &image {
            log::info!(
                "client_id={client_id}: session handed over to node {from} ({} messages)",
                image.messages()
            );
        }
        Frame::Handover {
            id,
            client_id,
            image,
            resume: true,
        }
    }

    /// Messages for the session of `client_id`, which moved to `to` a moment ago, sent
    /// there (see `Broker::release_session`); but for one published here on a topic
    /// `to` announces a route for, which this node forwarded there already.
    pub(super) fn redirect_moved(
        &self,
        to: &str,
        client_id: &str,
        image: SessionImage,
        published_here: Option<&str>,
    ) {
        let link = {
            let peers = self.peers();
            let Some(peer) = peers.get(to) else {
                return;
            };
            let forwarded = published_here.is_some_and(|topic| {
                peer.routes
                    .values()
                    .any(|r| r.shared.is_none() && topic::matches(&r.filter, topic))
            });
            if forwarded {
                return;
            }
            peer.link.clone()
        };
        let Some(link) = link else {
            log::warn!(
                "client_id={client_id}: {} messages for its session, which moved to node {to}, are lost: no link to that node",
                image.messages()
            );
            return;
        };
        let messages = image.messages();
        self.metrics
            .redirected
            .fetch_add(messages as u64, Ordering::Relaxed);
        let frame = Frame::Handover {
            id: 0,
            client_id: client_id.to_owned(),
            image: Some(image),
            resume: false,
        };
        if link.try_send(frame).is_err() {
            log::warn!(
                "client_id={client_id}: {messages} messages for its session, which moved to node {to}, are lost: the link's queue is full"
            );
        }
    }

    /// Peer `from` answered claim `id` (or, with 0, handed over a session unasked).
    pub(super) fn handover_arrived(
        &self,
        from: &str,
        id: u64,
        client_id: String,
        image: Option<SessionImage>,
        resume: bool,
    ) {
        // The answer to a claim under way is taken here, on the link's task: the
        // session is in the router before anything the peer sent after its answer.
        let answered = (id != 0)
            .then(|| {
                let mut claims = self.claims();
                let claim = claims.get_mut(&id)?;
                let messages = image.as_ref().map(SessionImage::messages);
                // The owner's image resumes the session (or the first one, when no
                // node owned it by the record); any other copy joins it as messages.
                let how = image.as_ref().map(|_| {
                    let resumes =
                        !claim.resumed && claim.owner.as_deref().is_none_or(|owner| owner == from);
                    claim.resumed |= resumes;
                    if resumes {
                        Adopt::Resumed
                    } else {
                        Adopt::Stale
                    }
                });
                let _ = claim.answers.try_send((from.to_owned(), messages));
                Some(how)
            })
            .flatten();
        if let Some(how) = answered {
            if let (Some(image), Some(how)) = (image, how) {
                self.broker
                    .adopt_session(&client_id, image, how, Instant::now());
            }
            return;
        }
        // An answer to a claim that gave up is a copy of the session: the client may
        // have a new session here by now.
        let resume = resume && id == 0;
        // Nobody waits for it (a stale copy, a stopping node's session, a message that
        // followed the session, or a claim that gave up): its messages go to the
        // session here all the same.
        if let Some(image) = image {
            let what = if resume {
                "the session as it stops"
            } else if image.subscriptions.is_empty() {
                "messages that followed the session"
            } else {
                "a copy of the session it held"
            };
            let level = if image.subscriptions.is_empty() && !resume {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "client_id={client_id}: node {from} handed over {what} ({} messages)",
                image.messages()
            );
            let how = if resume { Adopt::Resumed } else { Adopt::Stale };
            self.broker
                .adopt_session(&client_id, image, how, Instant::now());
        }
    }

    /// Records from a peer: the newer version of each wins. A session held here whose
    /// record names another owner is handed to it, when it is linked (a stale copy:
    /// this node was away or cut off when its client connected there).
    pub(super) fn records_arrived(&self, from: &str, records: Vec<OwnerRecord>) {
        let me = self.settings.name.as_str();
        let mut elsewhere = Vec::new();
        {
            let mut owners = self.owners();
            for record in records {
                self.clock.observe(record.stamp);
                let old = owners.get(&record.client_id);
                if old.is_some_and(|r| record.version() <= r.version()) {
                    continue;
                }
                owners.insert(record.client_id.clone(), record);
                self.state_dirty.store(true, Ordering::Relaxed);
            }
            for record in owners.values() {
                if record.owner != me
                    && !record.ended
                    && self.broker.holds_client(&record.client_id)
                {
                    elsewhere.push((record.client_id.clone(), record.owner.clone()));
                }
            }
        }
        if elsewhere.is_empty() {
            return;
        }
        let links = self.session_links();
        let now = Instant::now();
        for (client_id, owner) in elsewhere {
            // Kept until the owner can take it: a copy handed to nobody is lost.
            let Some((_, link)) = links.iter().find(|(name, _)| *name == owner) else {
                continue;
            };
            let image = self.broker.release_session(
                &client_id,
                &owner,
                false,
                false,
                CloseReason::TakenOver,
                now,
            );
            log::info!(
                "client_id={client_id}: node {owner} owns the session (record from {from}): the copy held here goes there"
            );
            if let Some(image) = image {
                let _ = link.try_send(Frame::Handover {
                    id: 0,
                    client_id,
                    image: Some(image),
                    resume: false,
                });
            }
        }
    }

    /// Brings the records of the client ids that changed here up to date, and sends
    /// them to every linked peer.
    pub(super) async fn publish_records(self: Arc<Self>) {
        loop {
            let listener = self.owners_event.listen();
            let changed: Vec<String> = {
                let mut changed = self
                    .owners_changed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                changed.drain().collect()
            };
            if changed.is_empty() {
                listener.await;
                continue;
            }
            let records = self.refresh_records(changed);
            if records.is_empty() {
                continue;
            }
            for (_, link) in self.session_links() {
                for frame in wire::owner_frames(records.clone()) {
                    // A full queue: the full exchange at the next link start repairs it.
                    let _ = link.try_send(frame);
                }
            }
        }
    }

    /// The records of `client_ids` as this node sees them now; those that changed.
    fn refresh_records(&self, client_ids: Vec<String>) -> Vec<OwnerRecord> {
        let me = self.settings.name.clone();
        let now = Instant::now();
        let mut out = Vec::new();
        for client_id in client_ids {
            let here = self.broker.session_record(&client_id, now);
            let mut owners = self.owners();
            let current = owners.get(&client_id);
            // Only the owner speaks for a session; a copy held elsewhere is stale.
            if current.is_some_and(|r| r.owner != me) {
                continue;
            }
            let record = match (here, current) {
                (Some(here), current) => OwnerRecord {
                    client_id: client_id.clone(),
                    owner: me.clone(),
                    // A session restored from the store, never claimed: the oldest
                    // epoch, so that any CONNECT elsewhere wins over it.
                    epoch: current.map_or(0, |r| r.epoch),
                    stamp: self.clock.tick(wall_ms(SystemTime::now())),
                    protocol: here.protocol,
                    expiry: here.expiry,
                    subscriptions: here.subscriptions,
                    will: here.will,
                    ended: false,
                },
                (None, Some(current)) if !current.ended => OwnerRecord {
                    stamp: self.clock.tick(wall_ms(SystemTime::now())),
                    subscriptions: Vec::new(),
                    will: None,
                    ended: true,
                    ..current.clone()
                },
                (None, _) => continue,
            };
            // Unchanged but for its stamp (a message joined its queue, say).
            let same = owners.get(&client_id).is_some_and(|r| {
                *r == OwnerRecord {
                    stamp: r.stamp,
                    ..record.clone()
                }
            });
            if same {
                continue;
            }
            owners.insert(client_id, record.clone());
            self.state_dirty.store(true, Ordering::Relaxed);
            out.push(record);
        }
        out
    }

    /// Every record, for a peer whose link just started.
    pub(super) fn all_records(&self) -> Vec<OwnerRecord> {
        self.owners().values().cloned().collect()
    }

    /// Forgets ended records older than the tombstones of retained messages.
    pub(super) fn expire_records(&self, wall_ms: u64) {
        let mut owners = self.owners();
        let before = owners.len();
        owners.retain(|_, r| {
            !r.ended || clock::wall_ms_of(r.stamp).saturating_add(TOMBSTONE_KEEP_MS) > wall_ms
        });
        if owners.len() != before {
            self.state_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Publishes the wills of the clients of nodes down for `lost_node_wills_after`,
    /// when this is the live node whose name sorts first; each once (the record then
    /// says so everywhere).
    pub(super) fn publish_lost_wills(&self, now: Instant) {
        let after = self.settings.lost_node_wills_after;
        if after.is_zero() {
            return;
        }
        let lost: Vec<String> = {
            let peers = self.peers();
            let first_live = peers
                .iter()
                .filter(|(_, p)| p.up)
                .map(|(name, _)| name.as_str())
                .chain(std::iter::once(self.settings.name.as_str()))
                .min()
                .unwrap_or_default();
            // Not from a minority cut off from the rest: their clients may be alive
            // over there (two nodes cannot tell; see docs/deployment.md).
            let seen = 1 + peers.values().filter(|p| p.up).count();
            let known = 1 + peers.values().filter(|p| p.up || !p.left).count();
            if first_live != self.settings.name || seen * 2 < known {
                return;
            }
            peers
                .iter()
                .filter(|(_, p)| {
                    !p.up && !p.left && p.down_since.is_some_and(|t| now.duration_since(t) >= after)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        if lost.is_empty() {
            return;
        }
        let mut wills = Vec::new();
        let mut changed = Vec::new();
        {
            let mut owners = self.owners();
            for record in owners.values_mut() {
                if record.ended || !lost.contains(&record.owner) {
                    continue;
                }
                let Some(will) = record.will.take() else {
                    continue;
                };
                wills.push((record.client_id.clone(), record.owner.clone(), will));
                record.stamp = self.clock.tick(wall_ms(SystemTime::now()));
                // A session that ended with its connection ends with its will.
                record.ended |= record.expiry == 0;
                changed.push(record.clone());
            }
        }
        if wills.is_empty() {
            return;
        }
        self.state_dirty.store(true, Ordering::Relaxed);
        for (client_id, node, will) in wills {
            log::warn!(
                "client_id={client_id}: node {node} has been down for {after:?} (lost_node_wills_after): its will on {:?} is published here",
                will.topic
            );
            self.metrics.lost_wills.fetch_add(1, Ordering::Relaxed);
            self.broker.publish(will.into_message(now), now);
        }
        for (_, link) in self.session_links() {
            for frame in wire::owner_frames(changed.clone()) {
                let _ = link.try_send(frame);
            }
        }
    }

    /// As this node stops: each persistent client session here goes to the linked
    /// node whose name sorts first (its connection closed with 0x8B), with its record,
    /// so that its client finds it there whichever node it reconnects to. Waits (a
    /// few seconds at most) until that node has taken them all.
    pub async fn hand_off(&self) {
        let Some((target, link)) = self.session_links().into_iter().next() else {
            return;
        };
        let started = Instant::now();
        let mut handed = (0, 0);
        for client_id in self.broker.client_ids_of(SessionKind::Client) {
            let Some(here) = self
                .broker
                .session_record(&client_id, Instant::now())
                .filter(|r| r.expiry > 0)
            else {
                continue;
            };
            // A session whose record was not published yet is handed on all the same.
            let record = {
                let mut owners = self.owners();
                let record = owners
                    .entry(client_id.clone())
                    .or_insert_with(|| OwnerRecord {
                        client_id: client_id.clone(),
                        owner: self.settings.name.clone(),
                        epoch: 0,
                        stamp: 0,
                        protocol: here.protocol,
                        expiry: here.expiry,
                        subscriptions: Vec::new(),
                        will: None,
                        ended: false,
                    });
                if record.owner != self.settings.name {
                    continue;
                }
                record.owner = target.clone();
                record.ended = false;
                record.expiry = here.expiry;
                record.subscriptions = here.subscriptions;
                record.stamp = self.clock.tick(wall_ms(SystemTime::now()));
                record.clone()
            };
            // Every node learns where the session went before its client reconnects.
            for (name, other) in self.session_links() {
                if name != target {
                    let _ = other.try_send(Frame::Owners(vec![record.clone()]));
                }
            }
            let image = self.broker.release_session(
                &client_id,
                &target,
                false,
                false,
                CloseReason::ShuttingDown,
                Instant::now(),
            );
            let Some(image) = image else {
                continue;
            };
            handed = (handed.0 + 1, handed.1 + image.messages());
            let _ = link.send(Frame::Owners(vec![record])).await;
            let _ = link
                .send(Frame::Handover {
                    id: 0,
                    client_id,
                    image: Some(image),
                    resume: true,
                })
                .await;
        }
        if handed.0 == 0 {
            return;
        }
        // The peer answers a ping after the frames before it: they are taken.
        let taken = self.pongs.listen();
        let _ = link.send(Frame::Ping).await;
        let answered = async {
            taken.await;
            true
        }
        .or(async {
            smol::Timer::after(Duration::from_secs(5)).await;
            false
        })
        .await;
        log::info!(
            "cluster: {} sessions ({} messages) handed to node {target} {} in {:?}",
            handed.0,
            handed.1,
            if answered {
                "and taken"
            } else {
                "(not confirmed)"
            },
            started.elapsed()
        );
        // The peers learn that this node's routes changed (announcements are 50 ms
        // apart) while what they forwarded before still arrives and is passed on.
        smol::Timer::after(ROUTES_SETTLE).await;
    }

    /// The client sessions each node owns by the records here (ended ones left out).
    pub fn sessions_owned(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for record in self.owners().values().filter(|r| !r.ended) {
            *out.entry(record.owner.clone()).or_default() += 1;
        }
        out
    }

    /// Whether `/status` should say 503 under `isolated_status`.
    pub fn isolated(&self) -> bool {
        let (seen, known) = self.reachable();
        match self.settings.isolated_status {
            super::settings::IsolatedStatus::Never => false,
            super::settings::IsolatedStatus::Alone => known > 1 && seen == 1,
            // Two nodes cannot tell a dead peer from a cut link: neither steps aside.
            super::settings::IsolatedStatus::Minority => known > 2 && seen * 2 < known,
        }
    }
}
