"""Deviations from the MQTT 3.1, 3.1.1 and 5.0 texts that third-party conformance tests
found, each pinned through the binary with the exact bytes where they matter."""

import os
import signal
import socket
import struct
import time

import pytest

from mqttraw import (CONNACK, DISCONNECT, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL,
                     SUBACK, RawClient, ack_packet, connect_packet, packet, publish_packet, s,
                     subscribe_packet)
from paho_helpers import Paho


def raw_connack(client, client_id, **kw):
    """Sends CONNECT and returns the CONNACK's bytes exactly as they arrived."""
    client.send(connect_packet(client_id, **kw))
    ack = client.recv()
    assert ack is not None and ack.kind == CONNACK, ack
    return bytes([CONNACK << 4, len(ack.body)]) + ack.body


# 1. A persistent session never inherits a clean session's state.

def test_v311_persistent_connect_does_not_resume_a_live_clean_session(broker):
    a = RawClient(broker.host, broker.port, version=4)
    a.connect("tk", version=4, clean=True)
    a.subscribe("tk/t", qos=1)
    b = RawClient(broker.host, broker.port, version=4)
    assert raw_connack(b, "tk", version=4, clean=False) == bytes([0x20, 0x02, 0x00, 0x00])
    assert a.closed() == [], "3.1.1: the old connection closes without DISCONNECT"
    Paho(broker, "pub").publish("tk/t", "after", qos=1)
    b.expect_nothing(1.0)


def test_v5_persistent_connect_does_not_resume_a_session_with_expiry_0(broker):
    a = RawClient(broker.host, broker.port)
    a.connect("tk5", clean=True)
    a.subscribe("tk/t", qos=1)
    b = RawClient(broker.host, broker.port)
    ack = b.connect("tk5", clean=False, properties=[(0x11, 60)])
    assert not ack.session_present
    assert [p.code for p in a.closed() if p.kind == DISCONNECT] == [0x8E]
    Paho(broker, "pub").publish("tk/t", "after", qos=1)
    b.expect_nothing(1.0)


def test_a_clean_session_ends_before_a_new_owner_can_see_it(broker):
    """A sends DISCONNECT and closes while the broker is stopped, B connects at once: in
    whichever order the broker reads them, B never finds A's session."""
    for attempt in range(10):
        a = RawClient(broker.host, broker.port, version=4)
        a.connect("race", version=4, clean=True)
        a.subscribe("race/t", qos=1)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            a.send(bytes([0xE0, 0x00]))
            a.close()
            b = RawClient(broker.host, broker.port, version=4)
            b.send(connect_packet("race", version=4, clean=False))
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        ack = b.recv()
        assert ack.kind == CONNACK and not ack.session_present, f"attempt {attempt}"
        b.close()


# 2. Clients do not publish into $SYS or $share.

def test_sys_topics_cannot_be_forged(broker):
    watcher = RawClient(broker.host, broker.port)
    watcher.connect("watcher")
    watcher.subscribe("$SYS/broker/version", qos=1)
    real = watcher.recv_kind(PUBLISH, timeout=10).payload
    assert real != b"FORGED"
    v5 = RawClient(broker.host, broker.port)
    v5.connect("forger5")
    v5.publish("$SYS/broker/version", b"FORGED", qos=0, retain=True)
    v5.publish("$SYS/broker/version", b"FORGED", qos=1, retain=True)
    assert v5.recv_kind(PUBACK).code == 0x87
    v5.publish("$SYS/broker/version", b"FORGED", qos=2, packet_id=2)
    assert v5.recv_kind(PUBREC).code == 0x87
    v5.publish("$share/g/t", b"FORGED", qos=1, packet_id=3)
    assert v5.recv_kind(PUBACK).code == 0x87
    v3 = RawClient(broker.host, broker.port, version=4)
    v3.connect("forger3", version=4)
    v3.publish("$SYS/broker/version", b"FORGED", qos=0, retain=True)
    v3.publish("$SYS/broker/version", b"FORGED", qos=1, retain=True)
    ack = v3.recv_kind(PUBACK)
    assert ack.code == 0, "3.x is acknowledged and the message discarded"
    v3.publish("$SYS/broker/version", b"FORGED", qos=2, packet_id=2)
    assert v3.recv_kind(PUBREC) is not None
    v3.send(ack_packet(PUBREL, 2, version=4))
    assert v3.recv_kind(PUBCOMP) is not None
    watcher.expect_nothing(1.0)
    late = RawClient(broker.host, broker.port)
    late.connect("late")
    late.subscribe("$SYS/broker/version")
    assert late.recv_kind(PUBLISH).payload == real, "the forgery was not retained"
    broker.wait_for_log(r"client_id=forger5 .*may not publish to \"\$SYS/broker/version\"")


def test_a_bridge_may_publish_its_connection_state(broker):
    watcher = RawClient(broker.host, broker.port)
    watcher.connect("watcher")
    watcher.subscribe("$SYS/broker/connection/+/state", qos=1)
    bridge = RawClient(broker.host, broker.port, version=4)
    bridge.connect("edge1", version=4, level=0x84)
    bridge.publish("$SYS/broker/connection/edge1/state", b"1", qos=1, retain=True)
    assert bridge.recv_kind(PUBACK).code == 0
    got = watcher.recv_kind(PUBLISH)
    assert (got.topic, got.payload) == ("$SYS/broker/connection/edge1/state", b"1")
    # Only that one topic of the tree: its neighbour is the broker's.
    v5 = RawClient(broker.host, broker.port)
    v5.connect("edge2")
    v5.publish("$SYS/broker/connection/edge2/other", b"x", qos=1)
    assert v5.recv_kind(PUBACK).code == 0x87


def test_a_pattern_filled_in_with_a_dollar_client_id_grants_nothing_reserved(make_broker, tmp_path):
    """`pattern readwrite %c/#` is common; a client that names itself `$SYS` fills it to
    `$SYS/#`, which must not open the broker's own topics to it."""
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite %c/#\n")
    broker = make_broker(f'[auth]\nacl_file = "{acl}"\n')
    c = RawClient(broker.host, broker.port)
    c.connect("$SYS")
    c.publish("$SYS/broker/version", b"FORGED", qos=1, retain=True)
    assert c.recv_kind(PUBACK).code == 0x87


def test_an_acl_rule_starting_with_sys_grants_it(make_broker, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\ntopic readwrite $SYS/site/#\n")
    broker = make_broker(f'[auth]\nacl_file = "{acl}"\n')
    c = RawClient(broker.host, broker.port)
    c.connect("operator")
    c.subscribe("$SYS/site/#", qos=1)
    c.publish("$SYS/site/note", b"hello", qos=1, packet_id=2)
    assert c.recv_kind(PUBACK).code == 0
    assert c.recv_kind(PUBLISH).payload == b"hello"
    c.publish("$SYS/broker/version", b"FORGED", qos=1, packet_id=3)
    assert c.recv_kind(PUBACK).code == 0x87, "a # rule never matches a $ topic"


# 3. A malformed 3.1/3.1.1 CONNECT is closed without a CONNACK.

def connect_body(level, flags, *fields):
    """A CONNECT of protocol `level` with these flags and payload fields; at level 5 with
    empty property lists before the payload and before a will (flag 0x04)."""
    name = "MQIsdp" if level == 3 else "MQTT"
    v5 = b"\x00" if level == 5 else b""
    payload = list(fields)
    if flags & 0x04 and len(payload) > 1:
        payload[1] = v5 + payload[1]
    body = s(name) + bytes([level, flags]) + struct.pack(">H", 10) + v5 + b"".join(payload)
    return packet(0x10, body)


MALFORMED_CONNECTS = {
    "reserved flag": (0x03, s("x")),
    "client id with U+0000": (0x02, s("a\x00b")),
    "client id not UTF-8": (0x02, s(b"\xc3\x28")),
    "user name with U+0000": (0x82, s("x"), s("u\x00")),
    "user name not UTF-8": (0x82, s("x"), s(b"\xff")),
    "will topic not UTF-8": (0x06, s("x"), s(b"\xff"), s("p")),
    "user name without its flag": (0x02, s("x"), s("user")),
    "password without user name": (0x42, s("x"), s("pw")),
    "empty will topic": (0x06, s("x"), s(""), s("p")),
    "truncated will payload": (0x06, s("x"), s("w"), b"\x00\x0ap"),
}


@pytest.mark.parametrize("level", [3, 4])
@pytest.mark.parametrize("case", sorted(MALFORMED_CONNECTS))
def test_a_malformed_v3_connect_gets_no_connack(broker, case, level):
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_body(level, *MALFORMED_CONNECTS[case]))
    assert c.closed() == [], f"{case}: closed without any packet"


def test_v3_refusals_that_keep_their_connack(broker):
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_body(2, 0x02, s("x")))
    assert c.recv().code == 0x01, "unsupported protocol level"
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_body(4, 0x00, s("")))
    assert c.recv().code == 0x02, "empty client id without clean session"


@pytest.mark.parametrize("case,code", [("reserved flag", 0x81), ("client id not UTF-8", 0x81),
                                       ("empty will topic", 0x90), ("user name without its flag", 0x81)])
def test_a_malformed_v5_connect_is_answered(broker, case, code):
    c = RawClient(broker.host, broker.port)
    c.send(connect_body(5, *MALFORMED_CONNECTS[case]))
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == code
    assert c.recv() is None


# 4. MQTT 3.1 has no session-present flag.

def test_mqtt_3_1_connack_has_no_session_present_flag(broker):
    first = RawClient(broker.host, broker.port, version=3)
    first.connect("k31", version=3, clean=False)
    first.subscribe("k31/t", qos=1)
    first.close()
    Paho(broker, "pub31").publish("k31/t", "kept", qos=1)
    again = RawClient(broker.host, broker.port, version=3)
    assert raw_connack(again, "k31", version=3, clean=False) == bytes([0x20, 0x02, 0x00, 0x00])
    assert again.recv_kind(PUBLISH).payload == b"kept", "the session was resumed all the same"
    v311 = RawClient(broker.host, broker.port, version=4)
    v311.connect("k311", version=4, clean=False)
    v311.close()
    again = RawClient(broker.host, broker.port, version=4)
    assert raw_connack(again, "k311", version=4, clean=False) == bytes([0x20, 0x02, 0x01, 0x00])


# 5. Will delay and a reconnect.

def will_client(broker, client_id, clean=True):
    c = RawClient(broker.host, broker.port)
    c.connect(client_id, clean=clean, properties=[(0x11, 30)],
              will={"topic": f"will/{client_id}", "payload": "gone", "qos": 1,
                    "properties": [(0x18, 3)]})
    return c


def test_reconnect_with_clean_start_0_within_the_will_delay_drops_the_will(broker):
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    will_client(broker, "back0").close()
    again = RawClient(broker.host, broker.port)
    assert again.connect("back0", clean=False, properties=[(0x11, 30)]).session_present
    sub.expect_none(4.0)


def test_reconnect_with_clean_start_1_within_the_will_delay_publishes_it_at_once(broker):
    """The new connection ends the old session, and a session's end publishes its will
    (MQTT 5.0 section 3.1.4, non-normative comment); Mosquitto 2.0 drops it."""
    sub = Paho(broker, "w-sub")
    sub.subscribe("will/#", qos=1)
    will_client(broker, "back1").close()
    time.sleep(0.3)
    start = time.monotonic()
    again = RawClient(broker.host, broker.port)
    assert not again.connect("back1", clean=True, properties=[(0x11, 30)]).session_present
    assert sub.expect(timeout=2).topic == "will/back1"
    assert time.monotonic() - start < 1.5, "at once, not after the 3 s delay"


# 6. An acknowledgement of the wrong kind closes the connection.

def delivered(broker, sub, qos, client_id):
    Paho(broker, f"pub-{client_id}").publish("ack/t", "m", qos=qos)
    p = sub.recv_kind(PUBLISH)
    assert p.qos == qos
    return p.packet_id


def subscriber(broker, client_id, version, clean):
    c = RawClient(broker.host, broker.port, version=version)
    expiry = [(0x11, 300)] if version == 5 and not clean else []
    c.connect(client_id, version=version, clean=clean, properties=expiry)
    c.subscribe("ack/t", qos=2)
    return c


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos,steps,wrong", [
    (1, [], PUBCOMP),
    (1, [], PUBREC),
    (2, [], PUBACK),
    (2, [], PUBCOMP),
    (2, [PUBREC], PUBACK),
])
def test_an_acknowledgement_of_the_wrong_kind_closes_the_connection(broker, version, qos, steps, wrong):
    name = f"wrong-{version}-{qos}-{len(steps)}-{wrong}"
    sub = subscriber(broker, name, version, clean=False)
    pid = delivered(broker, sub, qos, name)
    for step in steps:
        sub.send(ack_packet(step, pid, version=version))
        assert sub.recv_kind(PUBREL).packet_id == pid
    sub.send(ack_packet(wrong, pid, version=version))
    seen = sub.closed()
    if version == 5:
        assert [(p.kind, p.code) for p in seen] == [(DISCONNECT, 0x82)]
    else:
        assert seen == []
    broker.wait_for_log(rf"client_id={name} .*for packet id {pid}, which awaits")
    # The flight was left as it was: the persistent session sends it again.
    again = RawClient(broker.host, broker.port, version=version)
    props = [(0x11, 300)] if version == 5 else []
    assert again.connect(name, version=version, clean=False, properties=props).session_present
    resent = again.recv()
    if steps:
        assert (resent.kind, resent.packet_id) == (PUBREL, pid)
    else:
        assert (resent.kind, resent.packet_id, resent.dup) == (PUBLISH, pid, True)


def test_an_acknowledgement_for_an_id_not_in_flight_is_harmless(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("harmless")
    c.send(ack_packet(PUBACK, 77))
    c.send(ack_packet(PUBCOMP, 78))
    c.send(ack_packet(PUBREC, 79))
    rel = c.recv_kind(PUBREL)
    assert (rel.packet_id, rel.code) == (79, 0x92)
    c.send(bytes([0xC0, 0x00]))
    assert c.recv_kind(PINGRESP) is not None


# 7. Never a packet larger than the client's Maximum Packet Size.

def test_a_connack_that_does_not_fit_is_not_sent(broker):
    c = RawClient(broker.host, broker.port)
    c.send(connect_packet("tiny", properties=[(0x27, 2)]))
    assert c.closed() == []
    broker.wait_for_log(r"CONNACK of 16 bytes is larger than the client's Maximum Packet Size of 2")


def test_a_refusal_leaves_its_reason_string_out_to_fit(broker):
    c = RawClient(broker.host, broker.port)
    c.send(connect_packet("auth", properties=[(0x27, 8), (0x15, "SCRAM-SHA-1")]))
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == 0x8C
    assert 0x1F not in ack.props and len(ack.body) + 2 <= 8
    wide = RawClient(broker.host, broker.port)
    wide.send(connect_packet("auth", properties=[(0x15, "SCRAM-SHA-1")]))
    assert 0x1F in wide.recv().props


def test_a_suback_that_does_not_fit_closes_with_0x95(broker):
    c = RawClient(broker.host, broker.port)
    ack = c.connect("narrow", properties=[(0x27, 16)])
    assert len(ack.body) + 2 <= 16
    c.send(subscribe_packet([(f"f/{i}", 0) for i in range(20)]))
    assert [(p.kind, p.code) for p in c.closed()] == [(DISCONNECT, 0x95)]
    broker.wait_for_log(r"client_id=narrow .*the SUBACK it asks for would be larger than the client.s Maximum Packet Size of 16")


# 8. A payload marked UTF-8 that is not is refused, not disconnected.

def test_a_payload_marked_utf8_that_is_not_gets_0x99(broker):
    sub = RawClient(broker.host, broker.port)
    sub.connect("fmt-sub")
    sub.subscribe("fmt/#", qos=2)
    c = RawClient(broker.host, broker.port)
    c.connect("fmt", clean=False, properties=[(0x11, 60)])
    marked = [(0x01, 1)]
    c.publish("fmt/a", b"\xff\xfe", qos=0, properties=marked)
    c.publish("fmt/a", b"\xff\xfe", qos=1, packet_id=1, properties=marked)
    assert c.recv_kind(PUBACK).code == 0x99
    c.publish("fmt/a", b"\xff\xfe", qos=2, packet_id=2, properties=marked)
    assert c.recv_kind(PUBREC).code == 0x99
    c.publish("fmt/a", "ok ü", qos=1, packet_id=3, properties=marked)
    assert c.recv_kind(PUBACK).code == 0
    got = sub.recv_kind(PUBLISH)
    assert got.payload == "ok ü".encode()
    sub.expect_nothing(0.5)
    c.send(publish_packet("fmt/a", b"x", qos=1, packet_id=4, properties=[(0x01, 2)]))
    assert [(p.kind, p.code) for p in c.closed()] == [(DISCONNECT, 0x82)]
