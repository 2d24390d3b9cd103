//! A valid CONNECT, then arbitrary packets into the client state machine, with a
//! second client subscribed to everything: no input may panic the broker core.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern::auth::AuthPolicy;
use tern::broker::{Arrival, Broker, Client, ConnectOutcome, Settings};
use tern::protocol::{
    Connect, Packet, Properties, PropertyValues, ProtocolVersion, QoS, Subscribe, SubscriptionOptions, decode,
};

fn connect(broker: &Arc<Broker>, auth: &Arc<AuthPolicy>, id: &str, version: ProtocolVersion) -> Option<Box<Client>> {
    let connect = Connect {
        protocol: version,
        bridge: false,
        clean_start: false,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::from(PropertyValues { session_expiry_interval: Some(60), topic_alias_maximum: Some(4), ..Default::default() }),
    };
    let peer = ([127, 0, 0, 1], 1883).into();
    let listener = Arc::new("fuzz".to_string());
    match Client::connect(broker, Arrival::new(peer, &listener, auth), connect, Instant::now()) {
        ConnectOutcome::Accepted(client) => Some(client),
        ConnectOutcome::Refused(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let version = if selector & 1 == 1 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
    let settings = Settings { max_queued_messages: 16, receive_maximum: 4, ..Settings::default() };
    let broker = Broker::new(settings, Instant::now());
    let auth = Arc::new(AuthPolicy::open());
    let now = Instant::now();
    let Some(mut watcher) = connect(&broker, &auth, "watcher", ProtocolVersion::V5) else { return };
    let all = SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() };
    let subscribe = Subscribe { packet_id: 1, properties: Properties::default(), filters: vec![("#".into(), all)] };
    watcher.handle(Packet::Subscribe(subscribe), now).expect("subscribe");
    let Some(mut client) = connect(&broker, &auth, "fuzzed", version) else { return };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode(&mut buf, version, 1 << 16) {
        if client.handle(packet, now).is_err() {
            break;
        }
        client.flush_publishes(now);
        if client.pump(now).is_err() {
            break;
        }
        client.out.clear();
        let _ = watcher.pump(now);
        watcher.out.clear();
    }
    client.connection_lost(now);
    broker.tick(now + Duration::from_secs(120));
    let _ = watcher.pump(now);
});
