"""Every kind of bad input closes only the offending connection, with the right
reason code and a log line, and costs nobody else a message."""

import socket
import time

import pytest

from mqttraw import CONNACK, DISCONNECT, RawClient, connect_packet, s
from paho_helpers import V5, Paho


@pytest.fixture
def bystander(broker):
    """A subscriber that must keep receiving while others misbehave."""
    sub = Paho(broker, "bystander")
    sub.subscribe("alive/#", qos=1)
    yield sub
    Paho(broker, "checker").publish("alive/check", "still here", qos=1)
    assert sub.expect().payload == b"still here"


def disconnect_codes(client):
    return [p.code for p in client.closed() if p.kind == DISCONNECT]


def connected(broker, version=5, name="bad"):
    c = RawClient(broker.host, broker.port, version=version)
    c.connect(name, version=version)
    return c


def test_malformed_remaining_length(broker, bystander):
    c = connected(broker)
    c.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    assert disconnect_codes(c) == [0x81]
    broker.wait_for_log(r"client_id=bad .*remaining length is longer than 4 bytes")


def test_first_packet_not_connect(broker, bystander):
    c = RawClient(broker.host, broker.port)
    c.send(bytes([0xC0, 0x00]))
    assert c.closed() == []
    broker.wait_for_log(r"refused connection .*not CONNECT")


def test_second_connect_is_a_protocol_error(broker, bystander):
    c = connected(broker)
    c.send(connect_packet("again"))
    assert disconnect_codes(c) == [0x82]
    broker.wait_for_log(r"client_id=bad .*second CONNECT")


def test_second_connect_v311_closes_without_disconnect(broker, bystander):
    c = connected(broker, version=4)
    c.send(connect_packet("again", version=4))
    assert c.closed() == []


@pytest.mark.parametrize("name,level,version,expected", [
    ("MQTT", 6, 5, 0x84),
    ("MQTT", 3, 4, 0x01),
    ("MQIsdp", 4, 4, 0x01),
    ("HTTP", 4, 4, 0x01),
])
def test_unknown_protocol_name_or_level(broker, bystander, name, level, version, expected):
    c = RawClient(broker.host, broker.port, version=version)
    c.send(connect_packet("x", version=4, name=name, level=level))
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == expected
    assert c.recv() is None
    broker.wait_for_log(r"refused connection .*unsupported protocol")


def test_reserved_flag_bits_set(broker, bystander):
    c = connected(broker)
    c.send(bytes([0xC1, 0x00]))  # PINGREQ with a flag bit
    assert disconnect_codes(c) == [0x81]
    broker.wait_for_log(r"client_id=bad .*reserved flags")


def test_reserved_connect_flag(broker, bystander):
    c = RawClient(broker.host, broker.port)
    body = s("MQTT") + bytes([5, 0x03, 0, 60, 0]) + s("x")
    c.send(bytes([0x10, len(body)]) + body)
    ack = c.recv()
    assert ack.kind == CONNACK and ack.code == 0x81


def test_qos_3(broker, bystander):
    c = connected(broker)
    c.send(bytes([0x36, 0x05, 0x00, 0x01, ord("a"), 0x00, 0x01]))
    assert disconnect_codes(c) == [0x81]


def test_wildcards_in_publish_topic(broker, bystander):
    c = connected(broker)
    c.publish("alive/#", b"x")
    assert disconnect_codes(c) == [0x90]
    broker.wait_for_log(r"client_id=bad .*wildcard")


def test_invalid_utf8_in_topic(broker, bystander):
    c = connected(broker)
    c.send(bytes([0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00]))
    assert disconnect_codes(c) == [0x81]
    broker.wait_for_log(r"client_id=bad .*not valid UTF-8")


def test_null_character_in_topic(broker, bystander):
    c = connected(broker)
    c.send(bytes([0x30, 0x05, 0x00, 0x02, ord("a"), 0x00, 0x00]))
    assert disconnect_codes(c) == [0x81]
    broker.wait_for_log(r"client_id=bad .*U\+0000")


def test_packet_bigger_than_the_maximum(make_broker):
    broker = make_broker("[limits]\nmax_packet_size = 512\n")
    c = connected(broker, version=4)
    c.publish("t", b"x" * 1000)
    assert c.closed() == []
    broker.wait_for_log(r"client_id=bad .*exceeds the maximum packet size of 512")


def test_client_that_never_sends_connect_is_closed(make_broker):
    broker = make_broker("[limits]\nconnect_timeout = 1\n")
    sock = socket.create_connection((broker.host, broker.port))
    sock.settimeout(5)
    start = time.monotonic()
    assert sock.recv(10) == b""
    assert time.monotonic() - start < 4
    broker.wait_for_log(r"no CONNECT within 1s")


def test_half_connect_then_silence_is_closed(make_broker):
    broker = make_broker("[limits]\nconnect_timeout = 1\n")
    sock = socket.create_connection((broker.host, broker.port))
    sock.sendall(connect_packet("slowloris")[:5])
    sock.settimeout(5)
    assert sock.recv(10) == b""


def test_client_packet_types_only_sent_by_servers(broker, bystander):
    c = connected(broker)
    c.send(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK from a client
    assert disconnect_codes(c) == [0x82]


def test_garbage_bytes_do_not_disturb_others(broker, bystander):
    for junk in [b"\x00" * 10, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256))]:
        sock = socket.create_connection((broker.host, broker.port))
        sock.sendall(junk)
        sock.settimeout(5)
        try:
            while sock.recv(100):
                pass
        except ConnectionResetError:
            pass
        sock.close()
