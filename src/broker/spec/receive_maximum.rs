//! Receive Maximum (MQTT 5.0 section 4.9), both ways.

use super::*;

#[test]
fn no_more_qos_1_and_2_in_flight_to_a_client_than_its_receive_maximum() {
    let mut h = Harness::new();
    let two = Hello {
        properties: PropertyValues {
            receive_maximum: Some(2),
            ..PropertyValues::default()
        },
        ..Hello::default()
    };
    h.connect("sub", two);
    h.send("sub", subscribe("t", QoS::ExactlyOnce)).unwrap();
    h.connect("pub", Hello::default());
    for (id, qos) in [
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
        (3, QoS::AtLeastOnce),
    ] {
        h.send("pub", publish("t", "m", qos, id)).unwrap();
    }
    h.send("pub", publish("t", "q0", QoS::AtMostOnce, 0))
        .unwrap();
    let first = h.publishes("sub");
    assert_eq!(
        first.len(),
        2,
        "two in flight; the third and the QoS 0 after it wait"
    );
    h.send("sub", ack(Packet::PubAck, first[0].packet_id))
        .unwrap();
    let second = h.publishes("sub");
    assert_eq!(
        payloads(&second),
        ["m", "q0"],
        "one more in flight, then QoS 0 flows"
    );
    // A QoS 2 flight counts until its PUBCOMP, not its PUBREC.
    h.send("sub", ack(Packet::PubRec, first[1].packet_id))
        .unwrap();
    h.connect("pub2", Hello::default());
    h.send("pub2", publish("t", "later", QoS::AtLeastOnce, 1))
        .unwrap();
    assert!(h.publishes("sub").is_empty(), "still two in flight");
    h.send("sub", ack(Packet::PubComp, first[1].packet_id))
        .unwrap();
    assert_eq!(payloads(&h.publishes("sub")), ["later"]);
}

#[test]
fn a_client_exceeding_the_brokers_receive_maximum_is_disconnected_with_0x93() {
    let mut h = Harness::new();
    let maximum = h.broker.settings.receive_maximum;
    let told = h.connect("pub", Hello::default());
    assert_eq!(told.properties.receive_maximum, Some(maximum));
    for id in 1..=maximum {
        h.send("pub", publish("t", "m", QoS::ExactlyOnce, id))
            .unwrap();
    }
    let close = h
        .send("pub", publish("t", "m", QoS::ExactlyOnce, maximum + 1))
        .unwrap_err();
    assert_eq!(close.code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}
