//! One client's protocol state machine: it takes decoded packets and the current time,
//! and writes the packets to send into `out`. No sockets and no clock, in the way
//! quinn-proto drives QUIC, so every rule here is unit-tested without I/O and the
//! connection task that drives it stays a thin loop.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use std::sync::atomic::Ordering;

use super::link::{Link, LinkInfo, ListenerName};
use super::session::{Inflight, OUTBOX_PREFIX, Session, Subscription, done_op};
use super::{Broker, Reached, count};
use crate::auth::{Access, AuthPolicy};
use crate::message::{Delivery, Message, SmallStr, Stage, Ticket, Visibility};
use crate::protocol::*;
use crate::store::{Op, StoredMessage, TicketState};

/// Publishes from one client routed together, at most: small enough that back-pressure
/// still stops a publisher within a few dozen messages of a subscriber's high-water
/// mark, and at most a quarter of a session's queue limit, so one batch never
/// overflows a queue that was below its high-water mark.
const PUBLISH_BATCH: usize = 32;

/// Stop encoding queued messages once this much is waiting to be written: the rest stay
/// in the session queue, where the overload rules apply.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Why a connection ends, and what the client should be told.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub code: ReasonCode,
    pub reason: Cow<'static, str>,
    /// The client sent DISCONNECT: nothing to send back.
    pub by_client: bool,
}

impl Close {
    pub fn new(code: ReasonCode, reason: impl Into<Cow<'static, str>>) -> Close {
        Close {
            code,
            reason: reason.into(),
            by_client: false,
        }
    }
}

/// The result of a CONNECT: an accepted client (its CONNACK already in `out`), or a
/// refusal with the CONNACK to send before closing.
pub enum ConnectOutcome {
    Accepted(Box<Client>),
    Refused(Refusal),
}

/// A refused CONNECT: what to log, and what to send and when.
#[derive(Debug)]
pub struct Refusal {
    pub code: ReasonCode,
    pub reason: String,
    /// The CONNACK to send before closing; empty when none may be sent.
    pub connack: BytesMut,
    /// Refusals of this kind come in floods (connection limits): log them throttled.
    pub flood: bool,
    /// Answer only after this long: a wrong password waits, which slows guessing
    /// down at the cost of that one connection.
    pub delay: Option<Duration>,
}

impl<'a> Arrival<'a> {
    /// A plain arrival: nothing refused or verified by the transport, the wall clock
    /// at its epoch and no randomness (set those where they matter).
    pub fn new(peer: SocketAddr, listener: &'a ListenerName, auth: &'a Arc<AuthPolicy>) -> Self {
        Arrival {
            peer,
            listener,
            auth,
            refusal: None,
            identity: None,
            identity_as_username: false,
            bridge_relay: false,
            wall: SystemTime::UNIX_EPOCH,
            entropy: 0,
        }
    }
}

/// How long a client that gave a wrong password waits for its CONNACK.
const WRONG_PASSWORD_DELAY: Duration = Duration::from_millis(500);

/// Where a CONNECT arrived, and what the transport already knows of its client.
pub struct Arrival<'a> {
    /// The client's real address (from a PROXY header where there was one).
    pub peer: SocketAddr,
    pub listener: &'a ListenerName,
    pub auth: &'a Arc<AuthPolicy>,
    /// The transport's own refusal (connection limits), answered in this CONNACK.
    pub refusal: Option<(ReasonCode, String)>,
    /// The common name of a client certificate the transport verified.
    pub identity: Option<&'a str>,
    /// The listener takes the user name from a verified client certificate
    /// (`use_identity_as_username`): the CONNECT's user name is replaced and no
    /// password is checked; a client without one is refused.
    pub identity_as_username: bool,
    /// The connection is a bridge's relay: only it may use an outbox's client id.
    pub bridge_relay: bool,
    /// The wall clock, for what the management API shows.
    pub wall: SystemTime,
    /// Randomness for an assigned client identifier.
    pub entropy: u64,
}

pub struct Client {
    broker: Arc<Broker>,
    session: Arc<Session>,
    /// Shared with the session and the broker: wake-ups, keep-alive, what the
    /// management API shows. Holds the user name.
    link: Arc<Link>,
    auth: Arc<AuthPolicy>,
    /// Refusals by the ACL on this connection; the first is logged, the rest counted.
    acl_refusals: u64,
    generation: u32,
    pub version: ProtocolVersion,
    bridge: bool,
    will: Option<Box<Will>>,
    peer_receive_maximum: u16,
    peer_max_packet_size: u32,
    peer_topic_alias_maximum: u16,
    /// Topic aliases, made on first use: most clients never use any.
    aliases: Option<Box<Aliases>>,
    resend_inflight: bool,
    /// CONNECT set a session expiry of 0, which DISCONNECT may not raise.
    expiry_was_zero: bool,
    /// A subscriber's queue this client's messages are filling: read no more from the
    /// client until it drains (or stalls).
    backpressure: Option<Arc<Session>>,
    /// Publishes decoded but not yet routed; made on the first publish, as a client
    /// that only subscribes never needs it.
    batch: Option<Box<PublishBatch>>,
    /// Why the connection must close after this batch (a 3.x publish nobody may
    /// acknowledge).
    refusal: Option<Box<Close>>,
    /// Encoded packets waiting to be written to the socket.
    pub out: BytesMut,
    /// Packets in `out` from this offset on wait for the store (`strict` durability);
    /// boxed, as most connections never hold anything.
    hold: Option<Box<Hold>>,
}

/// Publishes decoded but not yet routed, and the acknowledgements they owe.
#[derive(Default)]
struct PublishBatch {
    messages: Vec<Arc<Message>>,
    /// (index in `messages`, QoS, packet id).
    acks: Vec<(usize, QoS, u16)>,
    /// Where each message went, filled by the broker.
    reached: Vec<Reached>,
}

/// Topic aliases both ways (MQTT 5): the client's for its publishes, ours for what we
/// send it.
#[derive(Default)]
struct Aliases {
    inbound: HashMap<u16, Topic>,
    outbound: HashMap<Box<str>, u16>,
}

/// The tail of the write buffer that may not be sent before the store has made
/// something durable: an acknowledgement before the message it acknowledges, a QoS 2
/// delivery before the exactly-once record it depends on.
struct Hold {
    from: usize,
    /// `None` while it waits only for `messages`.
    ticket: Option<Ticket>,
    /// QoS 2 messages whose ticket may not be known yet ([`Visibility::Unknown`]).
    messages: Vec<Arc<Message>>,
}

/// Where packets held for the store stand; see [`Client::release_held`].
#[derive(Debug)]
pub enum Held {
    /// Nothing is held (any more): write everything.
    Released,
    /// The store has not yet made durable what they acknowledge.
    Waiting,
    /// The store could not keep it: close without sending them.
    Failed(Close),
}

/// A refusal's CONNACK, with the reason as a Reason String where the client's Maximum
/// Packet Size leaves room for it (none at all where it leaves room for nothing).
fn refuse(
    (version, limit): (ProtocolVersion, usize),
    code: ReasonCode,
    reason: impl Into<String>,
) -> ConnectOutcome {
    let reason = reason.into();
    let mut connack = BytesMut::new();
    let properties = Properties::from(PropertyValues {
        reason_string: Some(reason.clone()),
        ..PropertyValues::default()
    });
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties,
    });
    encode_within(&packet, version, limit, &mut connack);
    ConnectOutcome::Refused(Refusal {
        code,
        reason,
        connack,
        flood: false,
        delay: None,
    })
}

/// Mosquitto's rules: no user name needs `allow_anonymous`; a user name is checked
/// against the password file when there is one, and accepted only where anonymous
/// clients are when there is none.
fn authenticate(auth: &AuthPolicy, connect: &Connect) -> Result<(), (ReasonCode, &'static str)> {
    match (&connect.username, auth.passwords()) {
        (None, _) if !auth.settings.allow_anonymous => Err((
            ReasonCode::NOT_AUTHORIZED,
            "anonymous clients are not allowed on this listener",
        )),
        (None, _) => Ok(()),
        (Some(user), Some(passwords)) => {
            let password = connect.password.as_deref().unwrap_or_default();
            if passwords.check(user, password) {
                Ok(())
            } else {
                Err((
                    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                    "bad user name or password",
                ))
            }
        }
        (Some(_), None) if !auth.settings.allow_anonymous => Err((
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "no password file to check the user name against",
        )),
        (Some(_), None) => Ok(()),
    }
}

/// An acknowledgement of one kind (the one `sent` answers) for a packet id in flight
/// that awaits another breaks the QoS flow ([MQTT-4.3.2-2], [MQTT-4.3.3-2]): the
/// connection is closed ([MQTT-4.8.0-1]) and the flight is left as it was, so a
/// persistent session sends it again on resume.
fn wrong_acknowledgement(sent: Stage, awaited: Stage, packet_id: u16) -> Close {
    Close::new(
        ReasonCode::PROTOCOL_ERROR,
        format!(
            "{} for packet id {packet_id}, which awaits {}",
            sent.acknowledgement(),
            awaited.acknowledgement()
        ),
    )
}

/// Publishes into `$SYS` and `$share` refused for lack of an ACL grant: they come from
/// every client at once when one misbehaves, so the log line is shared and throttled.
static RESERVED_TOPIC_REFUSALS: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// What the broker itself publishes under `$SYS`, and `$share`, which names a shared
/// subscription, never a topic. Mosquitto's one exception stays open: a bridge's
/// connection state (`$SYS/broker/connection/NAME/state`), which a bridge publishes
/// to the broker it connects to, retained and as its will.
pub fn reserved_for_the_broker(topic: &str) -> bool {
    // Prefixes without the slash, as Mosquitto compares them.
    if topic.starts_with("$share") {
        return true;
    }
    topic.starts_with("$SYS")
        && !crate::protocol::topic::matches("$SYS/broker/connection/+/state", topic)
}

fn assign_client_id(entropy: u64) -> String {
    format!("auto-{entropy:016x}")
}

/// The CONNACK that answers a CONNECT the codec could not decode, where the client's
/// version has one to say ([`ConnectError::answer_in`]); empty otherwise.
pub fn answer_malformed(e: &ConnectError) -> BytesMut {
    let mut connack = BytesMut::new();
    if let Some(version) = e.answer_in {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            code: e.error.code,
            properties: Properties::default(),
        });
        encode(&packet, version, &mut connack);
    }
    connack
}

impl Client {
    /// Handles CONNECT: every reason to refuse it (the transport's, the listener's,
    /// authentication, the client identifier), the session (new, resumed or taken
    /// over) and the CONNACK with what the broker grants.
    pub fn connect(
        broker: &Arc<Broker>,
        arrival: Arrival<'_>,
        mut connect: Connect,
        now: Instant,
    ) -> ConnectOutcome {
        let settings = &broker.settings;
        let v = connect.protocol;
        let v5 = v == ProtocolVersion::V5;
        let peer_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let answer = (v, peer_max_packet_size as usize);
        let Arrival {
            peer,
            listener,
            auth,
            identity,
            ..
        } = arrival;
        let identity = identity.filter(|_| arrival.identity_as_username);
        let refusal = match arrival.refusal {
            Some(limit) => Some(limit),
            None if arrival.identity_as_username && identity.is_none() => Some((
                ReasonCode::NOT_AUTHORIZED,
                "no verified client certificate, and this listener takes the user name from \
                 one (use_identity_as_username)"
                    .to_owned(),
            )),
            // A network client must not take over (and so empty) a bridge's outbox.
            None if connect.client_id.starts_with(OUTBOX_PREFIX) && !arrival.bridge_relay => {
                Some((
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    format!("client identifiers starting with {OUTBOX_PREFIX} belong to bridges"),
                ))
            }
            None => None,
        };
        if let Some((code, why)) = refusal {
            let mut outcome = refuse(answer, code, why);
            if let ConnectOutcome::Refused(r) = &mut outcome {
                r.flood = true;
            }
            return outcome;
        }
        if broker.is_shutting_down() {
            return refuse(
                answer,
                ReasonCode::SERVER_UNAVAILABLE,
                "server is shutting down",
            );
        }
        if let Some(method) = &connect.properties.authentication_method {
            return refuse(
                answer,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                format!("authentication method {method:?} is not supported"),
            );
        }
        match identity {
            Some(user) => {
                connect.username = Some(user.to_owned());
                connect.password = None;
            }
            None => {
                if let Err((code, reason)) = authenticate(auth, &connect) {
                    let mut outcome = refuse(answer, code, reason);
                    if let ConnectOutcome::Refused(r) = &mut outcome {
                        r.delay = (code == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                            .then_some(WRONG_PASSWORD_DELAY);
                    }
                    return outcome;
                }
            }
        }
        let mut properties = Properties::default();
        let client_id = if connect.client_id.is_empty() {
            let refused = match v {
                ProtocolVersion::V31 => true,
                ProtocolVersion::V311 => !connect.clean_start,
                ProtocolVersion::V5 => false,
            };
            if refused {
                return refuse(
                    answer,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client identifier needs clean session",
                );
            }
            let id = assign_client_id(arrival.entropy);
            if v5 {
                properties.assigned_client_identifier = Some(id.clone());
            }
            id
        } else {
            connect.client_id.clone()
        };
        if client_id.len() > settings.max_client_id_len {
            return refuse(
                answer,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                format!(
                    "client identifier longer than max_client_id_len {}",
                    settings.max_client_id_len
                ),
            );
        }
        let expiry = match v {
            ProtocolVersion::V5 => {
                let asked = connect.properties.session_expiry_interval.unwrap_or(0);
                let granted = asked.min(settings.max_session_expiry);
                if granted != asked {
                    // The server's value goes back in CONNACK (MQTT 5.0 section 3.2.2.3.2).
                    properties.session_expiry_interval = Some(granted);
                }
                granted
            }
            _ if connect.clean_start => 0,
            _ => settings.persistent_client_expiration,
        };
        let mut keep_alive = connect.keep_alive;
        if v5
            && settings.max_keepalive < u16::MAX
            && (keep_alive == 0 || keep_alive > settings.max_keepalive)
        {
            keep_alive = settings.max_keepalive;
            properties.server_keep_alive = Some(keep_alive);
        }
        if v5 {
            properties.receive_maximum = Some(settings.receive_maximum);
            if settings.max_packet_size < u32::MAX {
                properties.maximum_packet_size = Some(settings.max_packet_size);
            }
            properties.topic_alias_maximum = Some(settings.topic_alias_maximum);
        }
        let mut connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::SUCCESS,
            properties,
        });
        // Whether the session is present does not change the CONNACK's size: check that
        // it fits before the session is touched ([MQTT-3.1.2-24]: close without it).
        let mut encoded = BytesMut::new();
        if !encode_within(&connack, v, peer_max_packet_size as usize, &mut encoded) {
            encode(&connack, v, &mut encoded);
            return ConnectOutcome::Refused(Refusal {
                code: ReasonCode::PACKET_TOO_LARGE,
                reason: format!(
                    "its CONNACK of {} bytes is larger than the client's Maximum Packet Size of {peer_max_packet_size}, so none is sent",
                    encoded.len()
                ),
                connack: BytesMut::new(),
                flood: false,
                delay: None,
            });
        }
        let info = LinkInfo {
            username: connect.username.take(),
            peer,
            listener: listener.clone(),
            protocol: v,
            keep_alive,
            clean_start: connect.clean_start,
        };
        let link = Arc::new(Link::new(info, broker.clock_ms(now), arrival.wall));
        let opened = broker.open_session(&client_id, connect.clean_start, v, expiry, &link, now);
        count(&broker.metrics.connections);
        broker
            .metrics
            .clients_connected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cp = &connect.properties;
        let mut client = Client {
            broker: broker.clone(),
            session: opened.session,
            link,
            auth: auth.clone(),
            acl_refusals: 0,
            generation: opened.generation,
            version: v,
            bridge: connect.bridge,
            will: connect.will.map(Box::new),
            peer_receive_maximum: match v {
                ProtocolVersion::V5 => cp.receive_maximum.unwrap_or(u16::MAX),
                _ => settings.max_inflight.max(1),
            },
            peer_max_packet_size: cp.maximum_packet_size.unwrap_or(u32::MAX),
            peer_topic_alias_maximum: cp.topic_alias_maximum.unwrap_or(0),
            aliases: None,
            resend_inflight: opened.present,
            expiry_was_zero: expiry == 0,
            backpressure: None,
            batch: None,
            refusal: None,
            out: BytesMut::new(),
            hold: None,
        };
        // The CONNACK waits for the session to be stored.
        client.hold_for(opened.ticket);
        if let Packet::ConnAck(c) = &mut connack {
            c.session_present = opened.present;
        }
        client.send(&connack);
        ConnectOutcome::Accepted(Box::new(client))
    }

    /// Writes `packet` to `out`, within the client's Maximum Packet Size; one that does
    /// not fit even without its Reason String and User Properties is not sent, and the
    /// connection closes with 0x95 ([`Client::handle`] and [`Client::pump`] return it).
    fn send(&mut self, packet: &Packet) {
        let limit = self.peer_max_packet_size as usize;
        if !encode_within(packet, self.version, limit, &mut self.out) {
            self.refusal.get_or_insert_with(|| {
                Box::new(Close::new(
                    ReasonCode::PACKET_TOO_LARGE,
                    format!(
                        "a {} to send is larger than the client's Maximum Packet Size of {limit}",
                        packet.kind()
                    ),
                ))
            });
        }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.link.peer()
    }

    fn v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    /// The session's store id when its changes are stored.
    fn stored_sid(&self) -> Option<u64> {
        self.broker.store.as_ref()?;
        self.session.lock().stored.then_some(self.session.sid.get())
    }

    fn is_strict(&self) -> bool {
        self.broker.store().is_some_and(|s| s.is_strict())
    }

    /// Holds what is written to `out` from `from` on until `ticket` is durable, under
    /// `strict` durability.
    fn hold_from(&mut self, from: usize, ticket: Option<Ticket>) {
        if ticket.is_none() || !self.is_strict() {
            return;
        }
        match &mut self.hold {
            Some(h) => {
                h.from = h.from.min(from);
                h.ticket = h.ticket.max(ticket);
            }
            None => {
                self.hold = Some(Box::new(Hold {
                    from,
                    ticket,
                    messages: Vec::new(),
                }))
            }
        }
    }

    /// Holds what is written from now on until `ticket` is durable.
    fn hold_for(&mut self, ticket: Option<Ticket>) {
        self.hold_from(self.out.len(), ticket);
    }

    /// Holds what is written from now on until `message` may be seen by subscribers.
    fn hold_for_message(&mut self, message: &Arc<Message>) {
        match message.durable_after.get() {
            Visibility::Now => {}
            Visibility::Unknown => {
                let from = self.out.len();
                self.hold
                    .get_or_insert_with(|| {
                        Box::new(Hold {
                            from,
                            ticket: None,
                            messages: Vec::new(),
                        })
                    })
                    .messages
                    .push(message.clone());
            }
            Visibility::After(ticket) => self.hold_for(Some(ticket)),
        }
    }

    /// The part of `out` that may be written now.
    pub fn writable(&self) -> &[u8] {
        match &self.hold {
            Some(h) => &self.out[..h.from],
            None => &self.out,
        }
    }

    /// `n` bytes from the front of `out` were written.
    pub fn wrote(&mut self, n: usize) {
        use bytes::Buf;
        self.out.advance(n);
        if let Some(h) = &mut self.hold {
            h.from -= n;
        }
        if self.out.is_empty() {
            // Give the buffer back: an idle connection should hold nothing.
            self.out = BytesMut::new();
        }
    }

    pub fn is_held(&self) -> bool {
        self.hold.is_some()
    }

    /// Whether the held packets may be written now, as far as the store has come:
    /// [`Held::Waiting`] until it has made durable what they acknowledge (the caller
    /// waits for the store's next commit and asks again), [`Held::Failed`] when it
    /// could not keep it, and then they are never sent: the client will send its
    /// message again.
    pub fn release_held(&mut self) -> Held {
        let Some(store) = self.broker.store.clone() else {
            self.hold = None;
            return Held::Released;
        };
        let Some(h) = &mut self.hold else {
            return Held::Released;
        };
        let mut unknown = false;
        let ticket = &mut h.ticket;
        h.messages.retain(|m| match m.durable_after.get() {
            Visibility::Unknown => {
                unknown = true;
                true
            }
            Visibility::After(t) => {
                *ticket = (*ticket).max(Some(t));
                false
            }
            Visibility::Now => false,
        });
        if unknown {
            return Held::Waiting;
        }
        let Some(ticket) = h.ticket else {
            self.hold = None;
            return Held::Released;
        };
        match store.ticket_state(ticket) {
            TicketState::Durable => {
                self.hold = None;
                Held::Released
            }
            TicketState::Failed => {
                let from = h.from;
                self.out.truncate(from);
                self.hold = None;
                Held::Failed(Close::new(
                    ReasonCode::QUOTA_EXCEEDED,
                    "the store could not keep the message (disk full or failing): not acknowledged",
                ))
            }
            TicketState::Pending => Held::Waiting,
        }
    }

    /// The shared half of this connection: its wake-ups (queued messages, a reason to
    /// close, the keep-alive sweep) arrive there.
    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn stall_timeout(&self) -> Duration {
        self.broker.settings.stall_timeout
    }

    pub fn has_backpressure(&self) -> bool {
        self.backpressure.is_some()
    }

    /// The session this client must wait for before more of its packets are read.
    pub fn take_backpressure(&mut self) -> Option<Arc<Session>> {
        self.backpressure.take()
    }

    /// Counts an ACL refusal; only the first on a connection is logged, so a client
    /// cannot fill an SD card with them.
    fn note_refusal(&mut self, topic: &str, access: Access) {
        self.acl_refusals += 1;
        if self.acl_refusals == 1 {
            let what = match access {
                Access::Read => "receive from",
                Access::Write => "publish to",
            };
            log::warn!(
                "client_id={} user={:?} is not authorized to {what} {topic:?} (further refusals on this connection are counted, not logged)",
                self.session.client_id,
                self.link.username
            );
        }
    }

    /// Whether this client may publish to `topic`: the ACL's write rules, and
    /// [`reserved_for_the_broker`] topics only where an ACL rule of the operator's
    /// grants them (such a grant comes from a rule that starts with `$`: a `#` rule
    /// never matches a `$` topic).
    fn may_publish(&mut self, topic: &str, now: Instant) -> bool {
        let acl = self.auth.acl();
        let allowed = match &acl {
            Some(acl) => acl.allows(
                &self.session.client_id,
                self.link.username.as_deref(),
                topic,
                Access::Write,
            ),
            None => true,
        };
        if reserved_for_the_broker(topic) {
            let granted = acl.is_some() && allowed;
            if !granted {
                self.acl_refusals += 1;
                if let Some(left_out) = RESERVED_TOPIC_REFUSALS.check(now) {
                    log::warn!(
                        "client_id={} user={:?} may not publish to {topic:?}: $SYS and $share belong to the broker{}",
                        self.session.client_id,
                        self.link.username,
                        crate::throttle::left_out(left_out)
                    );
                }
            }
            return granted;
        }
        if !allowed {
            self.note_refusal(topic, Access::Write);
        }
        allowed
    }

    pub fn client_id(&self) -> &SmallStr {
        &self.session.client_id
    }

    /// The largest packet this broker accepts.
    pub fn max_packet_size(&self) -> usize {
        self.broker.settings.max_packet_size as usize
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn is_bridge(&self) -> bool {
        self.bridge
    }

    /// Whether nothing has arrived for 1.5 times the keep-alive ([MQTT-3.1.2-24]):
    /// the connection must close. The broker's sweep wakes a connection that is.
    pub fn is_silent(&self, now: Instant) -> bool {
        self.link.is_silent(self.broker.clock_ms(now))
    }

    pub fn handle(&mut self, packet: Packet, now: Instant) -> Result<(), Close> {
        self.link.heard(self.broker.clock_ms(now));
        if !matches!(packet, Packet::Publish(_)) {
            // Route what came before, so a retained publish is there for the SUBSCRIBE
            // that follows it, and a DISCONNECT finds everything delivered.
            self.flush_publishes(now);
        }
        let handled = match packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => self.complete(a.packet_id, Stage::AwaitingPubAck),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => {
                self.on_pubrel(a);
                Ok(())
            }
            Packet::PubComp(a) => self.complete(a.packet_id, Stage::AwaitingPubComp),
            Packet::Subscribe(s) => self.on_subscribe(s, now),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(Close::new(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT on one connection",
            )),
            Packet::Auth(_) => Err(Close::new(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method in CONNECT",
            )),
            other => Err(Close::new(
                ReasonCode::PROTOCOL_ERROR,
                format!("{} is not sent by clients", other.kind()),
            )),
        };
        handled?;
        // A packet that did not fit the client's Maximum Packet Size.
        match self.refusal.take() {
            Some(close) => Err(*close),
            None => Ok(()),
        }
    }

    fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Close> {
        self.link.received.fetch_add(1, Ordering::Relaxed);
        if self.v5() {
            if !p.properties.subscription_identifiers.is_empty() {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "PUBLISH from a client carries a subscription identifier",
                ));
            }
            let alias = p.properties.get_mut().and_then(|p| p.topic_alias.take());
            if let Some(alias) = alias {
                if alias > self.broker.settings.topic_alias_maximum {
                    return Err(Close::new(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        format!(
                            "topic alias {alias} exceeds the maximum of {}",
                            self.broker.settings.topic_alias_maximum
                        ),
                    ));
                }
                let aliases = self.aliases.get_or_insert_with(Box::default);
                if p.topic.is_empty() {
                    p.topic = aliases.inbound.get(&alias).cloned().ok_or_else(|| {
                        Close::new(
                            ReasonCode::PROTOCOL_ERROR,
                            format!("topic alias {alias} is not set"),
                        )
                    })?;
                } else {
                    aliases.inbound.insert(alias, p.topic.clone());
                }
            } else if p.topic.is_empty() {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "PUBLISH with neither topic nor topic alias",
                ));
            }
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        if let Some(why) = self.broker.topic_too_big(p.topic.as_str()) {
            return Err(Close::new(ReasonCode::TOPIC_NAME_INVALID, why));
        }
        if !self.may_publish(p.topic.as_str(), now) {
            // v5 is told 0x87; v3 has no way to say no, so it is acknowledged and the
            // message discarded ([MQTT-3.3.5-2]).
            self.flush_publishes(now);
            let code = if self.v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(packet_id, code))),
                QoS::ExactlyOnce => {
                    if !self.v5() {
                        let mut st = self.session.lock();
                        if !st.inbound_qos2.contains(&packet_id) {
                            st.inbound_qos2.push(packet_id);
                            if st.stored {
                                let op = Op::AddInbound {
                                    sid: self.session.sid.get(),
                                    packet_id,
                                };
                                drop(st);
                                let ticket = self.broker.submit(vec![op]);
                                self.hold_for(ticket);
                            }
                        }
                    }
                    self.send(&Packet::PubRec(Ack::new(packet_id, code)));
                }
            }
            return Ok(());
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // Refused, not disconnected: a persistent client would send it again after
            // every reconnect and be cut off for ever (MQTT 5.0 section 3.3.2.3.2 lets
            // the receiver answer 0x99 in the PUBACK or PUBREC).
            self.flush_publishes(now);
            count(&self.broker.metrics.dropped_payload_format);
            log::debug!(
                "client_id={} published to {:?} a payload marked UTF-8 that is not: refused (0x99)",
                self.session.client_id,
                p.topic.as_str()
            );
            let refusal = Ack::new(packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID);
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(refusal)),
                QoS::ExactlyOnce => self.send(&Packet::PubRec(refusal)),
            }
            return Ok(());
        }
        let mut exactly_once_stored = false;
        if qos == QoS::ExactlyOnce {
            let mut st = self.session.lock();
            if st.inbound_qos2.contains(&packet_id) {
                // A resent QoS 2 PUBLISH already routed: acknowledge again, deliver once
                // (and not before the first one's record is durable).
                let stored = st.stored;
                drop(st);
                self.flush_publishes(now);
                if stored {
                    let ticket = self.broker.store().and_then(|s| s.last_ticket());
                    self.hold_for(ticket);
                }
                self.send(&Packet::PubRec(Ack::new(packet_id, ReasonCode::SUCCESS)));
                return Ok(());
            }
            exactly_once_stored = st.stored;
            // Only a v5 client was told the Receive Maximum; a 3.x client's ids are
            // bounded by the 65535 packet ids themselves.
            if self.v5()
                && st.inbound_qos2.len() >= usize::from(self.broker.settings.receive_maximum)
            {
                return Err(Close::new(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    format!(
                        "more than {} QoS 2 messages unreleased",
                        self.broker.settings.receive_maximum
                    ),
                ));
            }
            st.inbound_qos2.push(packet_id);
        }
        let message = Arc::new(Message::from_publish(
            p,
            Some(self.session.client_id.clone()),
            now,
        ));
        if exactly_once_stored && self.is_strict() {
            // Subscribers wait until the exactly-once record is durable; see
            // `Message::durable_after`.
            message.durable_after.set_unknown();
        }
        let batch = self.batch.get_or_insert_with(Box::default);
        if qos > QoS::AtMostOnce {
            batch.acks.push((batch.messages.len(), qos, packet_id));
        }
        batch.messages.push(message);
        let most = (self.broker.settings.max_queued_messages / 4).clamp(1, PUBLISH_BATCH);
        if batch.messages.len() >= most {
            self.flush_publishes(now);
        }
        Ok(())
    }

    /// Routes the publishes decoded so far and writes the acknowledgements they owe.
    /// The connection calls it after each read, and [`Client::handle`] before any other
    /// packet and every `publish_batch` messages.
    pub fn flush_publishes(&mut self, now: Instant) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        if batch.messages.is_empty() {
            self.batch = Some(batch);
            return;
        }
        let messages = std::mem::take(&mut batch.messages);
        let awaiting: Vec<Arc<Message>> = messages
            .iter()
            .filter(|m| m.durable_after.get() == Visibility::Unknown)
            .cloned()
            .collect();
        batch.reached.clear();
        let mut ops = Vec::new();
        let pressure = self
            .broker
            .publish_batch(messages, &mut batch.reached, &mut ops, now);
        if self.backpressure.is_none() {
            self.backpressure = pressure;
        }
        let acks = &batch.acks;
        // Only QoS 2 needs the session's store id: no lock for the rest.
        let exactly_once = acks.iter().any(|(_, qos, _)| *qos == QoS::ExactlyOnce);
        if let Some(sid) = exactly_once.then(|| self.stored_sid()).flatten() {
            // After the deliveries they protect: once the id is durable, so are they.
            ops.extend(
                acks.iter()
                    .filter(|(_, qos, _)| *qos == QoS::ExactlyOnce)
                    .map(|&(_, _, packet_id)| Op::AddInbound { sid, packet_id }),
            );
        }
        let ticket = self.broker.submit(ops);
        for message in awaiting {
            message.durable_after.set(ticket);
        }
        if !acks.is_empty() {
            self.hold_for(ticket);
        }
        for &(index, qos, packet_id) in acks {
            let code = match batch.reached[index] {
                Reached::Refused if !self.v5() => {
                    // 3.x has no way to say "not kept" in a PUBACK: close instead of
                    // acknowledging what was not kept.
                    self.refusal.get_or_insert_with(|| {
                        Box::new(Close::new(
                            ReasonCode::QUOTA_EXCEEDED,
                            "a bridge outbox is full",
                        ))
                    });
                    continue;
                }
                Reached::Refused => ReasonCode::QUOTA_EXCEEDED,
                Reached::Sessions(0) if self.v5() => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                _ => ReasonCode::SUCCESS,
            };
            match qos {
                QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(packet_id, code))),
                _ => self.send(&Packet::PubRec(Ack::new(packet_id, code))),
            }
        }
        batch.acks.clear();
        self.batch = Some(batch);
    }

    fn on_pubrel(&mut self, ack: Ack) {
        let mut st = self.session.lock();
        let mut op = None;
        let code = match st.inbound_qos2.iter().position(|id| *id == ack.packet_id) {
            Some(i) => {
                st.inbound_qos2.swap_remove(i);
                st.inbound_qos2.tidy();
                if st.stored {
                    op = Some(Op::DeleteInbound {
                        sid: self.session.sid.get(),
                        packet_id: ack.packet_id,
                    });
                }
                ReasonCode::SUCCESS
            }
            None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        drop(st);
        // PUBCOMP only once the id is forgotten for good: a stored id would make the
        // client's next message under it look like a duplicate after a crash.
        let ticket = self.broker.submit(op.into_iter().collect());
        self.hold_for(ticket);
        self.send(&Packet::PubComp(Ack::new(ack.packet_id, code)));
    }

    /// Ends an outbound flow waiting in `stage` (PUBACK or PUBCOMP) for this
    /// acknowledgement. One for an id not in flight is harmless and ignored.
    fn complete(&mut self, packet_id: u16, stage: Stage) -> Result<(), Close> {
        let mut st = self.session.lock();
        let Some(i) = st.inflight_position(packet_id) else {
            log::debug!(
                "client_id={} acknowledged unknown packet id {packet_id}",
                self.session.client_id
            );
            return Ok(());
        };
        let awaited = st.inflight[i].stage;
        if awaited != stage {
            return Err(wrong_acknowledgement(stage, awaited, packet_id));
        }
        let done = st
            .remove_inflight(i)
            .and_then(|f| done_op(self.session.sid.get(), &f.delivery));
        drop(st);
        self.broker.submit(done.into_iter().collect());
        Ok(())
    }

    fn on_pubrec(&mut self, ack: Ack) -> Result<(), Close> {
        let mut st = self.session.lock();
        let sid = self.session.sid.get();
        let (code, op) = match st.inflight_position(ack.packet_id) {
            Some(i) if st.inflight[i].stage == Stage::AwaitingPubAck => {
                return Err(wrong_acknowledgement(
                    Stage::AwaitingPubRec,
                    Stage::AwaitingPubAck,
                    ack.packet_id,
                ));
            }
            Some(i) if ack.code.is_error() => {
                // The receiver refused it: the flow ends here (MQTT 5.0 section 4.3.3).
                let done = st
                    .remove_inflight(i)
                    .and_then(|f| done_op(sid, &f.delivery));
                drop(st);
                self.broker.submit(done.into_iter().collect());
                return Ok(());
            }
            Some(i) => {
                // Awaiting PUBREC, or PUBCOMP after a PUBREL the receiver has not seen:
                // (again) PUBREL.
                let f = &mut st.inflight[i];
                f.stage = Stage::AwaitingPubComp;
                let op = f.delivery.seq.map(|seq| Op::SentDelivery {
                    sid,
                    seq: seq.get(),
                    packet_id: ack.packet_id,
                    stage: Stage::AwaitingPubComp,
                });
                (ReasonCode::SUCCESS, op)
            }
            None => (ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None),
        };
        drop(st);
        // PUBREL only once the stage is durable: after a crash the broker must resend
        // PUBREL, not the PUBLISH the client has already passed on.
        let ticket = self.broker.submit(op.into_iter().collect());
        self.hold_for(ticket);
        self.send(&Packet::PubRel(Ack::new(ack.packet_id, code)));
        Ok(())
    }

    /// Whether this client may subscribe to `filter`: a valid filter, within the
    /// limits every subscription meets, that the ACL lets it read from.
    fn may_subscribe(&self, filter: &str) -> Result<(), (ReasonCode, String)> {
        if let Err(e) = topic::validate_filter(filter) {
            return Err((ReasonCode::TOPIC_FILTER_INVALID, e.describe().to_owned()));
        }
        self.broker.may_subscribe(&self.session, filter)?;
        let readable = match self.auth.acl() {
            Some(acl) => acl.may_subscribe(
                &self.session.client_id,
                self.link.username.as_deref(),
                filter,
            ),
            None => true,
        };
        if !readable {
            return Err((
                ReasonCode::NOT_AUTHORIZED,
                "the ACL grants no read access to it".to_owned(),
            ));
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe, now: Instant) -> Result<(), Close> {
        let id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut ops = Vec::new();
        for (filter, mut options) in s.filters {
            if let Err((code, why)) = self.may_subscribe(&filter) {
                log::info!(
                    "client_id={} user={:?} subscription refused filter={filter:?}: {why}",
                    self.session.client_id,
                    self.link.username
                );
                if self.version == ProtocolVersion::V31 && topic::validate_filter(&filter).is_err()
                {
                    // MQTT 3.1's SUBACK has no way to refuse a malformed filter.
                    return Err(Close::new(code, format!("topic filter {filter:?}: {why}")));
                }
                codes.push(if self.v5() {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            if self.bridge {
                options.no_local = true;
                options.retain_as_published = true;
            }
            let subscription = Subscription { options, id };
            retained.extend(self.broker.add_subscription(
                &self.session,
                &filter,
                subscription,
                &mut ops,
                now,
            ));
            codes.push(ReasonCode(options.qos as u8));
        }
        let ticket = self.broker.submit(ops);
        self.hold_for(ticket);
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        for delivery in retained {
            self.broker.enqueue(&self.session, delivery);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut ops = Vec::new();
        let sid = self.stored_sid();
        for filter in &u.filters {
            let existed = self.session.lock().remove_subscription(filter);
            if existed {
                self.broker.unsubscribe(&self.session, filter);
                if let Some(sid) = sid {
                    ops.push(Op::DeleteSubscription {
                        sid,
                        filter: filter.clone(),
                    });
                }
            }
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if !self.v5() {
            codes.clear();
        }
        let ticket = self.broker.submit(ops);
        self.hold_for(ticket);
        self.send(&Packet::UnsubAck(SubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.expiry_was_zero && expiry != 0 {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "DISCONNECT sets a session expiry after CONNECT set 0",
                ));
            }
            let mut st = self.session.lock();
            // Not once another connection has taken the session: it is theirs now.
            if st.generation == self.generation {
                st.expiry_interval = expiry;
            }
        }
        if d.code != ReasonCode::DISCONNECT_WITH_WILL {
            self.will = None;
        }
        Err(Close {
            code: d.code,
            reason: "client sent DISCONNECT".into(),
            by_client: true,
        })
    }

    /// Moves queued messages into `out` as far as the client's receive maximum and the
    /// write high-water mark allow. Fails when the session must close (taken over,
    /// queue overflow, shutdown).
    pub fn pump(&mut self, now: Instant) -> Result<(), Close> {
        if let Some(close) = self.refusal.take() {
            return Err(*close);
        }
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            return Err(Close::new(
                ReasonCode::SESSION_TAKEN_OVER,
                "another connection took the session",
            ));
        }
        if let Some(reason) = st.close_reason {
            return Err(Close::new(reason.code(), reason.why()));
        }
        // PUBLISH packets written, by QoS: added to the shared counters once per pump,
        // not once per message, so fan-out on several cores does not bounce them.
        let mut sent = [0u64; 3];
        if self.resend_inflight {
            self.resend_inflight = false;
            for f in st.inflight.iter() {
                match f.stage {
                    Stage::AwaitingPubComp => {
                        self.send(&Packet::PubRel(Ack::new(f.packet_id, ReasonCode::SUCCESS)))
                    }
                    _ => {
                        if self.write_publish(&f.delivery, f.packet_id, true, now) {
                            sent[f.delivery.qos as usize] += 1;
                        }
                    }
                }
            }
        }
        let acl = self.auth.acl();
        let sid = session.sid.get();
        let mut ops = Vec::new();
        let mut hold_start = None;
        let limits = self.broker.queue_limits();
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos > QoS::AtMostOnce
                && st.inflight.len() >= usize::from(self.peer_receive_maximum)
            {
                break;
            }
            let delivery = st.pop_queued().expect("front exists");
            if let Some(acl) = &acl {
                let topic = delivery.message.topic.as_str();
                if !acl.allows(
                    &self.session.client_id,
                    self.link.username.as_deref(),
                    topic,
                    Access::Read,
                ) {
                    self.note_refusal(topic, Access::Read);
                    ops.extend(done_op(sid, &delivery));
                    continue;
                }
            }
            if st.take_drained(&limits) {
                session.drained.notify(usize::MAX);
            }
            if delivery.message.is_expired(now) {
                count(&self.broker.metrics.dropped_expired);
                ops.extend(done_op(sid, &delivery));
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                if self.write_publish(&delivery, 0, false, now) {
                    sent[0] += 1;
                }
                ops.extend(done_op(sid, &delivery));
                continue;
            }
            let packet_id = st.allocate_packet_id();
            if delivery.qos == QoS::ExactlyOnce {
                self.hold_for_message(&delivery.message);
            }
            let before = self.out.len();
            if self.write_publish(&delivery, packet_id, false, now) {
                sent[delivery.qos as usize] += 1;
                let stage = if delivery.qos == QoS::AtLeastOnce {
                    Stage::AwaitingPubAck
                } else {
                    Stage::AwaitingPubRec
                };
                if let Some(seq) = delivery.seq {
                    ops.push(Op::SentDelivery {
                        sid,
                        seq: seq.get(),
                        packet_id,
                        stage,
                    });
                    if stage == Stage::AwaitingPubRec {
                        // A QoS 2 PUBLISH goes out only with its packet id durable, so
                        // that after a crash it is resent under the same id and the
                        // client can recognise it. QoS 1 may be sent again under a new
                        // one; waiting for it would cost a sync per message.
                        hold_start.get_or_insert(before);
                    }
                }
                st.inflight.push_back(Inflight {
                    packet_id,
                    stage,
                    delivery,
                });
            } else {
                ops.extend(done_op(sid, &delivery));
            }
        }
        drop(st);
        self.count_sent(sent);
        let ticket = self.broker.submit(ops);
        if let Some(from) = hold_start {
            self.hold_from(from, ticket);
        }
        Ok(())
    }

    /// Adds one pump's PUBLISH packets, by QoS, to the broker's and this connection's
    /// counters.
    fn count_sent(&self, sent_by_qos: [u64; 3]) {
        let total: u64 = sent_by_qos.iter().sum();
        if total == 0 {
            return;
        }
        let metrics = &self.broker.metrics;
        metrics.messages_sent.fetch_add(total, Ordering::Relaxed);
        for (counter, n) in metrics.sent_by_qos.iter().zip(sent_by_qos) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.link.sent.fetch_add(total, Ordering::Relaxed);
    }

    /// Encodes one delivery, choosing a topic alias where the client allows them.
    /// Returns false when it is larger than the client accepts: then it is discarded
    /// as if delivered ([MQTT-3.1.2-25]).
    fn write_publish(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Instant) -> bool {
        let v5 = self.v5();
        let m = &d.message;
        let topic = m.topic.as_str();
        let mut publish = OutgoingPublish {
            topic,
            qos: d.qos,
            retain: d.retain,
            dup,
            packet_id,
            message_expiry: if v5 { m.remaining_expiry(now) } else { None },
            topic_alias: None,
            subscription_ids: if v5 { &d.subscription_ids } else { &[] },
            forwarded_properties: if v5 { &m.forwarded_properties } else { &[] },
            payload: &m.payload,
        };
        let mut new_alias = None;
        if v5 && self.peer_topic_alias_maximum > 0 {
            let outbound = &self.aliases.get_or_insert_with(Box::default).outbound;
            if let Some(&alias) = outbound.get(topic) {
                publish.topic = "";
                publish.topic_alias = Some(alias);
            } else if outbound.len() < usize::from(self.peer_topic_alias_maximum) {
                let alias = outbound.len() as u16 + 1;
                publish.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        if publish.encoded_len(self.version) > self.peer_max_packet_size as usize {
            count(&self.broker.metrics.dropped_too_large);
            log::debug!(
                "client_id={} not sent {topic:?}: larger than its maximum packet size",
                self.session.client_id
            );
            return false;
        }
        if let Some(alias) = new_alias {
            let aliases = self.aliases.get_or_insert_with(Box::default);
            aliases.outbound.insert(topic.into(), alias);
        }
        publish.encode(self.version, &mut self.out);
        true
    }

    /// The DISCONNECT to send a v5 client before closing, where there is one to send.
    pub fn write_disconnect(&mut self, close: &Close) {
        if self.v5() && !close.by_client && close.code.is_error() {
            let properties = Properties::from(PropertyValues {
                reason_string: Some(close.reason.to_string()),
                ..PropertyValues::default()
            });
            let disconnect = Packet::Disconnect(Disconnect {
                code: close.code,
                properties,
            });
            // Not sent at all when it does not fit: the connection closes either way.
            let limit = self.peer_max_packet_size as usize;
            encode_within(&disconnect, self.version, limit, &mut self.out);
        }
    }

    /// The connection is gone: publish or schedule the will, and end the session now
    /// if it does not outlive its connection.
    pub fn connection_lost(mut self, now: Instant) {
        // What arrived before the connection dropped is still delivered.
        self.flush_publishes(now);
        let broker = self.broker.clone();
        broker
            .metrics
            .clients_connected
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let taken_over;
        {
            let mut st = self.session.lock();
            taken_over = st.generation != self.generation;
            if !taken_over {
                self.session.set_online(&mut st, false);
                st.disconnected_at = Some(now);
                st.link = None;
            }
        }
        let will_delay = self
            .will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .filter(|_| self.v5())
            .unwrap_or(0);
        let session_ended = !broker.is_current(&self.session);
        let will = self.will.take().filter(|w| self.may_publish(&w.topic, now));
        if let Some(will) = will {
            let message = Message::from_will(*will, Some(self.session.client_id.clone()), now);
            if will_delay == 0 || session_ended {
                broker.publish(message, now);
            } else if !taken_over {
                let expiry = self.session.lock().expiry_interval;
                let delay = Duration::from_secs(u64::from(will_delay.min(expiry)));
                self.session.lock().set_pending_will(message, now + delay);
            }
        }
        if !taken_over {
            self.store_disconnected(now);
            let st = self.session.lock();
            if st.expiry_interval == 0 {
                drop(st);
                broker.remove_session(&self.session, now);
            } else {
                broker.due_by(st.next_deadline());
            }
        }
    }

    /// Stores when a persistent session lost its connection (its expiry runs from
    /// then), its expiry as DISCONNECT may have changed it, and its pending will.
    fn store_disconnected(&self, now: Instant) {
        let Some(store) = self.broker.store() else {
            return;
        };
        let st = self.session.lock();
        if !st.stored || st.expiry_interval == 0 {
            return;
        }
        let sid = self.session.sid.get();
        let clock = &store.clock;
        let mut ops = vec![Op::PutSession {
            sid,
            client_id: self.session.client_id.clone(),
            protocol: st.protocol.level(),
            expiry: st.expiry_interval,
            disconnected_at: Some(clock.secs(now)),
        }];
        if let Some(will) = st.pending_will() {
            let encoded = StoredMessage::from_message(&will.0, clock).encode();
            ops.push(Op::SetWill {
                sid,
                will: Some((encoded, clock.secs(will.1))),
            });
        }
        self.broker.submit(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Settings;
    use bytes::Bytes;

    fn connect(
        broker: &Arc<Broker>,
        id: &str,
        version: ProtocolVersion,
        clean: bool,
        props: Properties,
    ) -> Box<Client> {
        let c = Connect {
            protocol: version,
            bridge: false,
            clean_start: clean,
            keep_alive: 10,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: props,
        };
        let (listener, auth) = (Arc::new("test".to_string()), Arc::new(AuthPolicy::open()));
        let arrival = Arrival::new(([127, 0, 0, 1], 50000).into(), &listener, &auth);
        match Client::connect(broker, arrival, c, Instant::now()) {
            ConnectOutcome::Accepted(c) => c,
            ConnectOutcome::Refused(r) => panic!("refused: {}", r.reason),
        }
    }

    /// A clean-start client without CONNECT properties.
    fn plain(broker: &Arc<Broker>, id: &str, version: ProtocolVersion) -> Box<Client> {
        connect(broker, id, version, true, Properties::default())
    }

    fn drain(c: &mut Client) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(p) = decode(&mut c.out, c.version, usize::MAX).unwrap() {
            out.push(p);
        }
        out
    }

    fn publish(topic: &str, qos: QoS, packet_id: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        })
    }

    fn subscribe(filter: &str, qos: QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        })
    }

    #[test]
    fn the_broker_wakes_a_client_silent_for_one_and_a_half_keep_alives() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let at = |secs| Instant::now() + Duration::from_secs(secs);
        // Both with a keep-alive of 10 s.
        let quiet = plain(&broker, "quiet", ProtocolVersion::V311);
        let mut chatty = plain(&broker, "chatty", ProtocolVersion::V5);
        chatty.handle(Packet::PingReq, at(10)).unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        broker.tick(at(14));
        assert!(
            quiet.link().poll_woken(&mut cx).is_pending(),
            "14 s is under 1.5 keep-alives"
        );
        broker.tick(at(16));
        assert!(quiet.link().poll_woken(&mut cx).is_ready());
        assert!(quiet.is_silent(at(16)));
        assert!(
            chatty.link().poll_woken(&mut cx).is_pending(),
            "heard from 6 s ago"
        );
        assert!(!chatty.is_silent(at(16)));
        assert!(chatty.is_silent(at(26)));
        // A connection that has ended is forgotten by the next sweep.
        quiet.connection_lost(at(16));
        broker.tick(at(17));
        assert_eq!(broker.keep_alive.lock().unwrap().len(), 1);
    }

    /// A burst grows a subscriber's queue; once the subscriber has read it, the
    /// broker's tick gives the buffer back and stops watching the session.
    #[test]
    fn a_drained_burst_gives_its_queue_buffer_back_on_the_tick() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut slow = plain(&broker, "slow", ProtocolVersion::V5);
        slow.handle(subscribe("b/#", QoS::AtMostOnce), now).unwrap();
        let mut publisher = plain(&broker, "pub", ProtocolVersion::V5);
        let burst = 4 * crate::broker::session::QUEUE_KEPT;
        for _ in 0..burst {
            publisher
                .handle(publish("b/1", QoS::AtMostOnce, 0), now)
                .unwrap();
        }
        publisher.flush_publishes(now);
        let session = slow.session.clone();
        let capacity = || session.lock().queue.capacity();
        assert!(capacity() >= burst);
        broker.tick(now);
        assert!(capacity() >= burst, "not drained yet: kept");
        assert_eq!(broker.grown_queues.lock().unwrap().len(), 1);
        drain(&mut slow);
        slow.pump(now).unwrap();
        assert!(session.lock().queue.is_empty());
        assert!(capacity() >= burst, "drained: kept until the tick");
        broker.tick(now);
        assert_eq!(capacity(), 0);
        assert!(broker.grown_queues.lock().unwrap().is_empty());
    }

    #[test]
    fn qos1_delivery_waits_for_the_receive_maximum() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let props = Properties::from(PropertyValues {
            receive_maximum: Some(2),
            ..PropertyValues::default()
        });
        let mut sub = connect(&broker, "sub", ProtocolVersion::V5, true, props);
        let mut publisher = plain(&broker, "pub", ProtocolVersion::V311);
        sub.handle(subscribe("t/#", QoS::AtLeastOnce), now).unwrap();
        drain(&mut sub);
        for id in 1..=3 {
            publisher
                .handle(publish("t/a", QoS::AtLeastOnce, id), now)
                .unwrap();
        }
        publisher.flush_publishes(now);
        sub.pump(now).unwrap();
        let sent = drain(&mut sub);
        assert_eq!(sent.len(), 2, "receive maximum 2 holds the third back");
        let Packet::Publish(first) = &sent[0] else {
            panic!()
        };
        sub.handle(
            Packet::PubAck(Ack::new(first.packet_id, ReasonCode::SUCCESS)),
            now,
        )
        .unwrap();
        sub.pump(now).unwrap();
        assert_eq!(drain(&mut sub).len(), 1);
    }

    #[test]
    fn qos2_inbound_is_delivered_once_and_released() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut sub = plain(&broker, "sub", ProtocolVersion::V311);
        sub.handle(subscribe("t", QoS::ExactlyOnce), now).unwrap();
        drain(&mut sub);
        let mut publisher = plain(&broker, "pub", ProtocolVersion::V311);
        publisher
            .handle(publish("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        publisher
            .handle(publish("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        assert!(matches!(
            drain(&mut publisher)[..],
            [Packet::ConnAck(_), Packet::PubRec(_), Packet::PubRec(_)]
        ));
        sub.pump(now).unwrap();
        assert_eq!(
            drain(&mut sub).len(),
            1,
            "the duplicate is not routed again"
        );
        publisher
            .handle(Packet::PubRel(Ack::new(5, ReasonCode::SUCCESS)), now)
            .unwrap();
        assert!(
            matches!(drain(&mut publisher)[..], [Packet::PubComp(ref a)] if a.code == ReasonCode::SUCCESS)
        );
    }

    #[test]
    fn session_takeover_closes_the_old_connection_with_0x8e() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = connect(
            &broker,
            "same",
            ProtocolVersion::V5,
            false,
            Properties::default(),
        );
        assert!(first.link().poll_woken(&mut cx).is_pending());
        let mut second = connect(
            &broker,
            "same",
            ProtocolVersion::V5,
            false,
            Properties::default(),
        );
        // Each connection has its own wake-up: the new one cannot swallow the old one's.
        assert!(second.link().poll_woken(&mut cx).is_pending());
        assert!(first.link().poll_woken(&mut cx).is_ready());
        let close = first.pump(now).unwrap_err();
        assert_eq!(close.code, ReasonCode::SESSION_TAKEN_OVER);
        second.pump(now).unwrap();
    }

    #[test]
    fn outbound_topic_aliases_replace_repeated_topics() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let props = Properties::from(PropertyValues {
            topic_alias_maximum: Some(1),
            ..PropertyValues::default()
        });
        let mut sub = connect(&broker, "sub", ProtocolVersion::V5, true, props);
        sub.handle(subscribe("#", QoS::AtMostOnce), now).unwrap();
        drain(&mut sub);
        let mut publisher = plain(&broker, "pub", ProtocolVersion::V5);
        for topic in ["a", "a", "b"] {
            publisher
                .handle(publish(topic, QoS::AtMostOnce, 0), now)
                .unwrap();
        }
        publisher.flush_publishes(now);
        sub.pump(now).unwrap();
        let got: Vec<(String, Option<u16>)> = drain(&mut sub)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.topic.to_string(), p.properties.topic_alias),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), Some(1)),
                ("".into(), Some(1)),
                ("b".into(), None)
            ]
        );
    }

    #[test]
    fn tick_walks_the_sessions_only_once_something_is_due() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let next_due = |b: &Broker| *b.next_due.lock().unwrap();
        let now = Instant::now();
        let expiring = Properties::from(PropertyValues {
            session_expiry_interval: Some(10),
            ..PropertyValues::default()
        });
        connect(&broker, "leaves", ProtocolVersion::V5, true, expiring).connection_lost(now);
        // A clean session goes at once and leaves nothing due.
        plain(&broker, "clean", ProtocolVersion::V311).connection_lost(now);
        assert_eq!(next_due(&broker), Some(now + Duration::from_secs(10)));
        broker.tick(now + Duration::from_secs(9));
        assert!(broker.sessions().get("leaves").is_some());
        assert_eq!(next_due(&broker), Some(now + Duration::from_secs(10)));
        broker.tick(now + Duration::from_secs(10));
        assert!(broker.sessions().get("leaves").is_none(), "expired");
        assert_eq!(next_due(&broker), None, "nothing left to wait for");
    }

    fn publish_with(topic: &str, qos: QoS, packet_id: u16, props: PropertyValues) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::from(props),
            payload: Bytes::from_static(b"\xff"),
        })
    }

    fn persistent(broker: &Arc<Broker>, id: &str) -> Box<Client> {
        let expiry = Properties::from(PropertyValues {
            session_expiry_interval: Some(60),
            ..PropertyValues::default()
        });
        connect(broker, id, ProtocolVersion::V5, false, expiry)
    }

    fn session_present(c: &mut Client) -> bool {
        match drain(c).first() {
            Some(Packet::ConnAck(ack)) => ack.session_present,
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    #[test]
    fn a_persistent_connect_never_resumes_a_clean_session() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut clean = plain(&broker, "tk", ProtocolVersion::V311);
        clean
            .handle(subscribe("tk/t", QoS::AtLeastOnce), now)
            .unwrap();
        let mut resumer = connect(
            &broker,
            "tk",
            ProtocolVersion::V311,
            false,
            Properties::default(),
        );
        assert!(!session_present(&mut resumer), "[MQTT-3.2.2-3]");
        assert_eq!(resumer.session.lock().subscriptions.len(), 0);
        assert_eq!(
            clean.pump(now).unwrap_err().code,
            ReasonCode::SESSION_TAKEN_OVER
        );
        clean.connection_lost(now);
        let mut publisher = plain(&broker, "pub", ProtocolVersion::V311);
        publisher
            .handle(publish("tk/t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        publisher.flush_publishes(now);
        resumer.pump(now).unwrap();
        assert!(
            drain(&mut resumer).is_empty(),
            "the clean session's subscription ended with it"
        );
    }

    /// The race from the conformance tests, made deterministic: the old connection has
    /// handled its DISCONNECT but not yet finished closing when the new CONNECT arrives.
    #[test]
    fn a_session_ending_with_its_connection_has_ended_once_disconnect_is_handled() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let disconnect = |expiry: Option<u32>| {
            Packet::Disconnect(Disconnect {
                code: ReasonCode::SUCCESS,
                properties: Properties::from(PropertyValues {
                    session_expiry_interval: expiry,
                    ..PropertyValues::default()
                }),
            })
        };
        // A clean 3.1.1 session, and a v5 one whose DISCONNECT sets its expiry to 0.
        let mut clean = plain(&broker, "a", ProtocolVersion::V311);
        let mut shortened = persistent(&broker, "b");
        for (old, id, expiry) in [(&mut clean, "a", None), (&mut shortened, "b", Some(0))] {
            old.handle(subscribe("t", QoS::AtLeastOnce), now).unwrap();
            assert!(old.handle(disconnect(expiry), now).unwrap_err().by_client);
            let mut new = persistent(&broker, id);
            assert!(!session_present(&mut new), "{id}");
            assert_eq!(new.session.lock().subscriptions.len(), 0);
        }
        clean.connection_lost(now);
        shortened.connection_lost(now);
        for id in ["a", "b"] {
            let current = broker.sessions().get(id).cloned().unwrap();
            assert_eq!(
                current.lock().expiry_interval,
                60,
                "the new session is untouched"
            );
            assert!(current.lock().connected);
        }
    }

    #[test]
    fn an_acknowledgement_of_the_wrong_kind_closes_and_leaves_the_flight() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let ack = |kind: fn(Ack) -> Packet, id| kind(Ack::new(id, ReasonCode::SUCCESS));
        type Kind = fn(Ack) -> Packet;
        let cases: [(QoS, &[Kind], Kind, Stage); 5] = [
            (
                QoS::AtLeastOnce,
                &[],
                Packet::PubComp,
                Stage::AwaitingPubAck,
            ),
            (QoS::AtLeastOnce, &[], Packet::PubRec, Stage::AwaitingPubAck),
            (QoS::ExactlyOnce, &[], Packet::PubAck, Stage::AwaitingPubRec),
            (
                QoS::ExactlyOnce,
                &[],
                Packet::PubComp,
                Stage::AwaitingPubRec,
            ),
            (
                QoS::ExactlyOnce,
                &[Packet::PubRec],
                Packet::PubAck,
                Stage::AwaitingPubComp,
            ),
        ];
        for (n, (qos, steps, wrong, stage)) in cases.into_iter().enumerate() {
            let mut sub = persistent(&broker, "sub");
            sub.handle(subscribe("t", qos), now).unwrap();
            drain(&mut sub);
            let mut publisher = plain(&broker, "pub", ProtocolVersion::V5);
            publisher.handle(publish("t", qos, 1), now).unwrap();
            publisher.flush_publishes(now);
            sub.pump(now).unwrap();
            let Some(Packet::Publish(p)) = drain(&mut sub).pop() else {
                panic!("case {n}: no delivery")
            };
            for step in steps {
                sub.handle(ack(*step, p.packet_id), now).unwrap();
            }
            let close = sub.handle(ack(wrong, p.packet_id), now).unwrap_err();
            assert_eq!(close.code, ReasonCode::PROTOCOL_ERROR, "case {n}");
            let st = sub.session.lock();
            assert_eq!(st.inflight.len(), 1, "case {n}: kept for the session");
            assert_eq!(st.inflight[0].stage, stage, "case {n}: unchanged");
            drop(st);
            sub.connection_lost(now);
            // Next round starts from a fresh session.
            connect(
                &broker,
                "sub",
                ProtocolVersion::V5,
                true,
                Properties::default(),
            )
            .connection_lost(now);
        }
        // An id that is not in flight stays harmless.
        let mut c = plain(&broker, "c", ProtocolVersion::V5);
        drain(&mut c);
        c.handle(ack(Packet::PubAck, 9), now).unwrap();
        c.handle(ack(Packet::PubComp, 9), now).unwrap();
        c.handle(ack(Packet::PubRec, 9), now).unwrap();
        assert!(
            matches!(drain(&mut c)[..], [Packet::PubRel(ref a)] if a.code == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
        );
    }

    #[test]
    fn clients_cannot_publish_into_sys_or_share() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut watcher = plain(&broker, "w", ProtocolVersion::V5);
        watcher
            .handle(subscribe("$SYS/#", QoS::AtLeastOnce), now)
            .unwrap();
        drain(&mut watcher);
        let mut v5 = plain(&broker, "v5", ProtocolVersion::V5);
        let mut v3 = plain(&broker, "v3", ProtocolVersion::V311);
        drain(&mut v5);
        drain(&mut v3);
        for topic in ["$SYS/broker/version", "$SYS", "$share/g/t"] {
            v5.handle(publish(topic, QoS::AtLeastOnce, 1), now).unwrap();
            assert!(
                matches!(drain(&mut v5)[..], [Packet::PubAck(ref a)] if a.code == ReasonCode::NOT_AUTHORIZED),
                "{topic}"
            );
            v3.handle(publish(topic, QoS::AtLeastOnce, 1), now).unwrap();
            assert!(
                matches!(drain(&mut v3)[..], [Packet::PubAck(ref a)] if a.code == ReasonCode::SUCCESS),
                "{topic}: 3.x is acknowledged and the message discarded"
            );
        }
        v5.handle(
            publish("$SYS/broker/connection/edge/state", QoS::AtLeastOnce, 2),
            now,
        )
        .unwrap();
        v5.flush_publishes(now);
        watcher.pump(now).unwrap();
        let delivered: Vec<String> = drain(&mut watcher)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.topic.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delivered, ["$SYS/broker/connection/edge/state"]);
        assert!(broker.retained_matching("$SYS/#", now).is_empty());
    }

    #[test]
    fn no_packet_is_larger_than_the_clients_maximum() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let limit = |n| {
            Properties::from(PropertyValues {
                maximum_packet_size: Some(n),
                ..PropertyValues::default()
            })
        };
        let c = Connect {
            protocol: ProtocolVersion::V5,
            bridge: false,
            clean_start: true,
            keep_alive: 10,
            client_id: "tiny".into(),
            will: None,
            username: None,
            password: None,
            properties: limit(2),
        };
        let (listener, auth) = (Arc::new("t".to_string()), Arc::new(AuthPolicy::open()));
        let arrival = Arrival::new(([127, 0, 0, 1], 1).into(), &listener, &auth);
        match Client::connect(&broker, arrival, c, now) {
            ConnectOutcome::Refused(r) => {
                assert!(r.connack.is_empty(), "closed without a CONNACK");
                assert_eq!(r.code, ReasonCode::PACKET_TOO_LARGE);
            }
            ConnectOutcome::Accepted(_) => panic!("a 16-byte CONNACK does not fit in 2"),
        }
        assert!(
            broker.sessions().get("tiny").is_none(),
            "no session was opened"
        );
        let mut narrow = connect(&broker, "narrow", ProtocolVersion::V5, true, limit(16));
        assert!(narrow.out.len() <= 16);
        drain(&mut narrow);
        let filters = (0..20)
            .map(|i| (format!("f/{i}"), SubscriptionOptions::default()))
            .collect();
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters,
        });
        let close = narrow.handle(subscribe, now).unwrap_err();
        assert_eq!(close.code, ReasonCode::PACKET_TOO_LARGE);
        assert!(narrow.out.is_empty(), "the SUBACK was not sent");
        narrow.write_disconnect(&close);
        assert!(
            matches!(drain(&mut narrow)[..], [Packet::Disconnect(ref d)] if d.code == ReasonCode::PACKET_TOO_LARGE && d.properties.reason_string.is_none()),
            "DISCONNECT 0x95 without its reason string, to fit"
        );
    }

    #[test]
    fn a_payload_marked_utf8_that_is_not_is_refused_with_0x99() {
        let broker = Broker::new(Settings::default(), Instant::now());
        let now = Instant::now();
        let mut sub = plain(&broker, "sub", ProtocolVersion::V5);
        sub.handle(subscribe("t", QoS::ExactlyOnce), now).unwrap();
        drain(&mut sub);
        let mut c = plain(&broker, "c", ProtocolVersion::V5);
        drain(&mut c);
        let marked = || PropertyValues {
            payload_format_indicator: Some(1),
            ..PropertyValues::default()
        };
        for (qos, id) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 1),
            (QoS::ExactlyOnce, 2),
        ] {
            c.handle(publish_with("t", qos, id, marked()), now).unwrap();
        }
        let codes: Vec<ReasonCode> = drain(&mut c)
            .into_iter()
            .map(|p| match p {
                Packet::PubAck(a) | Packet::PubRec(a) => a.code,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(codes, [ReasonCode::PAYLOAD_FORMAT_INVALID; 2]);
        assert!(
            c.session.lock().inbound_qos2.is_empty(),
            "the QoS 2 flow ended"
        );
        sub.pump(now).unwrap();
        assert!(drain(&mut sub).is_empty());
        assert_eq!(
            broker
                .metrics
                .dropped_payload_format
                .load(Ordering::Relaxed),
            3
        );
    }
}
