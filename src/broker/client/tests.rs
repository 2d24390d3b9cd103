//! The state machine driven without I/O: clients connected to one broker, packets
//! handed in, what each writes read back.

use super::*;
use crate::broker::Settings;
use bytes::Bytes;
use std::sync::atomic::Ordering;

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

/// A PUBLISH whose payload (one byte, 0xFF) is not UTF-8, with `props`.
fn publish_not_utf8(topic: &str, qos: QoS, packet_id: u16, props: PropertyValues) -> Packet {
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
    let retained = |topic: &str, qos, packet_id| {
        let Packet::Publish(mut p) = publish(topic, qos, packet_id) else {
            unreachable!()
        };
        p.retain = true;
        Packet::Publish(p)
    };
    for topic in ["$SYS/broker/version", "$SYS", "$SYSTEM/x", "$share/g/t"] {
        v5.handle(retained(topic, QoS::AtMostOnce, 0), now).unwrap();
        v5.handle(retained(topic, QoS::AtLeastOnce, 1), now)
            .unwrap();
        assert!(
            matches!(drain(&mut v5)[..], [Packet::PubAck(ref a)] if a.code == ReasonCode::NOT_AUTHORIZED),
            "{topic}"
        );
        v3.handle(retained(topic, QoS::AtLeastOnce, 1), now)
            .unwrap();
        assert!(
            matches!(drain(&mut v3)[..], [Packet::PubAck(ref a)] if a.code == ReasonCode::SUCCESS),
            "{topic}: 3.x is acknowledged and the message discarded"
        );
    }
    // Nothing of them was delivered or kept.
    watcher.pump(now).unwrap();
    assert!(drain(&mut watcher).is_empty());
    assert!(broker.retained_matching("$SYS/#", now).is_empty());
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
}

#[test]
fn a_will_into_sys_is_not_published() {
    let broker = Broker::new(Settings::default(), Instant::now());
    let now = Instant::now();
    let mut watcher = plain(&broker, "w", ProtocolVersion::V5);
    watcher
        .handle(subscribe("$SYS/#", QoS::AtLeastOnce), now)
        .unwrap();
    drain(&mut watcher);
    let mut forger = plain(&broker, "forger", ProtocolVersion::V311);
    forger.will = Some(Box::new(Will {
        topic: "$SYS/broker/version".into(),
        payload: Bytes::from_static(b"FORGED"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    }));
    forger.connection_lost(now);
    watcher.pump(now).unwrap();
    assert!(drain(&mut watcher).is_empty());
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
    assert_eq!(
        narrow.session.lock().subscriptions.len(),
        0,
        "nor was anything done that it would have answered"
    );
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
        c.handle(publish_not_utf8("t", qos, id, marked()), now)
            .unwrap();
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
