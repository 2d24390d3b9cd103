//! A lightweight cluster: two to five Tern nodes at one site, behind a balancer,
//! delivering as one broker. No quorum, no leader, no manual rejoin: every failure
//! degrades to "each node keeps serving, then reconciles when the link heals".
//!
//! `membership.rs` is SWIM gossip (the `foca` crate) over UDP; `link.rs` one TCP (or
//! mutual TLS) link per pair of nodes, the lower name dialling, over which messages
//! cross between the sessions the broker keeps for each peer; `wire.rs` the datagram
//! and frame formats; `pipe.rs` the in-memory pipes those sessions are served over;
//! `clock.rs` the hybrid logical clock of retained messages' last-writer-wins and of
//! sessions' ownership; `owners.rs` sessions that follow their clients between nodes;
//! `settings.rs` the `[cluster]` table. This file ties them together: who the peers
//! are and what they announced, retained messages replicated to every node, and the
//! figures the management API, `$SYS` and Prometheus show.

mod clock;
pub mod link;
pub mod membership;
mod owners;
pub mod pipe;
mod retry;
pub mod settings;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use event_listener::Event;
use serde::{Deserialize, Serialize};
use smol::channel::{Sender, bounded};
use smol::future::FutureExt;
use smol::{Async, Executor, Task};

use crate::broker::session::{
    QueueLimits, SessionKind, peer_inbound_client_id, peer_outbox_client_id,
};
use crate::broker::{Broker, Claim, Claimed, Replicator, SessionImage};
use crate::message::Message;
use crate::protocol::{QoS, Topic};
use crate::throttle::Throttle;
use clock::Hlc;
use link::{Greeting, LinkStream};
use membership::{Command, MemberEvent, NodeId};
pub use settings::{
    ClusterSettings, ClusterTable, IsolatedStatus, OwnerUnreachable, SharedStrategy,
};
use wire::{Frame, NodeStatus, OwnerRecord, RetainedEntry, RetainedMessage, Route, Stamp};

/// How long a deleted retained message's tombstone is kept (from its stamp, so every
/// node forgets it at about the same time), so that the deletion wins over an older
/// copy a node that was away still holds.
const TOMBSTONE_KEEP_MS: u64 = 24 * 3600 * 1000;
/// How often changed stamps are written to `cluster.state` (an SD card's writes are
/// counted); what a crash loses of them a peer's digest brings back.
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// A dialling node's wait before it tries a failed link again.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// Frames queued for one link (retained messages set here, ...) before new ones wait.
const LINK_QUEUE: usize = 4096;
/// Accepted links still in their handshake, at most.
const PENDING_HANDSHAKES: usize = 16;

/// Mutual TLS on the links, loaded once at start.
struct LinkTls {
    acceptor: futures_rustls::TlsAcceptor,
    connector: Arc<futures_rustls::rustls::ClientConfig>,
}

/// Bad input from peers (wrong MAC, garbage, a clash): logged throttled.
static BAD_PEER_INPUT: Throttle = Throttle::new();

/// One other node, as this node knows it.
struct Peer {
    /// From gossip: where it is and which life of it this is.
    id: Option<NodeId>,
    /// Gossip says it is up.
    up: bool,
    /// Since when gossip has said it is down (its routes are kept [`route_hold`]).
    down_since: Option<Instant>,
    /// The link, while there is one: frames for it, and the link version they speak.
    link: Option<Sender<Frame>>,
    link_version: u16,
    link_since: Option<SystemTime>,
    /// It said it was leaving (it stopped on purpose): not a node this one expects
    /// to see until it is up again.
    left: bool,
    /// A dial is under way (this node dials peers whose names sort after its own).
    dialing: bool,
    redial_at: Instant,
    /// The routes it announced, and when they were last brought up to date.
    routes: BTreeMap<String, Route>,
    last_sync: Option<SystemTime>,
    status: Option<NodeStatus>,
    /// What waits for it.
    outbox: Arc<crate::broker::session::Session>,
    /// Why its last link ended.
    last_error: String,
}

/// What `data/cluster.state` keeps across restarts.
#[derive(Default, Serialize, Deserialize)]
struct State {
    incarnation: u64,
    clock: u64,
    /// Topic, stamp, deleted.
    stamps: Vec<(String, Stamp, bool)>,
    /// Who owns each client session (see `owners.rs`).
    owners: Vec<OwnerRecord>,
}

/// `cluster.state` as the first cluster release wrote it (no ownership records).
#[derive(Deserialize)]
struct StateWithoutOwners {
    incarnation: u64,
    clock: u64,
    stamps: Vec<(String, Stamp, bool)>,
}

impl State {
    fn decode(bytes: &[u8]) -> Option<State> {
        if let Ok(state) = postcard::from_bytes::<State>(bytes) {
            return Some(state);
        }
        let old: StateWithoutOwners = postcard::from_bytes(bytes).ok()?;
        Some(State {
            incarnation: old.incarnation,
            clock: old.clock,
            stamps: old.stamps,
            owners: Vec::new(),
        })
    }
}

/// What the cluster counts of sessions moving between nodes.
#[derive(Default)]
pub struct SessionMetrics {
    /// Sessions taken over from another node for a CONNECT here.
    pub takeovers: AtomicU64,
    /// CONNECTs whose session's node could not be reached (`on_owner_unreachable`).
    pub owner_unreachable: AtomicU64,
    /// Wills of a lost node's clients published here.
    pub lost_wills: AtomicU64,
    /// Messages a peer forwarded here for a session that had just moved, passed on.
    pub redirected: AtomicU64,
}

pub struct Cluster {
    pub settings: ClusterSettings,
    pub broker: Arc<Broker>,
    executor: Arc<Executor<'static>>,
    me: NodeId,
    started: SystemTime,
    peers: Mutex<BTreeMap<String, Peer>>,
    /// Each retained topic's stamp, and whether it is a deletion's (a tombstone).
    stamps: Mutex<HashMap<String, (Stamp, bool)>>,
    clock: Hlc,
    /// The clock's reservation last kept in `cluster.state` (see `Hlc::reservation`).
    reserved: AtomicU64,
    /// Where the state is kept (none without a store).
    state_path: Option<PathBuf>,
    state_dirty: AtomicBool,
    commands: Sender<Command>,
    /// Notified whenever a peer's routes arrive, for the wait at start.
    synced: Event,
    stopping: AtomicBool,
    tasks: Mutex<Vec<Task<()>>>,
    tls: Option<LinkTls>,
    /// Itself, for the claims the broker asks of it through `&self`.
    this: Weak<Cluster>,
    /// Each client session's ownership record, by client id.
    owners: Mutex<HashMap<String, OwnerRecord>>,
    /// Client ids whose record may have changed here, for `publish_records`.
    owners_changed: Mutex<HashSet<String>>,
    owners_event: Event,
    /// Claims waiting for their answers, by id.
    claims: Mutex<HashMap<u64, owners::Claiming>>,
    next_claim: AtomicU64,
    /// Notified when a peer answers a ping (see `hand_off`).
    pongs: Event,
    pub metrics: SessionMetrics,
}

/// A node as the management API lists it.
pub struct NodeView {
    pub name: String,
    pub addr: Option<SocketAddr>,
    /// "running" (this node, or linked), "connecting" (up, no link yet), "down".
    pub state: &'static str,
    pub link_since: Option<SystemTime>,
    pub status: Option<NodeStatus>,
    /// Messages and bytes waiting for it.
    pub queued: (usize, usize),
    pub last_sync: Option<SystemTime>,
    pub last_error: String,
    pub routes: usize,
}

fn wall_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Joins the cluster: binds the cluster port (UDP gossip, TCP links), loads what
    /// the last run kept, and starts gossiping and accepting links. Call
    /// [`Cluster::join`] before serving MQTT and [`Cluster::leave`] when stopping.
    pub fn start(
        settings: ClusterSettings,
        broker: Arc<Broker>,
        executor: Arc<Executor<'static>>,
        data_dir: Option<PathBuf>,
    ) -> Result<Arc<Cluster>, String> {
        let tls = match &settings.tls {
            None => None,
            Some((cert, key, ca)) => {
                let server = crate::transport::tls::Tls::load(crate::transport::tls::TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(ca.clone()),
                    require_client_cert: true,
                })
                .map_err(|e| format!("[cluster] TLS: {e}"))?;
                let connector = crate::transport::outgoing::tls_config(
                    Some(ca),
                    Some((cert.as_path(), key.as_path())),
                    true,
                )
                .map_err(|e| format!("[cluster] TLS: {e}"))?;
                Some(LinkTls {
                    acceptor: server.acceptor(),
                    connector,
                })
            }
        };
        let socket = membership::bind(&settings)?;
        let listener = Async::<TcpListener>::bind(settings.bind)
            .map_err(|e| format!("[cluster] cannot bind {} (TCP): {e}", settings.bind))?;
        let state_path = data_dir.map(|d| d.join("cluster.state"));
        let state: State = state_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| State::decode(&bytes))
            .unwrap_or_default();
        let now = SystemTime::now();
        // A restart is a new life of the node that must win over the old one in gossip.
        let incarnation = (state.incarnation + 1).max(wall_ms(now) / 1000);
        let me = NodeId {
            name: settings.name.clone(),
            addr: settings.advertise,
            incarnation,
        };
        let (commands, command_rx) = bounded(4);
        let (events, event_rx) = bounded(64);
        let mut stamps: HashMap<String, (Stamp, bool)> = state
            .stamps
            .into_iter()
            .map(|(topic, stamp, deleted)| (topic, (stamp, deleted)))
            .collect();
        // Retained messages the stamps do not know of (kept before the cluster was on)
        // get the oldest stamp: any node's newer write wins over them.
        let origin = wire::fnv1a(settings.name.as_bytes());
        for message in broker.retained_list(Instant::now()) {
            stamps.entry(message.topic.to_string()).or_insert((
                Stamp {
                    clock: 0,
                    node: origin,
                },
                false,
            ));
        }
        let owners = state
            .owners
            .into_iter()
            .map(|r| (r.client_id.clone(), r))
            .collect();
        let cluster = Arc::new_cyclic(|this| Cluster {
            this: this.clone(),
            owners: Mutex::new(owners),
            owners_changed: Mutex::new(HashSet::new()),
            owners_event: Event::new(),
            claims: Mutex::new(HashMap::new()),
            next_claim: AtomicU64::new(0),
            pongs: Event::new(),
            metrics: SessionMetrics::default(),
            clock: Hlc::new(state.clock),
            reserved: AtomicU64::new(state.clock),
            settings: settings.clone(),
            broker: broker.clone(),
            executor: executor.clone(),
            me: me.clone(),
            started: now,
            peers: Mutex::new(BTreeMap::new()),
            stamps: Mutex::new(stamps),
            state_path,
            state_dirty: AtomicBool::new(true),
            commands,
            synced: Event::new(),
            stopping: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            tls,
        });
        cluster.save_state();
        broker.set_replicator(cluster.clone());
        // What waited for peers when this node stopped waits for them still, within
        // the cluster's limits, from now on.
        {
            let mut peers = cluster.peers();
            for client_id in broker.client_ids_of(SessionKind::PeerOutbox) {
                if let Some(name) = client_id.strip_prefix("$cluster/out/") {
                    cluster.peer_entry(&mut peers, name);
                }
            }
        }
        // The sessions the store kept get records (those the state knew keep theirs).
        for client_id in broker.client_ids_of(SessionKind::Client) {
            cluster.session_changed(&client_id);
        }
        log::info!(
            "cluster: node {} (incarnation {incarnation}) listening on {} (gossip and links), advertised as {}",
            settings.name,
            settings.bind,
            settings.advertise
        );
        let mut tasks = vec![
            executor.spawn(membership::run(socket, settings, me, events, command_rx)),
            executor.spawn(cluster.clone().membership_events(event_rx)),
            executor.spawn(cluster.clone().accept_links(listener)),
            executor.spawn(cluster.clone().housekeeping()),
            executor.spawn(cluster.clone().publish_records()),
        ];
        cluster.lock_tasks().append(&mut tasks);
        Ok(cluster)
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<Task<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peers(&self) -> MutexGuard<'_, BTreeMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stamps(&self) -> MutexGuard<'_, HashMap<String, (Stamp, bool)>> {
        self.stamps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `join_wait`) until every peer gossip knows of has sent its
    /// routes, so that the first clients here already reach subscribers there. A node
    /// alone (the first to start, or cut off) waits for the seeds' first answers only.
    pub async fn join(&self) {
        let deadline = Instant::now() + self.settings.join_wait;
        // Gossip needs a moment to hear of the others at all.
        let heard = Instant::now() + Duration::from_millis(1500).min(self.settings.join_wait);
        loop {
            let listener = self.synced.listen();
            let (known, synced) = {
                let peers = self.peers();
                let up: Vec<&Peer> = peers.values().filter(|p| p.up).collect();
                (
                    up.len(),
                    up.iter().filter(|p| p.last_sync.is_some()).count(),
                )
            };
            let now = Instant::now();
            if now >= deadline || (now >= heard && known == synced) {
                log::info!(
                    "cluster: joined with {synced} of {known} nodes' routes{}",
                    if known == synced {
                        ""
                    } else {
                        " (the rest arrive as their links come up)"
                    }
                );
                return;
            }
            let wait = if now < heard { heard } else { deadline };
            listener
                .or(async {
                    smol::Timer::at(wait).await;
                })
                .await;
        }
    }

    /// The first step of stopping, before the broker closes its connections: no link
    /// is accepted or dialled from here on, so a peer whose relay the broker closes
    /// does not link again and find nobody serving.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // The others stop counting this node at once (`isolated_status`).
        for (_, link) in self.session_links() {
            let _ = link.try_send(Frame::Leaving);
        }
    }

    /// Leaves the cluster (SIGTERM): the others hear of it at once, not after failing
    /// to reach this node; links close; the state is kept.
    pub async fn leave(&self) {
        self.begin_stop();
        let (done, left) = bounded(1);
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = left
                .recv()
                .or(async {
                    smol::Timer::after(Duration::from_secs(2)).await;
                    Ok(())
                })
                .await;
        }
        for peer in self.peers().values_mut() {
            peer.link = None;
        }
        self.save_state();
        self.lock_tasks().clear();
    }

    /// The peer `name`'s entry, made (with its outbox) on first mention.
    fn peer_entry<'a>(&self, peers: &'a mut BTreeMap<String, Peer>, name: &str) -> &'a mut Peer {
        peers.entry(name.to_owned()).or_insert_with(|| {
            let outbox_id = peer_outbox_client_id(name);
            let outbox = self.broker.keep_session(&outbox_id, Instant::now());
            let limits = QueueLimits {
                max_queued_messages: self.settings.max_queued_messages,
                max_queued_bytes: self.settings.max_queued_bytes,
                queue_qos0_offline: false,
            };
            self.broker.make_outbox(&outbox_id, limits);
            // Routes it announced before a restart are the outbox's subscriptions.
            let routes = outbox
                .lock()
                .subscriptions
                .iter()
                .map(|(filter, s)| {
                    let route = Route {
                        filter: filter.to_owned(),
                        shared: s.id,
                        members: 1,
                    };
                    (route.filter.clone(), route)
                })
                .collect();
            Peer {
                id: None,
                up: false,
                down_since: Some(Instant::now()),
                link: None,
                link_version: 0,
                link_since: None,
                left: false,
                dialing: false,
                redial_at: Instant::now(),
                routes,
                last_sync: None,
                status: None,
                outbox,
                last_error: String::new(),
            }
        })
    }

    async fn membership_events(self: Arc<Self>, events: smol::channel::Receiver<MemberEvent>) {
        while let Ok(event) = events.recv().await {
            let mut peers = self.peers();
            match event {
                MemberEvent::Up(id) => {
                    let peer = self.peer_entry(&mut peers, &id.name);
                    peer.up = true;
                    peer.left = false;
                    peer.down_since = None;
                    peer.redial_at = Instant::now();
                    peer.id = Some(id);
                }
                MemberEvent::Down(id) => {
                    let peer = self.peer_entry(&mut peers, &id.name);
                    if peer
                        .id
                        .as_ref()
                        .is_none_or(|known| known.incarnation <= id.incarnation)
                    {
                        peer.up = false;
                        peer.down_since = Some(Instant::now());
                    }
                }
            }
            drop(peers);
            self.synced.notify(usize::MAX);
        }
    }

    /// Takes links from peers whose names sort before this node's (they dial). At most
    /// [`PENDING_HANDSHAKES`] at once, each within the handshake's time, TLS included:
    /// strangers cannot make a node hold sockets or buffers.
    async fn accept_links(self: Arc<Self>, listener: Async<TcpListener>) {
        let pending = Arc::new(AtomicUsize::new(0));
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("cluster: accepting a link: {e}");
                    smol::Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if self.stopping.load(Ordering::SeqCst) {
                continue;
            }
            if pending.fetch_add(1, Ordering::SeqCst) >= PENDING_HANDSHAKES {
                pending.fetch_sub(1, Ordering::SeqCst);
                self.bad_input(
                    &addr.to_string(),
                    "too many link handshakes at once: closed",
                );
                continue;
            }
            let _ = tcp.get_ref().set_nodelay(true);
            let (cluster, pending) = (self.clone(), pending.clone());
            self.executor
                .spawn(async move {
                    let stream = match &cluster.tls {
                        None => Ok(Box::new(tcp) as LinkStream),
                        Some(tls) => tls
                            .acceptor
                            .accept(tcp)
                            .or(async {
                                smol::Timer::after(link::HANDSHAKE_TIMEOUT).await;
                                Err(std::io::ErrorKind::TimedOut.into())
                            })
                            .await
                            .map(|s| Box::new(s) as LinkStream)
                            .map_err(|e| format!("TLS handshake: {e}")),
                    };
                    match stream {
                        Ok(stream) => {
                            cluster.establish(stream, addr, None, Some(pending)).await;
                        }
                        Err(e) => {
                            pending.fetch_sub(1, Ordering::SeqCst);
                            cluster.bad_input(&addr.to_string(), &e);
                        }
                    }
                })
                .detach();
        }
    }

    /// Dials `name` at `addr` (this node's name sorts first).
    async fn dial(self: Arc<Self>, name: String, addr: SocketAddr) {
        let connected = async {
            let tls = match &self.tls {
                None => None,
                Some(tls) => Some((
                    &tls.connector,
                    rustls_pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| format!("node name {name:?} as a TLS server name: {e}"))?,
                )),
            };
            let stream = crate::transport::outgoing::connect(addr, tls)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            Ok::<LinkStream, String>(Box::new(stream))
        };
        match connected.await {
            Ok(stream) => {
                self.clone()
                    .establish(stream, addr, Some(&name), None)
                    .await
            }
            Err(e) => self.link_ended(&name, &e, None),
        }
        if let Some(peer) = self.peers().get_mut(&name) {
            peer.dialing = false;
        }
    }

    /// The handshake on a new link, then the link until it ends.
    async fn establish(
        self: Arc<Self>,
        mut stream: LinkStream,
        addr: SocketAddr,
        dialled: Option<&str>,
        pending: Option<Arc<AtomicUsize>>,
    ) {
        let shook = link::handshake(&mut stream, &self, dialled).await;
        if let Some(pending) = pending {
            pending.fetch_sub(1, Ordering::SeqCst);
        }
        let greeting: Greeting = match shook {
            Ok(greeting) => greeting,
            Err(e) => {
                match dialled {
                    Some(name) => self.link_ended(name, &e, None),
                    None => self.bad_input(&addr.to_string(), &e),
                }
                return;
            }
        };
        let peer = greeting.peer.clone();
        if dialled.is_none() && peer.as_str() >= self.settings.name.as_str() {
            log::debug!("cluster: node {peer} dialled, but this node dials it: closed");
            return;
        }
        let (frames, frame_rx) = bounded(LINK_QUEUE);
        {
            let mut peers = self.peers();
            let entry = self.peer_entry(&mut peers, &peer);
            // The newer link wins: an older one still there is most likely half-open
            // (the peer restarted). Closing its channel ends it; the new link's
            // sessions take over the old one's.
            if let Some(old) = entry.link.replace(frames.clone()) {
                old.close();
            }
            entry.link_version = greeting.version;
            entry.link_since = Some(SystemTime::now());
        }
        log::info!(
            "cluster: linked to node {peer} at {addr} (link version {})",
            greeting.version
        );
        let why = link::run(self.clone(), stream, greeting, addr, frame_rx).await;
        self.link_ended(&peer, &why, Some(&frames));
    }

    /// A link to `name` ended (`link`: its channel), or could not be made: logged at
    /// warning level when it was up or the reason is new, so that a node that cannot
    /// link says why once, not every second.
    fn link_ended(&self, name: &str, why: &str, link: Option<&Sender<Frame>>) {
        let mut peers = self.peers();
        let Some(peer) = peers.get_mut(name) else {
            return;
        };
        let was_up = link.is_some_and(|mine| {
            peer.link
                .as_ref()
                .is_some_and(|current| current.same_channel(mine))
        });
        let stopping = self.stopping.load(Ordering::SeqCst);
        if was_up {
            peer.link = None;
            peer.link_since = None;
            if !stopping {
                log::warn!("cluster: link to node {name} ended: {why}");
            }
        } else if link.is_some() {
            log::debug!("cluster: a replaced link to node {name} ended: {why}");
            return;
        } else if peer.last_error != why && !stopping {
            log::warn!("cluster: cannot link to node {name}: {why}");
        } else {
            log::debug!("cluster: cannot link to node {name}: {why}");
        }
        peer.last_error = why.to_owned();
        peer.redial_at = Instant::now() + REDIAL_AFTER;
    }

    /// Once a second: dial the peers that need a link, forget the routes of peers
    /// down for longer than `route_hold`, keep the state, report under `$SYS`.
    async fn housekeeping(self: Arc<Self>) {
        let mut last_save = Instant::now();
        let mut reported: Vec<(String, String)> = Vec::new();
        loop {
            smol::Timer::after(Duration::from_secs(1)).await;
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let mut dial = Vec::new();
            let mut gone = Vec::new();
            {
                let mut peers = self.peers();
                for (name, peer) in peers.iter_mut() {
                    let linked = peer.link.as_ref().is_some_and(|l| !l.is_closed());
                    if peer.up
                        && !linked
                        && !peer.dialing
                        && now >= peer.redial_at
                        && name.as_str() > self.settings.name.as_str()
                    {
                        if let Some(id) = &peer.id {
                            peer.dialing = true;
                            dial.push((name.clone(), id.addr));
                        }
                    }
                    if let Some(since) = peer.down_since {
                        if !peer.up
                            && !linked
                            && now.duration_since(since) >= self.settings.route_hold
                        {
                            gone.push(name.clone());
                        }
                    }
                }
                for name in &gone {
                    peers.remove(name);
                }
            }
            for (name, addr) in dial {
                self.executor.spawn(self.clone().dial(name, addr)).detach();
            }
            for name in gone {
                log::warn!(
                    "cluster: node {name} has been down for {:?} (route_hold): its routes and what waited for it are dropped",
                    self.settings.route_hold
                );
                self.broker.drop_session(&peer_outbox_client_id(&name), now);
                self.broker
                    .drop_session(&peer_inbound_client_id(&name), now);
            }
            let wall = wall_ms(SystemTime::now());
            self.expire_tombstones(wall);
            self.expire_records(wall);
            self.publish_lost_wills(now);
            if self
                .clock
                .needs_reservation(self.reserved.load(Ordering::Relaxed), wall)
            {
                self.state_dirty.store(true, Ordering::Relaxed);
                self.save_state();
                last_save = now;
            } else if now.duration_since(last_save) >= SAVE_EVERY {
                self.save_state();
                last_save = now;
            }
            reported = self.report(reported);
        }
    }

    /// Publishes each peer's figures under `$SYS/tern/cluster/nodes/NAME/`, retained,
    /// when they changed.
    fn report(&self, last: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut figures = vec![(
            "$SYS/tern/cluster/nodes".to_owned(),
            (self.peers().len() + 1).to_string(),
        )];
        for node in self.nodes() {
            let base = format!("$SYS/tern/cluster/nodes/{}", node.name);
            figures.push((format!("{base}/state"), node.state.to_owned()));
            figures.push((format!("{base}/queued"), node.queued.0.to_string()));
            figures.push((format!("{base}/routes"), node.routes.to_string()));
        }
        for (topic, value) in &figures {
            if last.iter().any(|(t, v)| t == topic && v == value) {
                continue;
            }
            let message = Message::new(
                topic.as_str(),
                Bytes::from(value.clone()),
                QoS::AtMostOnce,
                true,
            );
            self.broker.publish_internal(message, Instant::now());
        }
        figures
    }

    /// Whether this node's outbox for `peer` has nothing in flight (or there is none).
    pub fn outbox_idle(&self, peer: &str) -> bool {
        self.peers().get(peer).is_none_or(|p| {
            // After a restart what was in flight is still on disk, not in memory.
            let outbox = p.outbox.lock();
            outbox.inflight.is_empty() && outbox.backlog().is_none_or(|(n, _)| n == 0)
        })
    }

    /// What this node tells its peers about itself.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: wall_ms(self.started) / 1000,
            connections: self
                .broker
                .metrics
                .clients_connected
                .load(Ordering::Relaxed)
                .max(0) as u64,
        }
    }

    fn peer_status(&self, name: &str, status: NodeStatus) {
        if let Some(peer) = self.peers().get_mut(name) {
            peer.status = Some(status);
        }
    }

    /// Logs (throttled) input from a peer or a stranger that was refused.
    pub fn bad_input(&self, from: &str, what: &str) {
        if let Some(left_out) = BAD_PEER_INPUT.check(Instant::now()) {
            log::warn!(
                "cluster: refused input from {from}: {what}{}",
                crate::throttle::left_out(left_out)
            );
        }
    }

    /// Applies routes a peer announced to what waits for it.
    fn peer_routes(
        &self,
        name: &str,
        version: u64,
        full: bool,
        add: Vec<Route>,
        remove: Vec<String>,
    ) {
        let now = Instant::now();
        let (outbox, routes) = {
            let mut peers = self.peers();
            let peer = self.peer_entry(&mut peers, name);
            if full {
                peer.routes.clear();
            }
            for filter in &remove {
                peer.routes.remove(filter);
            }
            for route in add {
                peer.routes.insert(route.filter.clone(), route);
            }
            peer.last_sync = Some(SystemTime::now());
            let routes: Vec<(String, Option<u32>)> = peer
                .routes
                .values()
                .map(|r| (r.filter.clone(), r.shared))
                .collect();
            (peer.outbox.clone(), routes)
        };
        self.broker.set_peer_routes(&outbox, &routes, now);
        self.broker
            .moved_announced(name, |filter| routes.iter().any(|(f, _)| f == filter), now);
        log::debug!(
            "cluster: node {name} routes at version {version}: {} ({})",
            routes.len(),
            if full { "all" } else { "changes" }
        );
        self.synced.notify(usize::MAX);
    }

    /// Whether the routes held for `name` have `digest`.
    fn peer_routes_match(&self, name: &str, digest: u64) -> bool {
        self.peers()
            .get(name)
            .is_some_and(|p| link::routes_digest(p.routes.values()) == digest)
    }

    /// Every retained entry (tombstones included) for a peer whose digest differed.
    fn retained_entries(&self) -> Vec<RetainedEntry> {
        let now = Instant::now();
        let stamps: Vec<(String, Stamp, bool)> = self
            .stamps()
            .iter()
            .map(|(topic, (stamp, deleted))| (topic.clone(), *stamp, *deleted))
            .collect();
        let mut out = Vec::with_capacity(stamps.len());
        for (topic, stamp, deleted) in stamps {
            let message = if deleted {
                None
            } else {
                match self
                    .broker
                    .retained_matching(&topic, now)
                    .into_iter()
                    .next()
                {
                    Some(m) => Some(retained_message(&m, now)),
                    None => continue,
                }
            };
            out.push(RetainedEntry {
                topic,
                stamp,
                message,
            });
        }
        out
    }

    fn retained_digest_value(&self) -> u64 {
        let items: Vec<Vec<u8>> = self
            .stamps()
            .iter()
            .map(|(topic, (stamp, deleted))| {
                format!("{topic}\0{}\0{}\0{deleted}", stamp.clock, stamp.node).into_bytes()
            })
            .collect();
        wire::digest(items.iter().map(Vec::as_slice))
    }

    fn retained_digest(&self) -> Frame {
        Frame::RetainedDigest {
            digest: self.retained_digest_value(),
            count: self.stamps().len() as u64,
        }
    }

    /// Takes retained messages a peer set or deleted: the later stamp wins, decided
    /// with the retained messages locked (see `Broker::apply_peer_retained`).
    fn apply_retained(&self, entries: Vec<RetainedEntry>) {
        let now = Instant::now();
        for entry in entries {
            self.clock.observe(entry.stamp.clock);
            let topic = Topic::from(entry.topic.as_str());
            let deleted = entry.message.is_none();
            let message = match entry.message {
                Some(m) => {
                    let qos = QoS::from_u8(m.qos).unwrap_or(QoS::AtMostOnce);
                    let mut message = Message::new(topic, Bytes::from(m.payload), qos, true);
                    message.forwarded_properties = Bytes::from(m.properties);
                    message.expires_at = m
                        .expiry
                        .map(|secs| now + Duration::from_secs(u64::from(secs)));
                    message
                }
                None => Message::new(topic, Bytes::new(), QoS::AtMostOnce, true),
            };
            let newer = || {
                let mut stamps = self.stamps();
                if stamps
                    .get(&entry.topic)
                    .is_some_and(|(s, _)| *s >= entry.stamp)
                {
                    return false;
                }
                stamps.insert(entry.topic.clone(), (entry.stamp, deleted));
                self.state_dirty.store(true, Ordering::Relaxed);
                true
            };
            self.broker
                .apply_peer_retained(Arc::new(message), now, newer);
        }
    }

    /// Forgets the tombstones older than [`TOMBSTONE_KEEP_MS`] at wall time `wall_ms`.
    fn expire_tombstones(&self, wall_ms: u64) {
        let mut stamps = self.stamps();
        let before = stamps.len();
        stamps.retain(|_, (stamp, deleted)| {
            !*deleted || clock::wall_ms_of(stamp.clock).saturating_add(TOMBSTONE_KEEP_MS) > wall_ms
        });
        if stamps.len() != before {
            self.state_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes `cluster.state` (aside, flushed to the disk, then renamed) when something
    /// changed, with a new reservation of the clock.
    fn save_state(&self) {
        let Some(path) = &self.state_path else {
            return;
        };
        if !self.state_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let reservation = self.clock.reservation(wall_ms(SystemTime::now()));
        let state = State {
            incarnation: self.me.incarnation,
            clock: reservation,
            stamps: self
                .stamps()
                .iter()
                .map(|(t, (s, deleted))| (t.clone(), *s, *deleted))
                .collect(),
            owners: self.all_records(),
        };
        let bytes = postcard::to_allocvec(&state).unwrap_or_default();
        let aside = path.with_extension("state.new");
        let written = std::fs::File::create(&aside)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&aside, path));
        match written {
            Ok(()) => self.reserved.store(reservation, Ordering::Relaxed),
            Err(e) => {
                self.state_dirty.store(true, Ordering::Relaxed);
                log::warn!("cluster: cannot keep {}: {e}", path.display());
            }
        }
    }

    /// Every node, this one first, for the management API.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut out = vec![NodeView {
            name: self.settings.name.clone(),
            addr: Some(self.settings.advertise),
            state: "running",
            link_since: None,
            status: Some(self.status()),
            queued: (0, 0),
            last_sync: None,
            last_error: String::new(),
            routes: self.broker.local_routes().len(),
        }];
        for (name, peer) in self.peers().iter() {
            let linked = peer.link.as_ref().is_some_and(|l| !l.is_closed());
            let st = peer.outbox.lock();
            let (backlog, backlog_bytes) = st.backlog().unwrap_or_default();
            out.push(NodeView {
                name: name.clone(),
                addr: peer.id.as_ref().map(|id| id.addr),
                state: match (peer.up, linked) {
                    (_, true) => "running",
                    (true, false) => "connecting",
                    (false, false) => "down",
                },
                link_since: peer.link_since.filter(|_| linked),
                status: peer.status.clone(),
                queued: (
                    st.queue.len() + st.inflight.len() + backlog,
                    st.queued_bytes + backlog_bytes,
                ),
                last_sync: peer.last_sync,
                last_error: peer.last_error.clone(),
                routes: peer.routes.len(),
            });
        }
        out
    }

    /// The routes each peer announced: (filter, node).
    pub fn remote_routes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, peer) in self.peers().iter() {
            out.extend(peer.routes.keys().map(|f| (f.clone(), name.clone())));
        }
        out
    }

    /// How many nodes this one sees (itself included), and how many it knew of (a
    /// node that left on purpose is not counted).
    pub fn reachable(&self) -> (usize, usize) {
        let peers = self.peers();
        let up = peers.values().filter(|p| p.up).count();
        let known = peers.values().filter(|p| p.up || !p.left).count();
        (up + 1, known + 1)
    }

    /// Peer `name` said it is leaving.
    pub(super) fn peer_left(&self, name: &str) {
        if let Some(peer) = self.peers().get_mut(name) {
            peer.left = true;
        }
        log::info!("cluster: node {name} is leaving");
    }
}

/// A retained message as a peer receives it.
fn retained_message(m: &Message, now: Instant) -> RetainedMessage {
    RetainedMessage {
        payload: m.payload.to_vec(),
        qos: m.qos as u8,
        properties: m.forwarded_properties.to_vec(),
        expiry: m.remaining_expiry(now),
    }
}

impl Replicator for Cluster {
    fn session_changed(&self, client_id: &str) {
        self.owners_changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_owned());
        self.owners_event.notify(1);
    }

    fn redirect(
        &self,
        to: &str,
        client_id: &str,
        image: SessionImage,
        published_here: Option<&str>,
    ) {
        self.redirect_moved(to, client_id, image, published_here);
    }

    fn claim(&self, client_id: &str, clean_start: bool) -> Claim {
        match self.this.upgrade() {
            Some(cluster) => Box::pin(cluster.claim(client_id.to_owned(), clean_start)),
            None => Box::pin(std::future::ready(Claimed::AsAsked)),
        }
    }

    /// A retained message set (or deleted) here: stamped and sent to every linked peer.
    fn retained_changed(&self, message: &Arc<Message>) {
        let topic = message.topic.to_string();
        let stamp = Stamp {
            clock: self.clock.tick(wall_ms(SystemTime::now())),
            node: wire::fnv1a(self.settings.name.as_bytes()),
        };
        let deleted = message.payload.is_empty();
        let now = Instant::now();
        self.stamps().insert(topic.clone(), (stamp, deleted));
        self.state_dirty.store(true, Ordering::Relaxed);
        let entry = RetainedEntry {
            topic,
            stamp,
            message: (!deleted).then(|| retained_message(message, now)),
        };
        for peer in self.peers().values() {
            if let Some(link) = &peer.link {
                // A full queue: the digest at the next link finds the difference.
                let _ = link.try_send(Frame::Retained(vec![entry.clone()]));
            }
        }
    }
}
