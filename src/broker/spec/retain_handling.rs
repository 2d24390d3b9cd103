//! Retain Handling and Retain As Published (MQTT 5.0 section 3.8.3.1).

use super::*;
use crate::protocol::RetainHandling;

fn options(handling: RetainHandling, as_published: bool) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: handling,
        retain_as_published: as_published,
        ..SubscriptionOptions::default()
    }
}

#[test]
fn retained_messages_are_sent_at_subscribe_only_as_retain_handling_says() {
    let mut h = Harness::new();
    h.connect("pub", Hello::default());
    h.send("pub", retained("r/1", "kept")).unwrap();
    h.connect("sub", Hello::default());
    let cases = [
        (RetainHandling::SendAtSubscribe, 1, "0: at every subscribe"),
        (RetainHandling::SendAtSubscribe, 1, "0: again"),
        (
            RetainHandling::SendIfNew,
            0,
            "1: the subscription exists already",
        ),
        (RetainHandling::DoNotSend, 0, "2: never"),
    ];
    for (handling, expected, why) in cases {
        h.send("sub", subscribe_with("r/#", options(handling, false)))
            .unwrap();
        assert_eq!(h.publishes("sub").len(), expected, "{why}");
    }
    h.send(
        "sub",
        subscribe_with("r/+", options(RetainHandling::SendIfNew, false)),
    )
    .unwrap();
    let got = h.publishes("sub");
    assert_eq!(payloads(&got), ["kept"], "1: a new subscription");
    assert!(
        got[0].retain,
        "a retained message sent at subscribe keeps its flag"
    );
}

#[test]
fn the_retain_flag_is_kept_on_delivery_only_with_retain_as_published() {
    let mut h = Harness::new();
    h.connect("kept", Hello::default());
    h.connect("cleared", Hello::default());
    let never = RetainHandling::DoNotSend;
    h.send("kept", subscribe_with("r/#", options(never, true)))
        .unwrap();
    h.send("cleared", subscribe_with("r/#", options(never, false)))
        .unwrap();
    h.connect("pub", Hello::default());
    h.send("pub", retained("r/2", "live")).unwrap();
    assert!(h.publishes("kept")[0].retain);
    assert!(!h.publishes("cleared")[0].retain);
}
