//! CONNECT: every reason to refuse one (the transport's limits, the listener's
//! certificate rule, authentication, the client identifier, a CONNACK too large for the
//! client), and for an accepted one the session it opens and the CONNACK it is told.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;

use super::Client;
use crate::auth::AuthPolicy;
use crate::broker::link::{Link, LinkInfo, ListenerName, WillView};
use crate::broker::session::RESERVED_CLIENT_ID_PREFIXES;
use crate::broker::{Broker, count};
use crate::message::Message;
use crate::protocol::*;

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
    /// Refusals of this kind come in floods (the transport's limits, a listener's
    /// certificate rule, a network client claiming an outbox): log them throttled.
    pub flood: bool,
    /// Answer only after this long: a wrong password waits, which slows guessing
    /// down at the cost of that one connection.
    pub delay: Option<Duration>,
}

/// Where a CONNECT arrived, and what the transport already knows of its client.
pub struct Arrival<'a> {
    /// The client's real address (from a PROXY header where there was one).
    pub peer: SocketAddr,
    pub listener: &'a ListenerName,
    pub auth: &'a Arc<AuthPolicy>,
    /// The transport turned the connection away (connection counts and rates): the
    /// reason code and why, answered in this CONNACK.
    pub turned_away: Option<(ReasonCode, String)>,
    /// The common name of a client certificate the transport verified.
    pub identity: Option<&'a str>,
    /// The listener takes the user name from a verified client certificate
    /// (`use_identity_as_username`): the CONNECT's user name is replaced and no
    /// password is checked; a client without one is refused.
    pub identity_as_username: bool,
    /// Who is on the other end: only the broker's own relays may use its reserved
    /// client ids.
    pub role: Role,
    /// The wall clock, for what the management API shows.
    pub wall: SystemTime,
    /// Randomness for an assigned client identifier.
    pub entropy: u64,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A client from the network.
    Network,
    /// This broker's own bridge relay, serving a bridge's outbox: the broker itself.
    BridgeRelay,
    /// A cluster peer's link: what it forwards reaches local sessions only.
    PeerLink,
}

/// Whether `client_id` names one of the sessions the broker keeps for itself.
pub fn is_reserved_client_id(client_id: &str) -> bool {
    RESERVED_CLIENT_ID_PREFIXES
        .iter()
        .any(|prefix| client_id.starts_with(prefix))
}

impl<'a> Arrival<'a> {
    /// A plain arrival: nothing refused or verified by the transport, the wall clock
    /// at its epoch and no randomness (set those where they matter).
    pub fn new(peer: SocketAddr, listener: &'a ListenerName, auth: &'a Arc<AuthPolicy>) -> Self {
        Arrival {
            peer,
            listener,
            auth,
            turned_away: None,
            identity: None,
            identity_as_username: false,
            role: Role::Network,
            wall: SystemTime::UNIX_EPOCH,
            entropy: 0,
        }
    }
}

/// How long a client that gave a wrong password waits for its CONNACK.
const WRONG_PASSWORD_DELAY: Duration = Duration::from_millis(500);

/// A refusal's CONNACK, with the reason as a Reason String where the client's Maximum
/// Packet Size leaves room for it (none at all where it leaves room for nothing).
fn refuse(
    version: ProtocolVersion,
    limit: usize,
    code: ReasonCode,
    reason: impl Into<String>,
) -> Refusal {
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
    Refusal {
        code,
        reason,
        connack,
        flood: false,
        delay: None,
    }
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

/// A CONNECT that passed every check, before its session is opened: a cluster takes
/// the session from whichever node holds it in between (see `Replicator::claim`).
pub struct Admitted {
    broker: Arc<Broker>,
    connect: Connect,
    client_id: String,
    expiry: u32,
    keep_alive: u16,
    connack: Packet,
    peer: SocketAddr,
    listener: ListenerName,
    wall: SystemTime,
    role: Role,
    auth: Arc<AuthPolicy>,
    fresh: bool,
}

impl Admitted {
    /// The client identifier the session is opened under (an assigned one included).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn clean_start(&self) -> bool {
        self.connect.clean_start
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Opens a new session whatever the CONNECT asked (session present = 0), keeping
    /// its expiry: a cluster that could not reach the session's owner was told to.
    pub fn start_fresh(&mut self) {
        self.fresh = true;
    }

    /// Refuses the CONNECT after all (v5 0x88 Server unavailable, 3.x return code 3):
    /// a cluster could not reach the node that holds its session and was told to
    /// refuse (`on_owner_unreachable = "refuse"`).
    pub fn refuse_unavailable(self, reason: impl Into<String>) -> Refusal {
        let limit = self
            .connect
            .properties
            .maximum_packet_size
            .unwrap_or(u32::MAX);
        refuse(
            self.connect.protocol,
            limit as usize,
            ReasonCode::SERVER_UNAVAILABLE,
            reason,
        )
    }

    /// Opens (or resumes, or takes over) the session and writes the CONNACK.
    pub fn open(self, now: Instant) -> Box<Client> {
        let Admitted {
            broker,
            mut connect,
            client_id,
            expiry,
            keep_alive,
            mut connack,
            peer,
            listener,
            wall,
            role,
            auth,
            fresh,
        } = self;
        let broker = &broker;
        let settings = &broker.settings;
        let v = connect.protocol;
        let info = LinkInfo {
            username: connect.username.take(),
            peer,
            listener,
            protocol: v,
            keep_alive,
            clean_start: connect.clean_start,
            will: connect.will.as_ref().map(|w| WillView {
                topic: w.topic.clone(),
                qos: w.qos,
                retain: w.retain,
                delay: w.properties.will_delay_interval.unwrap_or(0),
            }),
        };
        let link = Arc::new(Link::new(info, broker.clock_ms(now), wall));
        let clean_start = connect.clean_start || fresh;
        let opened = broker.open_session(&client_id, clean_start, v, expiry, &link, now);
        if let (Some(will), Some(_)) = (&connect.will, broker.replicator()) {
            let origin = Some(opened.session.client_id.clone());
            let message = Message::from_will(will.clone(), origin, now);
            opened.session.lock().set_declared_will(Some(message));
            broker.session_changed(&client_id);
        }
        if role == Role::Network {
            count(&broker.metrics.connections);
        }
        broker
            .metrics
            .connected(role)
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cp = &connect.properties;
        let mut client = Client {
            broker: broker.clone(),
            session: opened.session,
            link,
            auth,
            acl_refusals: 0,
            generation: opened.generation,
            version: v,
            bridge: connect.bridge,
            role,
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
            closing: None,
            out: BytesMut::new(),
            hold: None,
        };
        // The CONNACK waits for the session to be stored.
        client.hold_for(opened.ticket);
        if let Packet::ConnAck(c) = &mut connack {
            c.session_present = opened.present;
        }
        client.send(&connack);
        Box::new(client)
    }
}

impl Client {
    /// Handles CONNECT: every reason to refuse it (the transport's, the listener's,
    /// authentication, the client identifier), the session (new, resumed or taken
    /// over) and the CONNACK with what the broker grants.
    pub fn connect(
        broker: &Arc<Broker>,
        arrival: Arrival<'_>,
        connect: Connect,
        now: Instant,
    ) -> ConnectOutcome {
        match Client::admit(broker, arrival, connect) {
            Ok(admitted) => ConnectOutcome::Accepted(admitted.open(now)),
            Err(refusal) => ConnectOutcome::Refused(refusal),
        }
    }

    /// Every reason to refuse a CONNECT, and what an accepted one is granted.
    pub fn admit(
        broker: &Arc<Broker>,
        arrival: Arrival<'_>,
        mut connect: Connect,
    ) -> Result<Admitted, Refusal> {
        let settings = &broker.settings;
        let v = connect.protocol;
        let v5 = v == ProtocolVersion::V5;
        let peer_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let limit = peer_max_packet_size as usize;
        let Arrival {
            peer,
            listener,
            auth,
            identity,
            ..
        } = arrival;
        let identity = identity.filter(|_| arrival.identity_as_username);
        let refusal = match arrival.turned_away {
            Some(limit) => Some(limit),
            None if arrival.identity_as_username && identity.is_none() => Some((
                ReasonCode::NOT_AUTHORIZED,
                "no verified client certificate, and this listener takes the user name from \
                 one (use_identity_as_username)"
                    .to_owned(),
            )),
            // A network client must not take over (and so empty) a bridge's outbox.
            None if arrival.role == Role::Network && is_reserved_client_id(&connect.client_id) => {
                Some((
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    format!(
                        "client identifiers starting with {} belong to the broker's bridges and cluster",
                        RESERVED_CLIENT_ID_PREFIXES.join(" or ")
                    ),
                ))
            }
            None => None,
        };
        if let Some((code, why)) = refusal {
            let mut refusal = refuse(v, limit, code, why);
            refusal.flood = true;
            return Err(refusal);
        }
        if broker.is_shutting_down() {
            return Err(refuse(
                v,
                limit,
                ReasonCode::SERVER_UNAVAILABLE,
                "server is shutting down",
            ));
        }
        if let Some(method) = &connect.properties.authentication_method {
            return Err(refuse(
                v,
                limit,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                format!("authentication method {method:?} is not supported"),
            ));
        }
        match identity {
            Some(user) => {
                connect.username = Some(user.to_owned());
                connect.password = None;
            }
            None => {
                if let Err((code, reason)) = authenticate(auth, &connect) {
                    let mut refusal = refuse(v, limit, code, reason);
                    refusal.delay = (code == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                        .then_some(WRONG_PASSWORD_DELAY);
                    return Err(refusal);
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
                return Err(refuse(
                    v,
                    limit,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client identifier needs clean session",
                ));
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
            return Err(refuse(
                v,
                limit,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                format!(
                    "client identifier longer than max_client_id_len {}",
                    settings.max_client_id_len
                ),
            ));
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
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::SUCCESS,
            properties,
        });
        // Whether the session is present does not change the CONNACK's size: check that
        // it fits before the session is touched ([MQTT-3.1.2-24]: close without it).
        // It has nothing the client could do without, so it is measured as it is.
        let mut encoded = BytesMut::new();
        encode(&connack, v, &mut encoded);
        if encoded.len() > limit {
            return Err(Refusal {
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
        Ok(Admitted {
            broker: broker.clone(),
            connect,
            client_id,
            expiry,
            keep_alive,
            connack,
            peer,
            listener: listener.clone(),
            wall: arrival.wall,
            role: arrival.role,
            auth: auth.clone(),
            fresh: false,
        })
    }
}
