//! The protocol's rules tested on the broker core alone, as quinn-proto's tests drive
//! two endpoints in memory: a [`Harness`] connects clients to one broker with a clock
//! of its own, hands them packets, moves time on and reads back what each was sent.
//! Each rule here is also tested once through the binary with real clients
//! (`tests/python/`); these run in microseconds and pin the state machine's side.

mod aliases;
mod receive_maximum;
mod retain_handling;
mod session_expiry;
mod shared;
mod will_delay;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Arrival, Broker, Client, Close, ConnectOutcome, Settings};
use crate::auth::AuthPolicy;
use crate::protocol::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Will, decode, encode,
};

/// One broker, the clients connected to it by name, and a clock moved by hand.
pub struct Harness {
    pub broker: Arc<Broker>,
    pub now: Instant,
    clients: HashMap<String, Box<Client>>,
    /// Why each connection the broker closed was closed.
    pub closed: HashMap<String, Close>,
}

/// A CONNECT as a test writes it: v5, clean start, no properties, no will.
pub struct Hello {
    pub version: ProtocolVersion,
    pub clean_start: bool,
    pub properties: PropertyValues,
    pub will: Option<Will>,
}

impl Default for Hello {
    fn default() -> Hello {
        Hello {
            version: ProtocolVersion::V5,
            clean_start: true,
            properties: PropertyValues::default(),
            will: None,
        }
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(Settings::default())
    }

    pub fn with(settings: Settings) -> Harness {
        let now = Instant::now();
        Harness {
            broker: Broker::new(settings, now),
            now,
            clients: HashMap::new(),
            closed: HashMap::new(),
        }
    }

    /// Connects `id` and returns its CONNACK (the connection stays open when accepted).
    pub fn connect(&mut self, id: &str, hello: Hello) -> ConnAck {
        let connect = Connect {
            protocol: hello.version,
            bridge: false,
            clean_start: hello.clean_start,
            keep_alive: 60,
            client_id: id.into(),
            will: hello.will,
            username: None,
            password: None,
            properties: Properties::from(hello.properties),
        };
        let (listener, auth) = (Arc::new("rules".to_string()), Arc::new(AuthPolicy::open()));
        let arrival = Arrival::new(([127, 0, 0, 1], 40000).into(), &listener, &auth);
        match Client::connect(&self.broker, arrival, connect, self.now) {
            ConnectOutcome::Accepted(mut client) => {
                let connack = match drain(&mut client).into_iter().next() {
                    Some(Packet::ConnAck(connack)) => connack,
                    other => panic!("{id}: CONNACK expected, got {other:?}"),
                };
                self.clients.insert(id.into(), client);
                connack
            }
            ConnectOutcome::Refused(refusal) => {
                let mut connack = refusal.connack;
                match decode(&mut connack, hello.version, usize::MAX) {
                    Ok(Some(Packet::ConnAck(connack))) => connack,
                    other => panic!("{id}: refused without a CONNACK: {other:?}"),
                }
            }
        }
    }

    /// Hands `packet` to `id`'s connection as the wire would (encoded, then decoded
    /// with the codec's rules) and routes what it published; the close reason when
    /// the broker closed the connection for it (which then is gone).
    pub fn send(&mut self, id: &str, packet: Packet) -> Result<(), Close> {
        let now = self.now;
        let client = self.client(id);
        let mut wire = BytesMut::new();
        encode(&packet, client.version, &mut wire);
        let handled = match decode(&mut wire, client.version, client.max_packet_size()) {
            Ok(Some(packet)) => client.handle(packet, now),
            Ok(None) => unreachable!("a whole packet was encoded"),
            Err(e) => Err(Close::new(e.code, e.what)),
        };
        client.flush_publishes(now);
        if let Err(close) = &handled {
            self.close(id, close.clone());
        }
        handled
    }

    /// What `id` has been sent since it was last asked: the connection is pumped as
    /// its task would be (the broker's reasons to close it included).
    pub fn received(&mut self, id: &str) -> Vec<Packet> {
        let now = self.now;
        let client = self.client(id);
        let pumped = client.pump(now);
        let packets = drain(client);
        if let Err(close) = pumped {
            self.close(id, close);
        }
        packets
    }

    /// The PUBLISH packets among what `id` was sent.
    pub fn publishes(&mut self, id: &str) -> Vec<Publish> {
        self.received(id)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The network connection of `id` goes away without DISCONNECT.
    pub fn drop_connection(&mut self, id: &str) {
        let client = self.clients.remove(id).expect("connected");
        client.connection_lost(self.now);
    }

    /// Moves the clock on and runs the broker's housekeeping as its tick would.
    pub fn advance(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.now += Duration::from_secs(1);
            self.broker.tick(self.now);
        }
    }

    fn client(&mut self, id: &str) -> &mut Client {
        self.clients
            .get_mut(id)
            .unwrap_or_else(|| panic!("{id} is not connected"))
    }

    fn close(&mut self, id: &str, close: Close) {
        if let Some(mut client) = self.clients.remove(id) {
            client.write_disconnect(&close);
            client.connection_lost(self.now);
        }
        self.closed.insert(id.into(), close);
    }
}

fn drain(client: &mut Client) -> Vec<Packet> {
    let mut out = Vec::new();
    while let Some(p) = decode(&mut client.out, client.version, usize::MAX).unwrap() {
        out.push(p);
    }
    client.out = BytesMut::new();
    out
}

pub fn publish(topic: &str, payload: &'static str, qos: QoS, packet_id: u16) -> Packet {
    publish_with(topic, payload, qos, packet_id, PropertyValues::default())
}

pub fn publish_with(
    topic: &str,
    payload: &'static str,
    qos: QoS,
    packet_id: u16,
    properties: PropertyValues,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::from(properties),
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

pub fn retained(topic: &str, payload: &'static str) -> Packet {
    let Packet::Publish(mut p) = publish(topic, payload, QoS::AtMostOnce, 0) else {
        unreachable!("publish() makes a PUBLISH")
    };
    p.retain = true;
    Packet::Publish(p)
}

pub fn subscribe(filter: &str, qos: QoS) -> Packet {
    subscribe_with(
        filter,
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    )
}

pub fn subscribe_with(filter: &str, options: SubscriptionOptions) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), options)],
    })
}

pub fn ack(kind: fn(Ack) -> Packet, packet_id: u16) -> Packet {
    kind(Ack::new(packet_id, ReasonCode::SUCCESS))
}

pub fn disconnect(session_expiry: Option<u32>) -> Packet {
    Packet::Disconnect(Disconnect {
        code: ReasonCode::SUCCESS,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: session_expiry,
            ..PropertyValues::default()
        }),
    })
}

/// The payloads of `publishes`, as text.
pub fn payloads(publishes: &[Publish]) -> Vec<String> {
    publishes
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}
