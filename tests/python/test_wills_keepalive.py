"""Wills (with will delay) and keep-alive."""

import time

from mqttraw import DISCONNECT, RawClient, connect_packet
from paho_helpers import V5, Paho, props, CONNECT_PROPS


def will_client(broker, client_id, delay=None, expiry=0, version=5):
    c = RawClient(broker.host, broker.port, version=version)
    will_props = [(0x18, delay)] if delay is not None else []
    c.connect(client_id, version=version, properties=[(0x11, expiry)] if version == 5 else (),
              will={"topic": f"will/{client_id}", "payload": b"gone", "qos": 1, "properties": will_props})
    return c


def test_will_is_published_when_the_connection_drops(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "dropper", version=4)
    c.close()
    m = sub.expect()
    assert (m.topic, m.payload) == ("will/dropper", b"gone")


def test_will_is_not_published_after_normal_disconnect(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "polite")
    c.send(bytes([DISCONNECT << 4, 0]))
    c.close()
    sub.expect_none(1.0)


def test_disconnect_with_will_message_0x04_publishes_it(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "wants-will")
    c.send(bytes([DISCONNECT << 4, 1, 0x04]))
    c.close()
    assert sub.expect().topic == "will/wants-will"


def test_will_delay_interval_delays_the_will(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "delayed", delay=2, expiry=60)
    start = time.monotonic()
    c.close()
    m = sub.expect(timeout=6)
    assert m.topic == "will/delayed"
    assert time.monotonic() - start >= 1.8


def test_reconnect_within_will_delay_cancels_the_will(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "comes-back", delay=2, expiry=60)
    c.close()
    again = RawClient(broker.host, broker.port)
    again.connect("comes-back", clean=False, properties=[(0x11, 60)])
    sub.expect_none(3.5)


def test_will_is_published_when_the_session_ends_before_the_delay(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    c = will_client(broker, "short-session", delay=30, expiry=1)
    start = time.monotonic()
    c.close()
    assert sub.expect(timeout=5).topic == "will/short-session"
    assert time.monotonic() - start < 4


def test_keep_alive_timeout_closes_a_silent_client(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("silent", keepalive=1)
    start = time.monotonic()
    seen = c.closed(timeout=5)
    elapsed = time.monotonic() - start
    assert [p.code for p in seen if p.kind == DISCONNECT] == [0x8D]
    assert 1.4 <= elapsed < 3.5, elapsed
    broker.wait_for_log(r"client_id=silent .*keep-alive")


def test_pings_keep_a_client_alive(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("pinger", keepalive=1)
    for _ in range(4):
        time.sleep(0.6)
        c.send(bytes([0xC0, 0]))
        assert c.recv().kind == 13  # PINGRESP


def test_server_keep_alive_caps_v5_clients(make_broker):
    broker = make_broker("[limits]\nmax_keepalive = 10\n")
    c = Paho(broker, "ka", V5, keepalive=60)
    assert c.connack_properties.ServerKeepAlive == 10
