//! Round trips of every packet type and property, and the spec's malformed cases.

use bytes::{Bytes, BytesMut};

use super::*;

fn round_trip(packet: Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    encode(&packet, version, &mut buf);
    let total = buf.len();
    assert_eq!(frame_len(&buf, usize::MAX).unwrap(), Some(total));
    let decoded = decode(&mut buf, version, usize::MAX).unwrap().unwrap();
    assert_eq!(decoded, packet, "{version:?}");
    assert!(buf.is_empty());
}

fn all_properties() -> PropertyValues {
    PropertyValues {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        ..PropertyValues::default()
    }
}

fn v5_connect() -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        bridge: false,
        clean_start: true,
        keep_alive: 30,
        client_id: "c1".into(),
        will: Some(Will {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::from(PropertyValues {
                will_delay_interval: Some(5),
                ..all_properties()
            }),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(100),
            receive_maximum: Some(10),
            maximum_packet_size: Some(4096),
            topic_alias_maximum: Some(5),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"x")),
            user_properties: vec![("a".into(), "b".into())],
            ..PropertyValues::default()
        }),
    }
}

#[test]
fn connect_round_trips_in_every_version() {
    round_trip(Packet::Connect(Box::new(v5_connect())), ProtocolVersion::V5);
    for (protocol, bridge) in [(ProtocolVersion::V31, false), (ProtocolVersion::V311, true)] {
        let mut c = v5_connect();
        c.protocol = protocol;
        c.bridge = bridge;
        c.properties = Properties::default();
        c.will.as_mut().unwrap().properties = Properties::default();
        round_trip(Packet::Connect(Box::new(c)), protocol);
    }
}

#[test]
fn connack_round_trips() {
    let props = Properties::from(PropertyValues {
        session_expiry_interval: Some(1),
        assigned_client_identifier: Some("auto-1".into()),
        server_keep_alive: Some(20),
        response_information: Some("r".into()),
        server_reference: Some("other".into()),
        reason_string: Some("why".into()),
        receive_maximum: Some(32),
        topic_alias_maximum: Some(16),
        maximum_qos: Some(1),
        retain_available: Some(1),
        maximum_packet_size: Some(1000),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(1),
        shared_subscription_available: Some(1),
        authentication_method: Some("m".into()),
        authentication_data: Some(Bytes::from_static(b"d")),
        ..PropertyValues::default()
    });
    round_trip(
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: props,
        }),
        ProtocolVersion::V5,
    );
    for code in [
        ReasonCode::SUCCESS,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode::NOT_AUTHORIZED,
    ] {
        round_trip(
            Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            }),
            ProtocolVersion::V311,
        );
    }
    let reserved = [0x20, 0x02, 0x00, 0x06];
    assert!(
        decode(
            &mut BytesMut::from(&reserved[..]),
            ProtocolVersion::V311,
            64
        )
        .is_err()
    );
}

#[test]
fn publish_round_trips_with_all_message_properties() {
    let publish = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        properties: Properties::from(PropertyValues {
            topic_alias: Some(3),
            subscription_identifiers: vec![1, 300_000],
            ..all_properties()
        }),
        payload: Bytes::from_static(b"hello"),
    };
    round_trip(Packet::Publish(publish.clone()), ProtocolVersion::V5);
    let v3 = Publish {
        properties: Properties::default(),
        ..publish
    };
    round_trip(Packet::Publish(v3.clone()), ProtocolVersion::V311);
    round_trip(
        Packet::Publish(Publish {
            qos: QoS::AtMostOnce,
            dup: false,
            packet_id: 0,
            ..v3
        }),
        ProtocolVersion::V31,
    );
}

#[test]
fn acks_round_trip() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for make in [
            Packet::PubAck,
            Packet::PubRec,
            Packet::PubRel,
            Packet::PubComp,
        ] {
            round_trip(make(Ack::new(9, ReasonCode::SUCCESS)), v);
        }
    }
    let with_reason = Ack {
        packet_id: 1,
        code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        properties: Properties::from(PropertyValues {
            reason_string: Some("none".into()),
            ..PropertyValues::default()
        }),
    };
    round_trip(Packet::PubAck(with_reason.clone()), ProtocolVersion::V5);
    round_trip(
        Packet::PubRec(Ack {
            properties: Properties::default(),
            ..with_reason
        }),
        ProtocolVersion::V5,
    );
}

#[test]
fn subscribe_family_round_trips() {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let subscribe = Subscribe {
        packet_id: 3,
        properties: Properties::from(PropertyValues {
            subscription_identifiers: vec![42],
            ..PropertyValues::default()
        }),
        filters: vec![
            ("a/+".into(), options),
            ("$share/g/b/#".into(), SubscriptionOptions::default()),
        ],
    };
    round_trip(Packet::Subscribe(subscribe), ProtocolVersion::V5);
    let v3 = Subscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec![(
            "a/#".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            },
        )],
    };
    round_trip(Packet::Subscribe(v3), ProtocolVersion::V311);
    let suback = SubAck {
        packet_id: 3,
        properties: Properties::from(PropertyValues {
            reason_string: Some("r".into()),
            ..PropertyValues::default()
        }),
        codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
    };
    round_trip(Packet::SubAck(suback.clone()), ProtocolVersion::V5);
    round_trip(Packet::UnsubAck(suback), ProtocolVersion::V5);
    round_trip(
        Packet::UnsubAck(SubAck {
            packet_id: 4,
            properties: Properties::default(),
            codes: vec![],
        }),
        ProtocolVersion::V311,
    );
    let unsubscribe = Unsubscribe {
        packet_id: 5,
        properties: Properties::from(PropertyValues {
            user_properties: vec![("x".into(), "y".into())],
            ..PropertyValues::default()
        }),
        filters: vec!["a/+".into(), "b".into()],
    };
    round_trip(Packet::Unsubscribe(unsubscribe), ProtocolVersion::V5);
}

#[test]
fn small_packets_round_trip() {
    for v in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        round_trip(Packet::PingReq, v);
        round_trip(Packet::PingResp, v);
        round_trip(Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)), v);
    }
    let disconnect = Disconnect {
        code: ReasonCode::SESSION_TAKEN_OVER,
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(0),
            server_reference: Some("x".into()),
            reason_string: Some("y".into()),
            ..PropertyValues::default()
        }),
    };
    round_trip(Packet::Disconnect(disconnect), ProtocolVersion::V5);
    let auth = Auth {
        code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties::from(PropertyValues {
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"1")),
            ..PropertyValues::default()
        }),
    };
    round_trip(Packet::Auth(auth), ProtocolVersion::V5);
}

fn decode_bytes(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), version, 1 << 20)
}

fn decode_error(bytes: &[u8], version: ProtocolVersion) -> ReasonCode {
    decode_bytes(bytes, version)
        .expect_err("must be refused")
        .code
}

#[test]
fn spec_examples_decode() {
    // MQTT 3.1.1 section 3.1.2.10: keep alive example and a minimal CONNECT.
    let connect = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x04, b'c',
        b'l', b'i', b'd',
    ];
    match decode_bytes(&connect, ProtocolVersion::V311)
        .unwrap()
        .unwrap()
    {
        Packet::Connect(c) => {
            assert_eq!(c.protocol, ProtocolVersion::V311);
            assert_eq!(c.keep_alive, 60);
            assert_eq!(c.client_id, "clid");
            assert!(c.clean_start);
        }
        other => panic!("{other:?}"),
    }
    // Remaining length 321 = 0xC1 0x02 (spec table 1.1's two-byte range).
    let mut long = vec![0x30, 0xC1, 0x02, 0x00, 0x01, b'a'];
    long.resize(3 + 321, b'x');
    assert!(matches!(
        decode_bytes(&long, ProtocolVersion::V311),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn partial_packets_wait_for_more() {
    assert_eq!(decode_bytes(&[0x30], ProtocolVersion::V311), Ok(None));
    assert_eq!(decode_bytes(&[0x30, 0x80], ProtocolVersion::V311), Ok(None));
    assert_eq!(
        decode_bytes(&[0x30, 0x05, 0x00], ProtocolVersion::V311),
        Ok(None)
    );
}

#[test]
fn malformed_packets_get_the_right_reason_code() {
    use ProtocolVersion::*;
    // Remaining length with a fifth byte.
    assert_eq!(
        decode_error(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5),
        ReasonCode::MALFORMED_PACKET
    );
    // QoS 3.
    assert_eq!(
        decode_error(&[0x36, 0x03, 0x00, 0x01, b'a'], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // QoS 0 with DUP.
    assert_eq!(
        decode_error(&[0x38, 0x03, 0x00, 0x01, b'a'], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // Wildcard in a topic name.
    assert_eq!(
        decode_error(&[0x30, 0x03, 0x00, 0x01, b'#'], V5),
        ReasonCode::TOPIC_NAME_INVALID
    );
    // Invalid UTF-8 and U+0000 in a topic.
    assert_eq!(
        decode_error(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], V311),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        decode_error(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // SUBSCRIBE with wrong reserved flags, and with no filter.
    assert_eq!(
        decode_error(&[0x80, 0x02, 0x00, 0x01], V311),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        decode_error(&[0x82, 0x02, 0x00, 0x01], V311),
        ReasonCode::PROTOCOL_ERROR
    );
    // Packet identifier 0.
    assert_eq!(
        decode_error(&[0x40, 0x02, 0x00, 0x00], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // Reserved bits in v3 subscription options.
    assert_eq!(
        decode_error(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // Duplicate property (two message expiry intervals).
    let dup = [
        0x30, 0x0E, 0x00, 0x01, b'a', 0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2,
    ];
    assert_eq!(decode_error(&dup, V5), ReasonCode::PROTOCOL_ERROR);
    // A property not allowed in PUBLISH (session expiry).
    assert_eq!(
        decode_error(&[0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0, 0, 0, 1], V5),
        ReasonCode::PROTOCOL_ERROR
    );
    // A payload format indicator other than 0 or 1.
    let bad_indicator = [0x30, 0x07, 0x00, 0x01, b'a', 0x02, 0x01, 0x02, b'x'];
    assert_eq!(decode_error(&bad_indicator, V5), ReasonCode::PROTOCOL_ERROR);
    // AUTH does not exist in 3.1.1.
    assert_eq!(
        decode_error(&[0xF0, 0x00], V311),
        ReasonCode::MALFORMED_PACKET
    );
    // Trailing bytes after PINGREQ.
    assert_eq!(
        decode_error(&[0xC0, 0x01, 0x00], V311),
        ReasonCode::MALFORMED_PACKET
    );
}

#[test]
fn oversized_packets_are_refused_from_the_header() {
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    let err = decode(&mut buf, ProtocolVersion::V5, 1000).unwrap_err();
    assert_eq!(err.code, ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn connect_errors_say_how_to_answer() {
    let bad_level = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let e = decode_connect_frame(Bytes::copy_from_slice(&bad_level)).unwrap_err();
    assert_eq!(e.error.code, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(e.answer_in, Some(ProtocolVersion::V5));
    let v3_name_mismatch = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let e = decode_connect_frame(Bytes::copy_from_slice(&v3_name_mismatch)).unwrap_err();
    assert_eq!(e.answer_in, Some(ProtocolVersion::V311));
    let bridge = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x84, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let c = decode_connect_frame(Bytes::copy_from_slice(&bridge)).unwrap();
    assert!(c.bridge);
    let reserved = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x00,
    ];
    let e = decode_connect_frame(Bytes::copy_from_slice(&reserved)).unwrap_err();
    assert_eq!(e.error.code, ReasonCode::MALFORMED_PACKET);
    assert_eq!(e.answer_in, None, "3.1.1 closes without a CONNACK");
    let mut reserved_v5 = reserved;
    reserved_v5[8] = 5;
    let e = decode_connect_frame(Bytes::copy_from_slice(&reserved_v5)).unwrap_err();
    assert_eq!(e.answer_in, Some(ProtocolVersion::V5), "v5 says 0x81");
    let reserved_v31 = [
        0x10, 0x0E, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x03, 0x00, 0x3C, 0x00,
        0x00,
    ];
    let e = decode_connect_frame(Bytes::copy_from_slice(&reserved_v31)).unwrap_err();
    assert_eq!(e.answer_in, None, "3.1 closes without a CONNACK too");
    let not_connect = [0xC0, 0x00];
    assert_eq!(
        decode_connect_frame(Bytes::copy_from_slice(&not_connect))
            .unwrap_err()
            .answer_in,
        None
    );
}

#[test]
fn outgoing_publish_length_matches_encoding() {
    let forwarded = all_properties().forwarded_message_properties();
    let p = OutgoingPublish {
        topic: "t",
        qos: QoS::AtLeastOnce,
        retain: false,
        dup: false,
        packet_id: 1,
        message_expiry: Some(5),
        topic_alias: Some(1),
        subscription_ids: &[1, 200],
        forwarded_properties: &forwarded,
        payload: b"x",
    };
    let mut buf = BytesMut::new();
    p.encode(ProtocolVersion::V5, &mut buf);
    assert_eq!(buf.len(), p.encoded_len(ProtocolVersion::V5));
    match decode(&mut buf, ProtocolVersion::V5, usize::MAX)
        .unwrap()
        .unwrap()
    {
        Packet::Publish(d) => {
            assert_eq!(
                d.properties.user_properties,
                all_properties().user_properties
            );
            assert_eq!(d.properties.subscription_identifiers, vec![1, 200]);
            assert_eq!(
                Properties::from_forwarded(&forwarded),
                Properties::from(PropertyValues {
                    message_expiry_interval: None,
                    ..all_properties()
                })
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fuzz_findings_are_errors_not_panics() {
    // Found by the decode fuzz target: an empty slice given as a whole frame.
    assert!(decode_connect_frame(Bytes::new()).is_err());
    assert!(decode_connect_frame(Bytes::from_static(&[0x10])).is_err());
    assert!(decode_frame(Bytes::from_static(&[0x30, 0x05, 0x00]), ProtocolVersion::V5).is_err());
    assert!(decode_frame(Bytes::from_static(&[0xC0, 0x80]), ProtocolVersion::V5).is_err());
}

/// A packet is moved by value through the codec and the broker: its properties are
/// one pointer, made only when a packet carries some.
#[test]
fn packets_are_small_and_properties_boxed_only_when_present() {
    assert!(
        size_of::<Packet>() <= 96,
        "Packet is {} bytes",
        size_of::<Packet>()
    );
    let bare = Publish {
        topic: "t".into(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        packet_id: 0,
        properties: Properties::default(),
    };
    let mut with = bare.clone();
    with.properties.content_type = Some("text/plain".into());
    for (publish, boxed) in [(bare, false), (with, true)] {
        let mut buf = BytesMut::new();
        encode(
            &Packet::Publish(publish.clone()),
            ProtocolVersion::V5,
            &mut buf,
        );
        let Some(Packet::Publish(mut decoded)) =
            decode(&mut buf, ProtocolVersion::V5, 1 << 20).unwrap()
        else {
            panic!("a publish decodes as one");
        };
        assert_eq!(decoded, publish);
        assert_eq!(decoded.properties.get_mut().is_some(), boxed);
    }
}

#[test]
fn an_mqtt_3_1_connack_has_no_session_present_flag() {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    encode(&connack, ProtocolVersion::V31, &mut out);
    assert_eq!(&out[..], [0x20, 0x02, 0x00, 0x00]);
    out.clear();
    encode(&connack, ProtocolVersion::V311, &mut out);
    assert_eq!(&out[..], [0x20, 0x02, 0x01, 0x00]);
    let mut reserved = BytesMut::from(&[0x20u8, 0x02, 0x01, 0x00][..]);
    let Some(Packet::ConnAck(decoded)) = decode(&mut reserved, ProtocolVersion::V31, 64).unwrap()
    else {
        panic!("a CONNACK")
    };
    assert!(!decoded.session_present);
}
