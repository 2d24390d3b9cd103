//! One client's protocol state machine: it takes decoded packets and the current time,
//! and writes the packets to send into `out`. No sockets and no clock, in the way
//! quinn-proto drives QUIC, so every rule here is unit-tested without I/O and the
//! connection task that drives it stays a thin loop.
//!
//! `connect.rs` answers CONNECT; `inbound.rs` takes the client's publishes and
//! `outbound.rs` sends it what its session queued; `subscribe.rs` its subscriptions;
//! `hold.rs` keeps packets back until the store has what they acknowledge;
//! `lifecycle.rs` ends the connection. `tests.rs` drives it all without I/O.

mod connect;
mod hold;
mod inbound;
mod lifecycle;
mod outbound;
mod subscribe;
#[cfg(test)]
mod tests;

pub use connect::{Admitted, Arrival, ConnectOutcome, Refusal, Role, answer_malformed};
pub use hold::Held;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::link::Link;
use super::session::Session;
use super::{Broker, Reached};
use crate::auth::AuthPolicy;
use crate::message::{Message, SmallStr, Stage, Ticket};
use crate::protocol::*;

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

pub struct Client {
    broker: Arc<Broker>,
    session: Arc<Session>,
    /// Shared with the session and the broker: wake-ups, keep-alive, what the
    /// management API shows. Holds the user name.
    link: Arc<Link>,
    auth: Arc<AuthPolicy>,
    /// Refusals by the ACL on this connection; the first is logged, the rest counted.
    acl_refusals: u32,
    generation: u32,
    pub version: ProtocolVersion,
    /// The client set the bridge bit in CONNECT (a Mosquitto-style bridge).
    bridge: bool,
    /// Who is on the other end: a network client, or one of the broker's relays.
    role: Role,
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
    /// Why the connection must close once what it is handling is done: a 3.x publish
    /// nobody may acknowledge, a packet larger than the client's Maximum Packet Size.
    closing: Option<Box<Close>>,
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
    /// QoS 2 messages whose ticket may not be known yet ([`crate::message::Visibility::Unknown`]).
    messages: Vec<Arc<Message>>,
}

impl Client {
    /// Whether `packet` fits the client's Maximum Packet Size as it is, before the
    /// changes it would answer are made (a SUBACK's subscriptions).
    fn fits(&self, packet: &Packet) -> bool {
        if self.peer_max_packet_size == u32::MAX {
            return true;
        }
        let mut scratch = BytesMut::new();
        encode(packet, self.version, &mut scratch);
        scratch.len() <= self.peer_max_packet_size as usize
    }

    /// Closes the connection with 0x95: the answer to what the client sent would not
    /// fit its Maximum Packet Size, so nothing it asked for is done.
    fn too_large_to_answer(&self, kind: &str) -> Close {
        Close::new(
            ReasonCode::PACKET_TOO_LARGE,
            format!(
                "the {kind} it asks for would be larger than the client's Maximum Packet Size of {}",
                self.peer_max_packet_size
            ),
        )
    }

    /// Writes `packet` to `out`, within the client's Maximum Packet Size; one that does
    /// not fit even without its Reason String and User Properties is not sent, and the
    /// connection closes with 0x95 ([`Client::handle`] and [`Client::pump`] return it).
    fn send(&mut self, packet: &Packet) {
        let limit = self.peer_max_packet_size as usize;
        if !encode_within(packet, self.version, limit, &mut self.out) {
            self.closing.get_or_insert_with(|| {
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
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
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
        match self.closing.take() {
            Some(close) => Err(*close),
            None => Ok(()),
        }
    }
}
