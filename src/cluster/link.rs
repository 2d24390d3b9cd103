//! One link between this node and a peer: a TCP (or mutual TLS) connection, the
//! handshake (versions, names, each end's proof that it holds the secret), then frames
//! both ways until either end goes.
//!
//! Messages cross as MQTT 5 packets between two sessions the broker keeps for each
//! peer: what waits for the peer is the outbox `$cluster/out/PEER`, a persistent session
//! subscribed to the peer's routes, served by the ordinary connection loop over an
//! in-memory pipe as if it were a client (as a bridge's outbox is); what the peer
//! sends here is taken by `$cluster/in/PEER`, a persistent session whose PUBLISH
//! packets reach this node's own sessions only. So a message waits for a peer the
//! way it waits for any persistent subscriber: queued within limits, stored (under
//! `strict`, before its publisher is acknowledged), sent again after a crash or a cut;
//! and QoS 2 crosses exactly once through the two sessions' stored packet ids and
//! stages, QoS 1 at least once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::Timer;
use smol::channel::Receiver;
use smol::future::{Future, FutureExt};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::stream::Stream;

use super::Cluster;
use super::pipe::{self, End};
use super::retry::{Retries, Verdict};
use super::wire::{self, Frame, Hello, LINK_MAGIC, LINK_VERSIONS, Proof, Route, Side, Transcript};
use crate::auth::AuthPolicy;
use crate::broker::Role;
use crate::broker::session::{NEVER_EXPIRES, peer_inbound_client_id, peer_outbox_client_id};
use crate::protocol::{
    self, Connect, Packet, Properties, PropertyValues, ProtocolVersion, ReasonCode,
};
use crate::transport::RelayStream;
use crate::transport::admission::Admission;
use crate::transport::connection::{self, ConnectionConfig};

/// What a link carries, TCP or TLS.
pub trait LinkIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LinkIo for T {}
pub type LinkStream = Box<dyn LinkIo>;

/// How long the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a link says something (status, digests) when nothing else crosses.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A link that has heard nothing for this long is dead.
const SILENCE: Duration = Duration::from_secs(20);
/// Routes changes are sent at most this often (a burst of subscriptions is one delta).
const ROUTES_EVERY: Duration = Duration::from_millis(50);
/// Frames waiting for the socket before the link stops taking more from its sessions.
const WRITE_HIGH: usize = 256 * 1024;
/// MQTT packets put in one frame, at most.
const FORWARD_BATCH: usize = 64 * 1024;

/// What the handshake learnt of the other end.
pub struct Greeting {
    pub peer: String,
    pub version: u16,
    /// QoS 1 and 2 messages the peer takes in flight at once.
    pub receive_maximum: u16,
    /// The peer's outbox for this node has nothing in flight: this node's session for
    /// the peer starts afresh.
    pub peer_outbox_idle: bool,
    /// Bytes that arrived after the handshake.
    rbuf: Vec<u8>,
}

/// The largest frame a link takes before the other end has proved it holds the secret.
const HANDSHAKE_FRAME: usize = 4096;

/// Reads the next whole handshake frame.
async fn read_frame(stream: &mut LinkStream, rbuf: &mut Vec<u8>) -> Result<Frame, String> {
    let mut chunk = [0u8; 1024];
    loop {
        match wire::decode_frame_within(rbuf, HANDSHAKE_FRAME) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        rbuf.extend_from_slice(&chunk[..n]);
    }
}

async fn send_frame(stream: &mut LinkStream, frame: &Frame) -> Result<(), String> {
    let mut out = Vec::new();
    wire::encode_frame(frame, &mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Both ends' hellos and proofs. `expect`: the name of the node this end dialled
/// (`None` on the accepting end). The dialler proves first; the acceptor answers with
/// its own proof only once the dialler's holds.
pub async fn handshake(
    stream: &mut LinkStream,
    cluster: &Cluster,
    expect: Option<&str>,
) -> Result<Greeting, String> {
    let work = async {
        let me = &cluster.settings.name;
        let mine = Hello {
            magic: LINK_MAGIC,
            versions: LINK_VERSIONS.to_vec(),
            node: me.clone(),
            nonce: wire::nonce(),
            receive_maximum: cluster.broker.settings.receive_maximum,
        };
        send_frame(stream, &Frame::Hello(mine.clone())).await?;
        let mut rbuf = Vec::new();
        let theirs = match read_frame(stream, &mut rbuf).await? {
            Frame::Hello(hello) if hello.magic == LINK_MAGIC => hello,
            _ => return Err("the other end is not a Tern cluster node".into()),
        };
        let version = wire::common_version(&theirs.versions).ok_or_else(|| {
            format!(
                "node {} speaks link versions {:?}, this node {LINK_VERSIONS:?}",
                theirs.node, theirs.versions
            )
        })?;
        if theirs.node == *me {
            return Err(format!(
                "the node at the other end is named {me} too: node names must be unique"
            ));
        }
        if let Some(expect) = expect.filter(|e| *e != theirs.node) {
            return Err(format!("expected node {expect}, found {}", theirs.node));
        }
        let secret = &cluster.settings.secret;
        let (side, their_side, t) = match expect {
            Some(_) => (
                Side::Dialler,
                Side::Acceptor,
                Transcript {
                    dialler: &mine,
                    acceptor: &theirs,
                },
            ),
            None => (
                Side::Acceptor,
                Side::Dialler,
                Transcript {
                    dialler: &theirs,
                    acceptor: &mine,
                },
            ),
        };
        let outbox_idle = cluster.outbox_idle(&theirs.node);
        let my_proof = Frame::Proof(Proof {
            mac: wire::proof(secret, side, &t, outbox_idle),
            outbox_idle,
        });
        if side == Side::Dialler {
            send_frame(stream, &my_proof).await?;
        }
        let their_proof = match read_frame(stream, &mut rbuf).await? {
            Frame::Proof(given) if wire::check_proof(secret, their_side, &t, &given) => given,
            Frame::Proof(_) => {
                return Err(format!(
                    "node {} does not hold this cluster's secret",
                    theirs.node
                ));
            }
            _ => return Err("no proof after the hello".into()),
        };
        if side == Side::Acceptor {
            send_frame(stream, &my_proof).await?;
        }
        Ok(Greeting {
            peer: theirs.node,
            version,
            receive_maximum: theirs.receive_maximum.max(1),
            peer_outbox_idle: their_proof.outbox_idle,
            rbuf,
        })
    };
    work.or(async {
        Timer::after(HANDSHAKE_TIMEOUT).await;
        Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))
    })
    .await
}

/// The CONNECT a relay session starts with.
fn connect_packet(client_id: String, receive_maximum: u16, clean_start: bool) -> BytesMut {
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start,
        keep_alive: 0,
        client_id,
        will: None,
        username: None,
        password: None,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(NEVER_EXPIRES),
            receive_maximum: Some(receive_maximum),
            ..PropertyValues::default()
        }),
    };
    let mut out = BytesMut::new();
    protocol::encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V5,
        &mut out,
    );
    out
}

/// Serves one of the peer's relay sessions over `end`, as the connection loop serves
/// a client; it ends when the link closes its side of the pipe.
fn serve_relay(cluster: &Arc<Cluster>, end: End, peer_addr: SocketAddr, peer: &str) {
    let config = Arc::new(ConnectionConfig {
        listener: Arc::new(format!("cluster:{peer}")),
        connect_timeout: Duration::from_secs(10),
        auth: Arc::new(AuthPolicy::open()),
        proxy_trusted: None,
        identity_as_username: false,
        tls: None,
        ws_path: None,
        role: Role::PeerLink,
    });
    // A relay is not a network client: no connection limits apply.
    let verdict = Admission::new(usize::MAX, 0)
        .listener(None)
        .admit(peer_addr.ip(), Instant::now());
    let serving = connection::serve(
        Box::new(end) as RelayStream,
        peer_addr,
        cluster.broker.clone(),
        config,
        verdict,
        BytesMut::new(),
        None,
    );
    cluster.executor.spawn(serving).detach();
}

/// Runs an established link until it ends; why it ended.
pub async fn run(
    cluster: Arc<Cluster>,
    stream: LinkStream,
    greeting: Greeting,
    peer_addr: SocketAddr,
    frames: Receiver<Frame>,
) -> String {
    let peer = greeting.peer.clone();
    let (outbox_session, outbox) = pipe::pair();
    let (inbound_session, inbound) = pipe::pair();
    // The sessions read their CONNECT first; their CONNACKs come back through the pipes.
    let window = greeting.receive_maximum;
    let pushed = outbox
        .push(&connect_packet(peer_outbox_client_id(&peer), window, false))
        .and_then(|()| {
            inbound.push(&connect_packet(
                peer_inbound_client_id(&peer),
                cluster.broker.settings.receive_maximum,
                greeting.peer_outbox_idle,
            ))
        });
    if let Err(e) = pushed {
        return format!("relay sessions: {e}");
    }
    serve_relay(&cluster, outbox_session, peer_addr, &peer);
    serve_relay(&cluster, inbound_session, peer_addr, &peer);
    let mut link = Link {
        cluster: cluster.clone(),
        peer: peer.clone(),
        stream,
        rbuf: greeting.rbuf,
        wbuf: Vec::new(),
        outbox,
        inbound,
        from_outbox: BytesMut::new(),
        from_inbound: BytesMut::new(),
        frames: Box::pin(frames),
        sent_routes: BTreeMap::new(),
        routes_version: None,
        routes_listener: None,
        next_routes: Instant::now(),
        routes_timer: Timer::never(),
        heartbeat: Timer::after(Duration::ZERO),
        last_heard: Instant::now(),
        retries: Retries::default(),
        retry_timer: Timer::never(),
        retained_digests: RetainedDigests::First,
        ended: None,
        version: greeting.version,
    };
    link.send(&Frame::Status(cluster.status()));
    if link.version >= wire::SESSIONS_VERSION {
        for frame in wire::owner_frames(cluster.all_records()) {
            link.send(&frame);
        }
    }
    std::future::poll_fn(|cx| link.poll_run(cx)).await
}

struct Link {
    cluster: Arc<Cluster>,
    peer: String,
    stream: LinkStream,
    rbuf: Vec<u8>,
    /// Encoded frames for the peer, not yet written.
    wbuf: Vec<u8>,
    /// The link's ends of the two relay sessions' pipes.
    outbox: End,
    inbound: End,
    /// Bytes from each session short of a whole packet.
    from_outbox: BytesMut,
    from_inbound: BytesMut,
    /// Frames the cluster wants sent (retained messages set here, ...).
    frames: Pin<Box<Receiver<Frame>>>,
    /// The routes the peer was last told.
    sent_routes: BTreeMap<String, Route>,
    routes_version: Option<u64>,
    routes_listener: Option<event_listener::EventListener>,
    next_routes: Instant,
    routes_timer: Timer,
    heartbeat: Timer,
    last_heard: Instant,
    /// The outbox's messages the peer has not taken yet, and those it refused for now.
    retries: Retries,
    retry_timer: Timer,
    retained_digests: RetainedDigests,
    ended: Option<String>,
    /// The link version both ends speak.
    version: u16,
}

/// How the peer's retained digests compared with this node's: the first, at the
/// link's start, differing is acted on at once; a heartbeat's only when the one before
/// differed too, since a change crossing on the wire makes them differ for a moment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RetainedDigests {
    First,
    Matched,
    DifferedOnce,
}

impl Link {
    fn send(&mut self, frame: &Frame) {
        wire::encode_frame(frame, &mut self.wbuf);
    }

    /// Every retained message and tombstone, in frames of a bounded size.
    fn send_retained(&mut self) {
        for frame in wire::retained_frames(self.cluster.retained_entries()) {
            self.send(&frame);
        }
    }

    fn end(&mut self, why: impl Into<String>) {
        self.ended.get_or_insert_with(|| why.into());
    }

    /// Ready with why the link ended.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        loop {
            if let Some(why) = self.ended.take() {
                return Poll::Ready(why);
            }
            let mut progress = false;
            // Write what is waiting.
            while !self.wbuf.is_empty() {
                match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                    Poll::Ready(Ok(0)) => {
                        self.end("the peer closed the link");
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.wbuf.drain(..n);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.end(format!("writing to the peer: {e}"));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if self.wbuf.is_empty() {
                let _ = Pin::new(&mut self.stream).poll_flush(cx);
            }
            // What the peer sent, while the inbound session keeps up with it: a peer
            // that sends faster than this node stores waits in its socket.
            let room = self.inbound.poll_room(cx).is_ready();
            if room {
                let mut chunk = [0u8; 16 * 1024];
                match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(0)) => self.end("the peer closed the link"),
                    Poll::Ready(Ok(n)) => {
                        self.last_heard = Instant::now();
                        self.rbuf.extend_from_slice(&chunk[..n]);
                        self.take_frames();
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => self.end(format!("reading from the peer: {e}")),
                    Poll::Pending => {}
                }
            } else {
                // Not reading is not the peer's silence.
                self.last_heard = Instant::now();
            }
            // The inbound session's acknowledgements, whatever the write buffer holds:
            // there is one at most per message the peer has in flight (its receive
            // maximum), and holding them back could stall both links at once.
            if let Poll::Ready(r) = self.inbound.poll_take(cx) {
                match r {
                    Ok(bytes) if bytes.is_empty() => self.end("the inbound session ended"),
                    Ok(bytes) => {
                        self.from_inbound.extend_from_slice(&bytes);
                        self.relay_inbound();
                        progress = true;
                    }
                    Err(e) => self.end(format!("inbound session: {e}")),
                }
            }
            if self.wbuf.len() < WRITE_HIGH {
                // What this node's sessions have for the peer.
                if let Poll::Ready(r) = self.outbox.poll_take(cx) {
                    match r {
                        Ok(bytes) if bytes.is_empty() => self.end("the outbox session ended"),
                        Ok(bytes) => {
                            self.from_outbox.extend_from_slice(&bytes);
                            self.relay_outbox();
                            progress = true;
                        }
                        Err(e) => self.end(format!("outbox session: {e}")),
                    }
                }
                loop {
                    match self.frames.as_mut().poll_next(cx) {
                        Poll::Ready(Some(frame)) => {
                            self.send(&frame);
                            progress = true;
                        }
                        Poll::Ready(None) => {
                            self.end("a newer link took over, or this node is stopping");
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                // After the frames queued before a change of routes: a peer learns where
                // a session went (`Owners`) before it learns that it left here.
                progress |= self.poll_routes(cx);
            }
            progress |= self.poll_retries(cx);
            if Pin::new(&mut self.heartbeat).poll(cx).is_ready() {
                if self.last_heard.elapsed() > SILENCE {
                    self.end(format!("nothing from the peer for {SILENCE:?}"));
                }
                self.send(&Frame::Status(self.cluster.status()));
                self.send(&Frame::RouteDigest {
                    version: self.routes_version.unwrap_or(0),
                    digest: routes_digest(self.sent_routes.values()),
                });
                // Retained messages sent while the link's queue was full, or lost with
                // a crash before `cluster.state` kept them, are found here.
                self.send(&self.cluster.retained_digest());
                self.heartbeat.set_after(HEARTBEAT);
                progress = true;
            }
            if !progress && self.ended.is_none() {
                return Poll::Pending;
            }
        }
    }

    /// Sends the peer what changed in this node's routes, at most every
    /// [`ROUTES_EVERY`]; all of them the first time.
    fn poll_routes(&mut self, cx: &mut Context<'_>) -> bool {
        let broker = &self.cluster.broker;
        let version = broker.local_routes().version();
        if self.routes_version == Some(version) {
            let listener = self
                .routes_listener
                .get_or_insert_with(|| broker.local_routes().listen());
            if Pin::new(listener).poll(cx).is_pending() {
                return false;
            }
            self.routes_listener = None;
            return true;
        }
        if Instant::now() < self.next_routes {
            self.routes_timer.set_at(self.next_routes);
            let _ = Pin::new(&mut self.routes_timer).poll(cx);
            return false;
        }
        self.next_routes = Instant::now() + ROUTES_EVERY;
        self.send_routes(self.routes_version.is_none());
        true
    }

    fn send_routes(&mut self, full: bool) {
        let (version, routes) = self.cluster.broker.local_routes().snapshot();
        let now: BTreeMap<String, Route> = routes
            .into_iter()
            .map(|r| {
                let route = Route {
                    filter: r.filter.to_string(),
                    shared: r.shared.map(|id| id.get()),
                    members: r.sessions,
                };
                (route.filter.clone(), route)
            })
            .collect();
        let frame = if full {
            Frame::Routes {
                version,
                full: true,
                add: now.values().cloned().collect(),
                remove: Vec::new(),
            }
        } else {
            Frame::Routes {
                version,
                full: false,
                add: now
                    .values()
                    .filter(|r| self.sent_routes.get(&r.filter) != Some(r))
                    .cloned()
                    .collect(),
                remove: self
                    .sent_routes
                    .keys()
                    .filter(|f| !now.contains_key(*f))
                    .cloned()
                    .collect(),
            }
        };
        self.send(&frame);
        self.sent_routes = now;
        self.routes_version = Some(version);
    }

    fn take_frames(&mut self) {
        loop {
            match wire::decode_frame(&mut self.rbuf) {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return,
                Err(e) => {
                    self.cluster.bad_input(&self.peer, &e.to_string());
                    self.end(format!("the peer sent {e}"));
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) {
        let cluster = self.cluster.clone();
        match frame {
            Frame::Forward(packets) => {
                if !only_whole(&packets, &[PUBLISH, PUBREL]) {
                    self.refuse("a forward frame with other than whole PUBLISH and PUBREL packets");
                } else if let Err(e) = self.inbound.push(&packets) {
                    self.end(format!("inbound session: {e}"));
                }
            }
            Frame::Acknowledge(packets) if !only_whole(&packets, &[PUBACK, PUBREC, PUBCOMP]) => {
                self.refuse(
                    "an acknowledge frame with other than whole PUBACK, PUBREC and PUBCOMP packets",
                );
            }
            Frame::Acknowledge(packets) => self.take_acknowledgements(packets),
            Frame::Routes {
                version,
                full,
                add,
                remove,
            } => cluster.peer_routes(&self.peer, version, full, add, remove),
            Frame::RouteDigest { version, digest } => {
                if !cluster.peer_routes_match(&self.peer, digest) {
                    log::info!(
                        "cluster: routes of node {} differ from its digest at version {version}; asking for all of them",
                        self.peer
                    );
                    self.send(&Frame::RoutesRequest);
                }
            }
            Frame::RoutesRequest => self.send_routes(true),
            Frame::Retained(entries) => cluster.apply_retained(entries),
            Frame::RetainedDigest { digest, .. } => {
                let differs = digest != cluster.retained_digest_value();
                let before = self.retained_digests;
                self.retained_digests = if differs {
                    RetainedDigests::DifferedOnce
                } else {
                    RetainedDigests::Matched
                };
                if differs && before != RetainedDigests::Matched {
                    self.send_retained();
                    self.retained_digests = RetainedDigests::Matched;
                }
            }
            Frame::RetainedRequest => self.send_retained(),
            Frame::Status(status) => cluster.peer_status(&self.peer, status),
            Frame::Ping => self.send(&Frame::Pong),
            Frame::Pong => {
                cluster.pongs.notify(usize::MAX);
            }
            Frame::Hello(_) | Frame::Proof(_) => {
                self.refuse("a handshake frame after the handshake")
            }
            Frame::Owners(_) | Frame::Claim { .. } | Frame::Handover { .. } | Frame::Leaving
                if self.version < wire::SESSIONS_VERSION =>
            {
                self.refuse("a session frame on a link of version 1")
            }
            Frame::Owners(records) => cluster.records_arrived(&self.peer, records),
            Frame::Claim {
                id,
                client_id,
                clean_start,
                epoch,
            } => {
                let answer = cluster.claimed_by(&self.peer, id, client_id, clean_start, epoch);
                self.send(&answer);
            }
            Frame::Handover {
                id,
                client_id,
                image,
                resume,
            } => cluster.handover_arrived(&self.peer, id, client_id, image, resume),
            Frame::Leaving => cluster.peer_left(&self.peer),
        }
    }

    /// Ends the link over a frame no Tern node sends, and logs it.
    fn refuse(&mut self, what: &str) {
        self.cluster.bad_input(&self.peer, what);
        self.end(format!("the peer sent {what}"));
    }

    /// Passes the outbox session's PUBLISH and PUBREL packets to the peer.
    fn relay_outbox(&mut self) {
        let mut batch = Vec::new();
        for (kind, packet) in whole_packets(&mut self.from_outbox) {
            match kind {
                PUBLISH | PUBREL => {
                    batch.extend_from_slice(&packet);
                    if kind == PUBLISH {
                        self.retries.sent(packet.freeze());
                    }
                    if batch.len() >= FORWARD_BATCH {
                        self.send(&Frame::Forward(std::mem::take(&mut batch)));
                    }
                }
                CONNACK => check_connack(&packet, &self.peer, "outbox"),
                DISCONNECT => self.end(session_closed("outbox", &packet)),
                _ => {}
            }
        }
        if !batch.is_empty() {
            self.send(&Frame::Forward(batch));
        }
    }

    /// Passes the peer's acknowledgements to the outbox session, but for refusals a
    /// retry may overcome (see `retry.rs`).
    fn take_acknowledgements(&mut self, packets: Vec<u8>) {
        let now = Instant::now();
        let mut buf = BytesMut::from(&packets[..]);
        let mut pass = BytesMut::new();
        for (_, packet) in whole_packets(&mut buf) {
            match self.retries.acknowledged(&packet, now) {
                Verdict::Pass => pass.extend_from_slice(&packet),
                Verdict::Hold => {}
                Verdict::Final(code) => {
                    self.cluster
                        .broker
                        .metrics
                        .dropped_by_peer
                        .fetch_add(1, Ordering::Relaxed);
                    self.cluster.bad_input(
                        &self.peer,
                        &format!("node {} refused a message for good: {code}", self.peer),
                    );
                    pass.extend_from_slice(&packet);
                }
            }
        }
        if let Some(at) = self.retries.next_due() {
            self.retry_timer.set_at(at);
        }
        if !pass.is_empty() {
            if let Err(e) = self.outbox.push(&pass) {
                self.end(format!("outbox session: {e}"));
            }
        }
    }

    /// Offers the peer again what it refused for now, when due.
    fn poll_retries(&mut self, cx: &mut Context<'_>) -> bool {
        if Pin::new(&mut self.retry_timer).poll(cx).is_pending() {
            return false;
        }
        let due = self.retries.due(Instant::now());
        if !due.is_empty() {
            log::debug!(
                "cluster: offering node {} {} refused messages again",
                self.peer,
                due.len()
            );
            let mut batch = Vec::new();
            for packet in due {
                batch.extend_from_slice(&packet);
            }
            self.send(&Frame::Forward(batch));
        }
        match self.retries.next_due() {
            Some(at) => self.retry_timer.set_at(at),
            None => self.retry_timer = Timer::never(),
        }
        true
    }

    /// Passes the inbound session's PUBACK, PUBREC and PUBCOMP packets to the peer.
    fn relay_inbound(&mut self) {
        let mut batch = Vec::new();
        for (kind, packet) in whole_packets(&mut self.from_inbound) {
            match kind {
                PUBACK | PUBREC | PUBCOMP => batch.extend_from_slice(&packet),
                CONNACK => check_connack(&packet, &self.peer, "inbound"),
                DISCONNECT => self.end(session_closed("inbound", &packet)),
                _ => {}
            }
        }
        if !batch.is_empty() {
            self.send(&Frame::Acknowledge(batch));
        }
    }
}

const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const DISCONNECT: u8 = 14;

/// The whole MQTT packets at the front of `buf` (packet type, bytes); a partial one
/// stays for the next read.
fn whole_packets(buf: &mut BytesMut) -> Vec<(u8, BytesMut)> {
    let mut out = Vec::new();
    while let Ok(Some(len)) = protocol::frame_len(buf, usize::MAX) {
        if buf.len() < len {
            break;
        }
        let packet = buf.split_to(len);
        out.push((packet[0] >> 4, packet));
    }
    out
}

/// Whether `packets` is whole MQTT packets of the `kinds` only: what a relay session
/// may be handed (a peer's SUBSCRIBE or a half packet would change what it does).
fn only_whole(packets: &[u8], kinds: &[u8]) -> bool {
    let mut rest = packets;
    while !rest.is_empty() {
        match protocol::frame_len(rest, usize::MAX) {
            Ok(Some(len)) if len <= rest.len() && kinds.contains(&(rest[0] >> 4)) => {
                rest = &rest[len..];
            }
            _ => return false,
        }
    }
    true
}

/// Why a relay session was closed, from its DISCONNECT.
fn session_closed(which: &str, packet: &[u8]) -> String {
    match packet.get(2).copied().map(ReasonCode) {
        Some(ReasonCode::SERVER_SHUTTING_DOWN) => "this node is stopping".into(),
        Some(ReasonCode::SESSION_TAKEN_OVER) => {
            format!("the {which} session was taken over by another link")
        }
        code => format!(
            "the {which} session was closed ({})",
            code.unwrap_or(ReasonCode::SUCCESS)
        ),
    }
}

fn check_connack(packet: &[u8], peer: &str, which: &str) {
    let code = packet.get(3).copied().unwrap_or(0);
    if code != 0 {
        log::error!(
            "cluster: the {which} session for node {peer} was refused: {}",
            ReasonCode(code)
        );
    }
}

/// The digest of a set of routes, as both ends compute it.
pub fn routes_digest<'a>(routes: impl Iterator<Item = &'a Route>) -> u64 {
    let items: Vec<Vec<u8>> = routes
        .map(|r| format!("{}\0{:?}\0{}", r.filter, r.shared, r.members).into_bytes())
        .collect();
    wire::digest(items.iter().map(Vec::as_slice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_sessions_are_handed_whole_packets_of_their_kinds_only() {
        let publish = [0x30, 0x03, 0x00, 0x01, b'a'];
        let pubrel = [0x62, 0x02, 0x00, 0x01];
        let subscribe = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00];
        let both: Vec<u8> = [&publish[..], &pubrel[..]].concat();
        assert!(only_whole(&both, &[PUBLISH, PUBREL]));
        assert!(!only_whole(&both[..6], &[PUBLISH, PUBREL]), "half a PUBREL");
        let sneaked: Vec<u8> = [&publish[..], &subscribe[..]].concat();
        assert!(!only_whole(&sneaked, &[PUBLISH, PUBREL]));
        assert!(!only_whole(&publish, &[PUBACK, PUBREC, PUBCOMP]));
        assert!(only_whole(&[], &[PUBACK]));
    }
}
