//! Wills and Will Delay Interval (MQTT 5.0 sections 3.1.2.5 and 3.1.3.2).

use super::*;

fn with_will(delay: u32, expiry: u32, clean_start: bool) -> Hello {
    let will = Will {
        topic: "will/w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::from(PropertyValues {
            will_delay_interval: Some(delay),
            ..PropertyValues::default()
        }),
    };
    Hello {
        clean_start,
        properties: PropertyValues {
            session_expiry_interval: Some(expiry),
            ..PropertyValues::default()
        },
        will: Some(will),
        ..Hello::default()
    }
}

fn watcher(h: &mut Harness) {
    h.connect("watch", Hello::default());
    h.send("watch", subscribe("will/#", QoS::AtLeastOnce))
        .unwrap();
}

#[test]
fn the_will_waits_for_its_delay() {
    let mut h = Harness::new();
    watcher(&mut h);
    h.connect("w", with_will(3, 60, true));
    h.drop_connection("w");
    h.advance(2);
    assert!(h.publishes("watch").is_empty());
    h.advance(1);
    assert_eq!(payloads(&h.publishes("watch")), ["gone"]);
}

#[test]
fn a_reconnect_with_clean_start_0_within_the_delay_drops_the_will() {
    let mut h = Harness::new();
    watcher(&mut h);
    h.connect("w", with_will(3, 60, true));
    h.drop_connection("w");
    h.advance(1);
    assert!(h.connect("w", with_will(3, 60, false)).session_present);
    h.advance(10);
    assert!(h.publishes("watch").is_empty(), "[MQTT-3.1.2-8]");
}

#[test]
fn a_reconnect_with_clean_start_1_within_the_delay_publishes_it_at_once() {
    let mut h = Harness::new();
    watcher(&mut h);
    h.connect("w", with_will(3, 60, true));
    h.drop_connection("w");
    h.advance(1);
    assert!(!h.connect("w", with_will(3, 60, true)).session_present);
    assert_eq!(
        payloads(&h.publishes("watch")),
        ["gone"],
        "the old session ended"
    );
}

#[test]
fn a_session_that_ends_before_the_delay_publishes_the_will_then() {
    let mut h = Harness::new();
    watcher(&mut h);
    h.connect("w", with_will(30, 2, true));
    h.drop_connection("w");
    h.advance(1);
    assert!(h.publishes("watch").is_empty());
    h.advance(1);
    assert_eq!(payloads(&h.publishes("watch")), ["gone"]);
}

#[test]
fn a_normal_disconnect_drops_the_will_and_0x04_publishes_it() {
    let mut h = Harness::new();
    watcher(&mut h);
    h.connect("quiet", with_will(0, 0, true));
    h.send("quiet", disconnect(None)).unwrap_err();
    assert!(h.publishes("watch").is_empty());
    h.connect("loud", with_will(0, 0, true));
    let with_will_message = Packet::Disconnect(Disconnect {
        code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    });
    h.send("loud", with_will_message).unwrap_err();
    assert_eq!(payloads(&h.publishes("watch")), ["gone"]);
}
