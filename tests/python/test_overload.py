"""The overload rule: a client that stops reading costs nobody else a message."""

import socket

from mqttraw import PUBLISH, RawClient
from paho_helpers import Paho


def test_stalled_qos1_clean_subscriber_is_disconnected_with_0x97(make_broker):
    broker = make_broker("[limits]\nmax_queued_messages = 50\n")
    stalled = RawClient(broker.host, broker.port, rcvbuf=4096)
    stalled.connect("stalled", properties=[(0x21, 5)])
    stalled.subscribe("load/#", qos=1)
    healthy = Paho(broker, "healthy")
    healthy.subscribe("load/#", qos=1)
    pub = Paho(broker, "pub")
    for i in range(200):
        pub.publish("load/t", b"%d" % i, qos=1)
    received = [healthy.expect().payload for _ in range(200)]
    assert received == [b"%d" % i for i in range(200)], "the healthy subscriber gets every message, in order"
    broker.wait_for_log(r"client disconnected client_id=stalled .*0x97")


def test_stalled_qos0_subscriber_does_not_slow_others(make_broker):
    broker = make_broker("[limits]\nmax_queued_messages = 20\n")
    stalled = RawClient(broker.host, broker.port, rcvbuf=4096)
    stalled.connect("stalled0")
    stalled.subscribe("flood/#", qos=0)
    healthy = Paho(broker, "healthy")
    healthy.subscribe("flood/#", qos=1)
    pub = Paho(broker, "pub")
    payload = b"x" * 8192
    for i in range(600):
        pub.publish("flood/t", payload + b"%d" % i, qos=1)
    for i in range(600):
        assert healthy.expect().payload.endswith(b"%d" % i)
    # The stalled client is still connected; it got what fitted and the rest was dropped.
    stalled.sock.setblocking(True)
    stalled.sock.settimeout(2)
    got = 0
    try:
        while True:
            p = stalled.recv(1)
            if p is None:
                break
            got += p.kind == PUBLISH
    except (TimeoutError, socket.timeout):
        pass
    assert 0 < got < 600
