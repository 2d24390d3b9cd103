"""QoS 0/1/2, redelivery, clean start and session expiry, takeover."""

import time

from mqttraw import (CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient,
                     ack_packet)
from paho_helpers import V5, V311, Paho, props, CONNECT_PROPS


def test_qos_is_the_minimum_of_publish_and_subscription(broker):
    sub = Paho(broker, "s")
    sub.subscribe("q/#", qos=1)
    pub = Paho(broker, "p")
    pub.publish("q/2", "x", qos=2)
    assert sub.expect().qos == 1
    pub.publish("q/0", "x", qos=0)
    assert sub.expect().qos == 0


def test_qos1_unacknowledged_is_redelivered_with_dup_after_reconnect(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("redeliver", clean=False, properties=[(0x11, 300)])
    c.subscribe("r/t", qos=1)
    pub = Paho(broker, "p")
    pub.publish("r/t", "once", qos=1)
    first = c.recv_kind(PUBLISH)
    assert first.payload == b"once" and not first.dup
    c.close()  # no PUBACK
    c = RawClient(broker.host, broker.port)
    ack = c.connect("redeliver", clean=False, properties=[(0x11, 300)])
    assert ack.session_present
    again = c.recv_kind(PUBLISH)
    assert again.payload == b"once" and again.dup and again.packet_id == first.packet_id
    c.send(ack_packet(PUBACK, again.packet_id))
    c.expect_nothing(0.5)


def test_qos2_outbound_pubrel_is_resent_after_reconnect(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("q2out", clean=False, properties=[(0x11, 300)])
    c.subscribe("q2/t", qos=2)
    Paho(broker, "p").publish("q2/t", "x", qos=2)
    p = c.recv_kind(PUBLISH)
    c.send(ack_packet(PUBREC, p.packet_id))
    rel = c.recv_kind(PUBREL)
    assert rel.packet_id == p.packet_id
    c.close()  # no PUBCOMP
    c = RawClient(broker.host, broker.port)
    c.connect("q2out", clean=False, properties=[(0x11, 300)])
    rel = c.recv()
    assert rel.kind == PUBREL and rel.packet_id == p.packet_id
    c.send(ack_packet(PUBCOMP, p.packet_id))
    c.expect_nothing(0.5)


def test_qos2_inbound_duplicate_is_delivered_once(broker):
    sub = Paho(broker, "s")
    sub.subscribe("dup/t", qos=2)
    c = RawClient(broker.host, broker.port)
    c.connect("pub2")
    c.publish("dup/t", b"x", qos=2, packet_id=7)
    assert c.recv().kind == PUBREC
    c.publish("dup/t", b"x", qos=2, packet_id=7, dup=True)
    assert c.recv().kind == PUBREC
    c.send(ack_packet(PUBREL, 7))
    comp = c.recv()
    assert comp.kind == PUBCOMP and comp.code == 0
    assert sub.expect().payload == b"x"
    sub.expect_none(0.5)


def test_clean_start_false_resumes_subscriptions_and_queued_messages(broker):
    sub = Paho(broker, "resume", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=300))
    sub.subscribe("res/t", qos=1)
    sub.disconnect()
    pub = Paho(broker, "p")
    pub.publish("res/t", "while away", qos=1)
    sub = Paho(broker, "resume", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=300))
    assert sub.flags.session_present
    assert sub.expect().payload == b"while away"


def test_clean_start_true_discards_the_session(broker):
    sub = Paho(broker, "fresh", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=300))
    sub.subscribe("fresh/t", qos=1)
    sub.disconnect()
    sub = Paho(broker, "fresh", V5, clean_start=True)
    assert not sub.flags.session_present
    Paho(broker, "p").publish("fresh/t", "x", qos=1)
    sub.expect_none(0.5)


def test_v311_clean_session_false_keeps_the_session(broker):
    sub = Paho(broker, "v3persist", V311, clean_start=False)
    sub.subscribe("v3/t", qos=1)
    sub.disconnect()
    Paho(broker, "p", V311).publish("v3/t", "queued", qos=1)
    sub = Paho(broker, "v3persist", V311, clean_start=False)
    assert sub.flags.session_present
    assert sub.expect().payload == b"queued"


def test_session_expiry_ends_the_session(broker):
    sub = Paho(broker, "expires", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=1))
    sub.subscribe("exp/t", qos=1)
    sub.disconnect()
    broker.wait_for_log(r"session expired client_id=expires", timeout=5)
    sub = Paho(broker, "expires", V5, clean_start=False, properties=props(CONNECT_PROPS, SessionExpiryInterval=1))
    assert not sub.flags.session_present


def test_session_expiry_set_on_disconnect(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("exp-on-disc", clean=False, properties=[(0x11, 1)])
    c.subscribe("x", qos=1)
    c.send(bytes([DISCONNECT << 4, 7, 0x00, 5, 0x11, 0, 0, 1, 0x2C]))  # expiry 300 s
    c.close()
    time.sleep(2.5)
    c = RawClient(broker.host, broker.port)
    assert c.connect("exp-on-disc", clean=False, properties=[(0x11, 300)]).session_present


def test_session_takeover_disconnects_the_first_with_0x8e(broker):
    first = RawClient(broker.host, broker.port)
    first.connect("same-id")
    second = RawClient(broker.host, broker.port)
    assert second.connect("same-id", clean=False).kind == CONNACK
    seen = first.closed()
    assert [p.code for p in seen if p.kind == DISCONNECT] == [0x8E]
    broker.wait_for_log(r"client disconnected client_id=same-id .*session taken over")
