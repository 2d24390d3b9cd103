"""MQTT 5.0 features, each observed from a client."""

import time

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqttraw import CONNACK, DISCONNECT, PUBACK, PUBLISH, RawClient, connect_packet
from paho_helpers import V5, V311, Paho, props, CONNECT_PROPS, SUBSCRIBE_PROPS


def test_inbound_topic_alias_maps_to_the_topic(broker):
    sub = Paho(broker, "s")
    sub.subscribe("alias/#")
    c = RawClient(broker.host, broker.port)
    c.connect("aliaser")
    c.publish("alias/long/topic", b"1", properties=[(0x23, 3)])
    c.publish("", b"2", properties=[(0x23, 3)])
    assert [sub.expect().topic for _ in range(2)] == ["alias/long/topic", "alias/long/topic"]


def test_unknown_topic_alias_is_a_protocol_error(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("bad-alias")
    c.publish("", b"x", properties=[(0x23, 2)])
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x82]


def test_topic_alias_above_the_maximum_gets_0x94(make_broker):
    broker = make_broker("[limits]\ntopic_alias_maximum = 2\n")
    c = RawClient(broker.host, broker.port)
    ack = c.connect("big-alias")
    assert ack.props[0x22] == 2
    c.publish("t", b"x", properties=[(0x23, 3)])
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x94]


def test_broker_assigns_topic_aliases_towards_clients(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("alias-rx", properties=[(0x22, 4)])
    c.subscribe("out/#")
    pub = Paho(broker, "p")
    pub.publish("out/repeated", "a")
    pub.publish("out/repeated", "b")
    first, second = c.recv_kind(PUBLISH), c.recv_kind(PUBLISH)
    assert first.topic == "out/repeated" and first.props[0x23] == 1
    assert second.topic == "" and second.props[0x23] == 1 and second.payload == b"b"


def test_no_topic_alias_towards_clients_that_do_not_allow_them(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("alias-none")
    c.subscribe("out/#")
    pub = Paho(broker, "p")
    pub.publish("out/x", "a")
    pub.publish("out/x", "b")
    for _ in range(2):
        p = c.recv_kind(PUBLISH)
        assert p.topic == "out/x" and 0x23 not in p.props


def test_expired_message_is_not_delivered(broker):
    sub = Paho(broker, "exp-sub", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=300))
    sub.subscribe("exp/#", qos=1)
    sub.disconnect()
    pub = Paho(broker, "p")
    pub.publish("exp/short", "gone", qos=1, properties=props(MessageExpiryInterval=1))
    pub.publish("exp/long", "kept", qos=1, properties=props(MessageExpiryInterval=100))
    time.sleep(2.2)
    sub = Paho(broker, "exp-sub", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=300))
    m = sub.expect()
    assert m.topic == "exp/long"
    assert 95 <= m.properties.MessageExpiryInterval <= 98, "expiry counts down while the message waits"
    sub.expect_none(0.5)


def test_expired_retained_message_is_not_delivered(broker):
    pub = Paho(broker, "p")
    pub.publish("retexp/t", "short", qos=1, retain=True, properties=props(MessageExpiryInterval=1))
    time.sleep(2.2)
    sub = Paho(broker, "s")
    sub.subscribe("retexp/#")
    sub.expect_none(0.5)


def test_receive_maximum_limits_messages_in_flight_to_the_client(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("slow-acker", properties=[(0x21, 2)])
    c.subscribe("rm/t", qos=1)
    pub = Paho(broker, "p")
    for i in range(4):
        pub.publish("rm/t", str(i), qos=1)
    got = [c.recv_kind(PUBLISH), c.recv_kind(PUBLISH)]
    c.expect_nothing(0.5)
    c.send(bytes([PUBACK << 4, 2]) + got[0].packet_id.to_bytes(2, "big"))
    assert c.recv_kind(PUBLISH).payload == b"2"
    c.expect_nothing(0.3)


def test_receive_maximum_exceeded_by_the_client_gets_0x93(make_broker):
    broker = make_broker("[limits]\nreceive_maximum = 2\n")
    c = RawClient(broker.host, broker.port)
    ack = c.connect("flooder")
    assert ack.props[0x21] == 2
    for pid in (1, 2, 3):
        c.publish("rx/t", b"x", qos=2, packet_id=pid)
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x93]


def test_packet_larger_than_maximum_gets_0x95(make_broker):
    broker = make_broker("[limits]\nmax_packet_size = 1024\n")
    c = RawClient(broker.host, broker.port)
    ack = c.connect("too-big")
    assert ack.props[0x27] == 1024
    c.publish("big", b"x" * 2000)
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x95]
    broker.wait_for_log(r"client_id=too-big .*exceeds the maximum packet size")


def test_oversize_message_is_not_sent_to_a_client_with_a_smaller_maximum(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("small-max", properties=[(0x27, 200)])
    c.subscribe("mps/#", qos=1)
    pub = Paho(broker, "p")
    pub.publish("mps/big", b"x" * 500, qos=1)
    pub.publish("mps/small", b"y", qos=1)
    p = c.recv_kind(PUBLISH)
    assert p.topic == "mps/small"


def test_subscription_identifiers_are_returned(broker):
    sub = Paho(broker, "s")
    sub.subscribe("sid/#", qos=1, properties=props(SUBSCRIBE_PROPS, SubscriptionIdentifier=42))
    sub.subscribe("sid/+", qos=1, properties=props(SUBSCRIBE_PROPS, SubscriptionIdentifier=7))
    Paho(broker, "p").publish("sid/x", "hi", qos=1)
    m = sub.expect()
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 42]
    sub.expect_none(0.5)


def test_no_local_suppresses_own_messages(broker):
    c = Paho(broker, "self")
    c.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
    c.publish("nl/t", "mine", qos=1)
    c.expect_none(0.7)
    Paho(broker, "other").publish("nl/t", "theirs", qos=1)
    assert c.expect().payload == b"theirs"


def test_retain_as_published_keeps_the_retain_flag(broker):
    rap = Paho(broker, "rap")
    rap.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = Paho(broker, "plain")
    plain.subscribe("rap/t", qos=1)
    Paho(broker, "p").publish("rap/t", "r", qos=1, retain=True)
    assert rap.expect().retain
    assert not plain.expect().retain


def test_retain_handling_0_1_2(broker):
    Paho(broker, "p").publish("rh/t", "kept", qos=1, retain=True)
    c = Paho(broker, "rh")
    c.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
    assert c.expect().retain
    c.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
    assert c.expect().retain, "handling 0 sends on every subscribe"
    c.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=1))
    c.expect_none(0.5)
    c.subscribe("rh/+", options=SubscribeOptions(qos=1, retainHandling=1))
    assert c.expect().retain, "handling 1 sends for a new subscription"
    c.subscribe("rh/#", options=SubscribeOptions(qos=1, retainHandling=2))
    c.expect_none(0.5)


def test_retained_message_is_replaced_and_cleared(broker):
    p = Paho(broker, "p")
    p.publish("ret/t", "one", qos=1, retain=True)
    p.publish("ret/t", "two", qos=1, retain=True)
    s = Paho(broker, "s1")
    s.subscribe("ret/#")
    m = s.expect()
    assert (m.payload, m.retain) == (b"two", True)
    p.publish("ret/t", "", qos=1, retain=True)
    s2 = Paho(broker, "s2")
    s2.subscribe("ret/#")
    s2.expect_none(0.5)


def test_shared_subscription_round_robin(broker):
    a, b = Paho(broker, "a"), Paho(broker, "b")
    a.subscribe("$share/g/sh/#", qos=1)
    b.subscribe("$share/g/sh/#", qos=1)
    pub = Paho(broker, "p")
    for i in range(10):
        pub.publish("sh/t", str(i), qos=1)
    got_a = [a.expect().payload for _ in range(5)]
    got_b = [b.expect().payload for _ in range(5)]
    assert sorted(got_a + got_b) == sorted(str(i).encode() for i in range(10))
    a.expect_none(0.3)
    b.expect_none(0.3)


def test_shared_subscription_falls_back_when_a_member_leaves(broker):
    holder = RawClient(broker.host, broker.port)
    holder.connect("holder", properties=[(0x21, 1)])
    holder.subscribe("$share/g/fb/t", qos=1)
    other = Paho(broker, "other")
    other.subscribe("$share/g/fb/t", qos=1)
    pub = Paho(broker, "p")
    for i in range(6):
        pub.publish("fb/t", str(i), qos=1)
    held = holder.recv_kind(PUBLISH)  # never acknowledged
    holder.close()
    got = set()
    while len(got) < 6:
        got.add(other.expect().payload)
    assert held.payload in got
    assert got == {str(i).encode() for i in range(6)}


def test_shared_subscription_gets_no_retained_messages(broker):
    Paho(broker, "p").publish("shret/t", "r", qos=1, retain=True)
    s = Paho(broker, "s")
    s.subscribe("$share/g/shret/#", qos=1)
    s.expect_none(0.5)


def test_request_response_and_user_properties_pass_through(broker):
    responder = Paho(broker, "responder")
    responder.subscribe("req/+", qos=1)
    requester = Paho(broker, "requester")
    requester.subscribe("resp/requester", qos=1)
    requester.publish("req/time", "what time?", qos=1, properties=props(
        ResponseTopic="resp/requester", CorrelationData=b"\x01\x02", UserProperty=[("a", "1"), ("a", "2")],
        ContentType="text/plain", PayloadFormatIndicator=1))
    req = responder.expect()
    p = req.properties
    assert p.ResponseTopic == "resp/requester"
    assert p.CorrelationData == b"\x01\x02"
    assert p.UserProperty == [("a", "1"), ("a", "2")]
    assert p.ContentType == "text/plain" and p.PayloadFormatIndicator == 1
    responder.publish(p.ResponseTopic, "noon", qos=1, properties=props(CorrelationData=p.CorrelationData))
    resp = requester.expect()
    assert resp.payload == b"noon" and resp.properties.CorrelationData == b"\x01\x02"


def test_assigned_client_identifier(broker):
    c = Paho(broker, "", V5)
    assert c.connack_properties.AssignedClientIdentifier.startswith("auto-")


def test_empty_client_id_with_persistent_v311_session_is_refused(broker):
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_packet("", version=4, clean=False))
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == 0x02


def test_unknown_authentication_method_gets_0x8c_with_a_reason_string(broker):
    c = RawClient(broker.host, broker.port)
    c.send(connect_packet("auth", properties=[(0x15, "SCRAM-SHA-1")]))
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == 0x8C
    assert "SCRAM-SHA-1" in ack.props[0x1F]
    assert c.recv() is None


def test_anonymous_clients_refused_when_not_allowed(make_broker):
    broker = make_broker("[auth]\nallow_anonymous = false\n")
    c = RawClient(broker.host, broker.port)
    c.send(connect_packet("anon"))
    assert c.recv().code == 0x87
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_packet("anon3", version=4))
    assert c.recv().code == 0x05


def test_unsubscribe_reason_codes(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("unsub")
    c.subscribe("u/t")
    body = (1).to_bytes(2, "big") + b"\x00" + b"\x00\x03u/t" + b"\x00\x03u/x"
    c.send(bytes([0xA2, len(body)]) + body)
    ack = c.recv()
    assert ack.codes == [0x00, 0x11]


def test_invalid_filter_gets_0x8f_in_suback(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("badfilter")
    assert c.subscribe("a/#/b").codes == [0x8F]
    c3 = RawClient(broker.host, broker.port, version=4)
    c3.connect("badfilter3", version=4)
    assert c3.subscribe("a/b#").codes == [0x80]


def test_bridge_protocol_bit_gets_no_local_and_retain_as_published(broker):
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_packet("a-bridge", version=4, level=0x84, clean=False))
    assert c.recv().code == 0
    broker.wait_for_log(r"client connected client_id=a-bridge proto=3.1.1 \(bridge\)")
    c.subscribe("br/#", qos=1)
    c.publish("br/own", b"mine", qos=0)
    c.expect_nothing(0.5)
    Paho(broker, "p").publish("br/other", "r", qos=1, retain=True)
    p = c.recv_kind(PUBLISH)
    assert p.topic == "br/other" and p.retain


def test_dollar_topics_not_matched_by_leading_wildcards(broker):
    s = Paho(broker, "s")
    s.subscribe("#")
    d = Paho(broker, "d")
    d.subscribe("$app/#")
    Paho(broker, "p").publish("$app/x", "hidden")
    assert d.expect().topic == "$app/x"
    s.expect_none(0.5)


def test_wildcard_matching(broker):
    s = Paho(broker, "s")
    s.subscribe("sport/+/player1")
    s.subscribe("fin/#")
    p = Paho(broker, "p")
    for t in ["sport/tennis/player1", "sport/tennis/player2", "fin", "fin/a/b", "sport/player1"]:
        p.publish(t, t)
    assert sorted(s.expect().topic for _ in range(3)) == ["fin", "fin/a/b", "sport/tennis/player1"]
    s.expect_none(0.5)


def test_puback_says_no_matching_subscribers(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("lonely")
    c.publish("nobody/listens", b"x", qos=1, packet_id=3)
    ack = c.recv()
    assert ack.kind == PUBACK and ack.code == 0x10


def test_paho_v311_and_v5_in_one_exchange(broker):
    v5 = Paho(broker, "v5", V5)
    v5.subscribe("mix/#", qos=1)
    Paho(broker, "v3", V311).publish("mix/t", "from v3", qos=1)
    assert v5.expect().payload == b"from v3"


