"""The overload rule: a client that stops reading costs nobody else a message."""

import socket
import time

from mqttraw import PUBACK, PUBLISH, RawClient, ack_packet, publish_packet
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


def test_slow_but_alive_subscriber_gets_every_message_through_back_pressure(make_broker):
    # The queue holds 20; the publisher sends 300 at once; the subscriber takes one at a
    # time (receive maximum 1) and acknowledges every 2 ms. Instead of overflowing the
    # subscriber's queue (0x97), Tern holds the publisher back until it drains.
    broker = make_broker("[limits]\nmax_queued_messages = 20\nstall_timeout_ms = 5000\n")
    slow = RawClient(broker.host, broker.port)
    slow.connect("slowpoke", properties=[(0x21, 1)])
    slow.subscribe("bp/t", qos=1)
    pub = RawClient(broker.host, broker.port)
    pub.connect("eager")
    pub.send(b"".join(publish_packet("bp/t", b"%d" % i, qos=1, packet_id=i + 1) for i in range(300)))
    got = []
    while len(got) < 300:
        p = slow.recv_kind(PUBLISH, timeout=10)
        assert p is not None, f"disconnected after {len(got)} messages"
        got.append(p.payload)
        time.sleep(0.002)
        slow.send(ack_packet(PUBACK, p.packet_id))
    assert got == [b"%d" % i for i in range(300)]
    acks = [p for p in (pub.recv(5) for _ in range(300)) if p.kind == PUBACK]
    assert len(acks) == 300
    assert "0x97" not in broker.log_text()
