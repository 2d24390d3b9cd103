//! Shared subscriptions (MQTT 5.0 section 4.8.2).

use super::*;

#[test]
fn each_message_goes_to_one_member_in_turn() {
    let mut h = Harness::new();
    for id in ["m1", "m2"] {
        h.connect(id, Hello::default());
        h.send(id, subscribe("$share/g/jobs/#", QoS::AtLeastOnce))
            .unwrap();
    }
    h.connect("pub", Hello::default());
    for n in 1..=6 {
        h.send("pub", publish("jobs/a", "job", QoS::AtLeastOnce, n))
            .unwrap();
    }
    let (a, b) = (h.publishes("m1").len(), h.publishes("m2").len());
    assert_eq!((a, b), (3, 3), "round robin");
}

#[test]
fn what_a_leaving_member_held_goes_to_another_one() {
    let mut h = Harness::new();
    for id in ["m1", "m2"] {
        h.connect(id, Hello::default());
        h.send(id, subscribe("$share/g/t", QoS::AtLeastOnce))
            .unwrap();
    }
    h.connect("pub", Hello::default());
    for n in 1..=4 {
        h.send("pub", publish("t", "m", QoS::AtLeastOnce, n))
            .unwrap();
    }
    let held = h.publishes("m1").len();
    assert_eq!(held, 2);
    // m1 leaves without acknowledging: its clean session ends, its two go to m2.
    h.drop_connection("m1");
    assert_eq!(h.publishes("m2").len(), 2 + held);
}

#[test]
fn a_shared_subscription_gets_no_retained_messages() {
    let mut h = Harness::new();
    h.connect("pub", Hello::default());
    h.send("pub", retained("t", "kept")).unwrap();
    h.connect("m", Hello::default());
    h.send("m", subscribe("$share/g/t", QoS::AtMostOnce))
        .unwrap();
    assert!(h.publishes("m").is_empty());
    h.send("m", subscribe("t", QoS::AtMostOnce)).unwrap();
    assert_eq!(payloads(&h.publishes("m")), ["kept"], "a plain one does");
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut h = Harness::new();
    h.connect("m", Hello::default());
    let options = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let close = h
        .send("m", subscribe_with("$share/g/t", options))
        .unwrap_err();
    assert_eq!(close.code, ReasonCode::PROTOCOL_ERROR);
}
