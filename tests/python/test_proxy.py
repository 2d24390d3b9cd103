"""PROXY protocol v1/v2 on a listener (issue 5, in part): the header's address is the
client's everywhere, only trusted balancers may send one, and health checks are quiet."""

import socket
import struct
import time

import pytest

from mqttraw import CONNACK, RawClient, connect_packet
from test_api import call

PROXIED = '[listeners.tcp]\nbind = "127.0.0.1:0"\nproxy_protocol = true\n'


def v1(src="203.0.113.7", sport=40000, family="TCP4"):
    dst = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {src} {dst} {sport} 1883\r\n".encode()


def v2(src="203.0.113.9", sport=40001, command=1, family=0x11, tlvs=b""):
    if family == 0x11:
        body = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", sport, 1883)
    elif family == 0x21:
        body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
                + struct.pack(">HH", sport, 1883))
    else:
        body = b""
    body += tlvs
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, family]) + struct.pack(">H", len(body)) + body


def closed(s):
    """Whether the broker closed the socket (a reset counts: it closed with our bytes unread)."""
    s.settimeout(5)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def connect_through(broker, header, client_id):
    c = RawClient(broker.host, broker.port, version=4)
    c.send(header + connect_packet(client_id, version=4))
    ack = c.recv(5)
    assert ack is not None and ack.kind == CONNACK, ack
    return c, ack


@pytest.mark.parametrize("header,shown", [
    (v1(), "203.0.113.7:40000"),
    (v1("2001:db8::7", 40002, "TCP6"), "[2001:db8::7]:40002"),
    (v2(), "203.0.113.9:40001"),
    (v2("2001:db8::9", 40003, family=0x21), "[2001:db8::9]:40003"),
])
def test_the_header_address_is_the_clients_address(make_broker, header, shown):
    b = make_broker(PROXIED)
    c, ack = connect_through(b, header, "behind")
    assert ack.code == 0
    b.wait_for_log(rf"client connected client_id=behind .*addr={shown.replace('[', '.').replace(']', '.')} ")
    c.close()


def test_unknown_keeps_the_balancers_address(make_broker):
    b = make_broker(PROXIED)
    connect_through(b, b"PROXY UNKNOWN\r\n", "unknown")
    b.wait_for_log(r"client connected client_id=unknown .*addr=127\.0\.0\.1:")


def test_health_checks_are_quiet(make_broker):
    b = make_broker(PROXIED)
    # HAProxy `check`: connect and close.
    socket.create_connection((b.host, b.port)).close()
    # HAProxy `check-send-proxy`: a v2 LOCAL header, then close.
    s = socket.create_connection((b.host, b.port))
    s.sendall(v2(command=0, family=0))
    s.close()
    b.wait_for_log(r"health check from 127\.0\.0\.1:\d+ \(PROXY LOCAL\)")
    b.wait_for_log(r"health check from 127\.0\.0\.1:\d+ \(connect and close\)")
    time.sleep(0.2)
    assert " WARN " not in b.log_text()


@pytest.mark.parametrize("data,why", [
    (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", "no PROXY protocol header"),
    (b"PROXY TCP4 1.2.3 10.0.0.1 1 2\r\n", "malformed PROXY v1 header|is not an IP"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883", "closed in the middle of its PROXY header"),
    (v2()[:20], "closed in the middle of its PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x23\x11\x00\x0c" + bytes(12), "command 3"),
])
def test_a_bad_header_closes_only_that_connection(make_broker, data, why):
    b = make_broker(PROXIED)
    bystander, _ = connect_through(b, v1(), "bystander")
    s = socket.create_connection((b.host, b.port))
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    assert closed(s)
    b.wait_for_log(rf"WARN .*refused connection addr=127\.0\.0\.1:\d+ listener=tcp: .*({why})")
    bystander.send(b"\xc0\x00")  # PINGREQ
    assert bystander.recv().kind == 13


def test_a_header_that_never_finishes_times_out(make_broker):
    b = make_broker(PROXIED + "[limits]\nconnect_timeout = 1\n")
    s = socket.create_connection((b.host, b.port))
    s.sendall(b"PROXY TCP4 203.0.113.7")
    assert closed(s)
    b.wait_for_log(r"refused connection .*no complete PROXY header within 1s")


def test_only_trusted_balancers_may_send_a_header(make_broker):
    b = make_broker(PROXIED + 'proxy_protocol_trusted = ["10.0.0.0/8"]\n')
    s = socket.create_connection((b.host, b.port))
    s.sendall(v1() + connect_packet("forger", version=4))
    assert closed(s)
    b.wait_for_log(r"refused connection addr=127\.0\.0\.1:\d+ listener=tcp: 127\.0\.0\.1 is not in proxy_protocol_trusted")
    assert "client_id=forger" not in b.log_text()


def test_a_header_where_none_is_expected_is_refused(make_broker):
    b = make_broker()
    s = socket.create_connection((b.host, b.port))
    s.sendall(v2() + connect_packet("sneaky", version=4))
    assert closed(s)
    b.wait_for_log(r"refused connection .*a PROXY protocol header, but this listener has proxy_protocol = false")


def test_the_connection_rate_limit_counts_the_real_addresses(make_broker):
    b = make_broker(PROXIED + "[limits]\nmax_connection_rate = 1\n")
    _, first = connect_through(b, v1("203.0.113.1"), "one")
    _, other = connect_through(b, v1("203.0.113.2"), "two")
    _, again = connect_through(b, v1("203.0.113.1", 40009), "three")
    assert (first.code, other.code) == (0, 0)
    assert again.code == 3, "the second connection from 203.0.113.1 within a second"


def test_bad_trusted_ranges_are_a_config_error(tmp_path):
    from conftest import run_tern
    cfg = tmp_path / "tern.toml"
    cfg.write_text('[listeners.tcp]\nbind = "127.0.0.1:0"\nproxy_protocol = true\nproxy_protocol_trusted = ["10.0.0.0/40"]\n')
    rc, err = run_tern(["check-config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "proxy_protocol_trusted" in err and "10.0.0.0/40" in err, err


def ssl_tlv(cn, verified=True):
    sub = bytes([0x22]) + struct.pack(">H", len(cn)) + cn.encode()
    value = bytes([0x03]) + struct.pack(">I", 0 if verified else 1) + sub
    return bytes([0x20]) + struct.pack(">H", len(value)) + value


def test_use_identity_as_username_needs_a_verified_certificate(make_broker, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user device-7\ntopic readwrite d/7/#\n")
    b = make_broker(PROXIED + f'use_identity_as_username = true\n[auth]\nallow_anonymous = false\nacl_file = "{acl}"\n')
    _, ack = connect_through(b, v2(tlvs=ssl_tlv("device-7")), "with-cert")
    assert ack.code == 0
    _, ack = connect_through(b, v2(tlvs=ssl_tlv("device-7", verified=False)), "unverified")
    assert ack.code == 5, "3.1.1 not authorized"
    _, ack = connect_through(b, v1(), "no-cert")
    assert ack.code == 5
    b.wait_for_log(r"no verified client certificate, and this listener takes the user name from one")


def reset_before_a_byte(host, port):
    """A balancer's TCP check that resets: connect, then close with SO_LINGER 0 (RST)."""
    s = socket.create_connection((host, port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_health_checks_that_reset_are_counted_and_logged_at_debug(make_broker, certs):
    """HAProxy and Nginx probe every node every few seconds; a check that resets before
    sending a byte is counted (connections.probes, tern_probe_connections_total) and
    logged at debug level, on a PROXY listener, a TLS one and a plain one alike."""
    b = make_broker(PROXIED + '[listeners.tls]\nbind = "127.0.0.1:0"\n'
                    f'cert = "{certs}/server.crt"\nkey = "{certs}/server.key"\n'
                    '[listeners.plain]\ntype = "tcp"\nbind = "127.0.0.1:0"\n[api]\napp_secret = "x"\n')
    tls_port = int(b.wait_for_log(r"listening name=tls addr=[\d.]+:(\d+)").group(1))
    plain_port = int(b.wait_for_log(r"listening name=plain addr=[\d.]+:(\d+)").group(1))
    for port in (b.port, tls_port, plain_port):
        for _ in range(5):
            reset_before_a_byte(b.host, port)
    metrics = lambda: call(b, "GET", "/api/v4/metrics", auth=("admin", "x"))[1]["data"][0]["metrics"]
    deadline = time.monotonic() + 5
    while metrics()["connections.probes"] < 15:
        assert time.monotonic() < deadline, metrics()
        time.sleep(0.1)
    prom = call(b, "GET", "/metrics", auth=None)[1]
    assert "tern_probe_connections_total 15" in prom, prom
    time.sleep(0.2)
    assert " WARN " not in b.log_text(), b.log_text()
