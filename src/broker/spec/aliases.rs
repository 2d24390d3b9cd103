//! Topic aliases (MQTT 5.0 section 3.3.2.3.4), both ways.

use super::*;

fn with_alias(topic: &str, alias: u16, payload: &'static str) -> Packet {
    let properties = PropertyValues {
        topic_alias: Some(alias),
        ..PropertyValues::default()
    };
    publish_with(topic, payload, QoS::AtMostOnce, 0, properties)
}

#[test]
fn an_inbound_alias_set_with_a_topic_stands_for_it_afterwards() {
    let mut h = Harness::new();
    h.connect("sub", Hello::default());
    h.send("sub", subscribe("a/b", QoS::AtMostOnce)).unwrap();
    h.connect("pub", Hello::default());
    h.send("pub", with_alias("a/b", 3, "first")).unwrap();
    h.send("pub", with_alias("", 3, "second")).unwrap();
    let got = h.publishes("sub");
    assert_eq!(payloads(&got), ["first", "second"]);
    assert!(got.iter().all(|p| p.topic.as_str() == "a/b"));
}

#[test]
fn an_alias_above_the_maximum_or_never_set_closes_the_connection() {
    let mut h = Harness::new();
    let maximum = h.broker.settings.topic_alias_maximum;
    let told = h.connect("pub", Hello::default());
    assert_eq!(told.properties.topic_alias_maximum, Some(maximum));
    let close = h
        .send("pub", with_alias("t", maximum + 1, "x"))
        .unwrap_err();
    assert_eq!(close.code, ReasonCode::TOPIC_ALIAS_INVALID);
    h.connect("pub2", Hello::default());
    let close = h.send("pub2", with_alias("", 1, "x")).unwrap_err();
    assert_eq!(
        close.code,
        ReasonCode::PROTOCOL_ERROR,
        "alias 1 was never set"
    );
}

#[test]
fn outbound_aliases_only_towards_clients_that_allow_them() {
    let mut h = Harness::new();
    let allows = Hello {
        properties: PropertyValues {
            topic_alias_maximum: Some(2),
            ..PropertyValues::default()
        },
        ..Hello::default()
    };
    h.connect("with", allows);
    h.connect("without", Hello::default());
    for id in ["with", "without"] {
        h.send(id, subscribe("#", QoS::AtMostOnce)).unwrap();
    }
    h.connect("pub", Hello::default());
    for topic in ["a", "b", "c", "a", "c"] {
        h.send("pub", publish(topic, "x", QoS::AtMostOnce, 0))
            .unwrap();
    }
    let sent: Vec<(String, Option<u16>)> = h
        .publishes("with")
        .into_iter()
        .map(|p| (p.topic.to_string(), p.properties.topic_alias))
        .collect();
    let expected = [
        ("a", Some(1)),
        ("b", Some(2)),
        ("c", None), // the client allows two
        ("", Some(1)),
        ("c", None),
    ];
    let expected: Vec<(String, Option<u16>)> =
        expected.iter().map(|(t, a)| (t.to_string(), *a)).collect();
    assert_eq!(sent, expected);
    assert!(
        h.publishes("without")
            .iter()
            .all(|p| p.properties.topic_alias.is_none())
    );
}
