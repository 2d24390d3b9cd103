//! Session Expiry (MQTT 5.0 section 3.1.2.11) and MQTT 3.1.1's clean session.

use super::*;

fn expiring(seconds: u32, clean_start: bool) -> Hello {
    Hello {
        clean_start,
        properties: PropertyValues {
            session_expiry_interval: Some(seconds),
            ..PropertyValues::default()
        },
        ..Hello::default()
    }
}

#[test]
fn a_session_outlives_its_connection_by_its_expiry_and_no_more() {
    let mut h = Harness::new();
    h.connect("s", expiring(10, true));
    h.send("s", subscribe("t", QoS::AtLeastOnce)).unwrap();
    h.drop_connection("s");
    h.connect("pub", Hello::default());
    h.send("pub", publish("t", "while away", QoS::AtLeastOnce, 1))
        .unwrap();
    h.advance(9);
    assert!(h.connect("s", expiring(10, false)).session_present);
    assert_eq!(payloads(&h.publishes("s")), ["while away"]);
    h.drop_connection("s");
    h.advance(10);
    assert!(
        !h.connect("s", expiring(10, false)).session_present,
        "expired"
    );
}

#[test]
fn disconnect_may_change_the_expiry_but_not_raise_it_from_0() {
    let mut h = Harness::new();
    h.connect("s", expiring(60, true));
    assert!(h.send("s", disconnect(Some(0))).unwrap_err().by_client);
    assert!(
        !h.connect("s", expiring(60, false)).session_present,
        "ended at once"
    );
    h.connect("z", expiring(0, true));
    let close = h.send("z", disconnect(Some(30))).unwrap_err();
    assert_eq!(close.code, ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn a_clean_session_never_passes_to_a_persistent_one() {
    let mut h = Harness::new();
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("c{version:?}");
        let clean = Hello {
            version,
            ..Hello::default()
        };
        h.connect(&id, clean);
        h.send(&id, subscribe("t", QoS::AtLeastOnce)).unwrap();
        let persistent = Hello {
            version,
            ..expiring(60, false)
        };
        assert!(!h.connect(&id, persistent).session_present, "{version:?}");
    }
}

#[test]
fn a_v311_persistent_session_keeps_its_subscriptions_and_queue() {
    let mut h = Harness::new();
    let persistent = Hello {
        version: ProtocolVersion::V311,
        clean_start: false,
        ..Hello::default()
    };
    h.connect("p", persistent);
    h.send("p", subscribe("t", QoS::AtLeastOnce)).unwrap();
    h.drop_connection("p");
    h.connect("pub", Hello::default());
    h.send("pub", publish("t", "queued", QoS::AtLeastOnce, 1))
        .unwrap();
    h.send("pub", publish("t", "lost", QoS::AtMostOnce, 0))
        .unwrap();
    h.advance(3600);
    let again = Hello {
        version: ProtocolVersion::V311,
        clean_start: false,
        ..Hello::default()
    };
    assert!(h.connect("p", again).session_present);
    assert_eq!(
        payloads(&h.publishes("p")),
        ["queued"],
        "QoS 0 is not queued for an offline session"
    );
}
