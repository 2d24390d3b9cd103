"""MQTT over WebSocket (issue 5): paho-mqtt over ws:// and wss://, the framing rules of
MQTT spec chapter 6 through a raw WebSocket client, bad upgrades and bad frames, and the
PROXY protocol in front of the ws and tls listeners."""

import base64
import os
import socket
import ssl
import struct
import time

import pytest

from conftest import Broker, free_port
from mqttraw import connect_packet, publish_packet, subscribe_packet
from paho_helpers import V311, V5, Paho


def ws_broker(tmp_path, certs=None, extra=""):
    ws, wss = free_port(), free_port()
    d = tmp_path / "tern"
    d.mkdir()
    config = f'[listeners.ws]\nbind = "127.0.0.1:{ws}"\n{extra}'
    if certs:
        config += (f'[listeners.wss]\nbind = "127.0.0.1:{wss}"\ncert = "{certs}/server.crt"\n'
                   f'key = "{certs}/server.key"\n')
    b = Broker(d, config)
    b.ws_port, b.wss_port = ws, wss
    b.wait_for_log(r"listening name=ws ")
    return b


class RawWs:
    """A WebSocket client that sends exactly the frames a test asks for."""

    def __init__(self, port, path="/mqtt", protocol="mqtt", sock=None, preamble=b""):
        self.s = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        if protocol:
            request += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        self.s.sendall(preamble + (request + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.response = head.decode(errors="replace")

    def send_frame(self, payload, opcode=0x2, fin=True):
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = bytes([first, 0x80 | n])
        elif n < 65536:
            head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
        else:
            head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(head + mask + masked)

    def read_frame(self):
        """(opcode, payload), or None when the connection closed."""
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                pos = 2
                if n == 126:
                    n, pos = struct.unpack(">H", self.buf[2:4])[0], 4
                elif n == 127:
                    n, pos = struct.unpack(">Q", self.buf[2:10])[0], 10
                if len(self.buf) >= pos + n:
                    frame = (self.buf[0] & 0x0F, self.buf[pos:pos + n])
                    self.buf = self.buf[pos + n:]
                    return frame
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def read_mqtt(self):
        """The payload of the next binary frame."""
        while True:
            frame = self.read_frame()
            assert frame is not None, "closed"
            if frame[0] == 0x2:
                return frame[1]

    def closed(self):
        try:
            while True:
                frame = self.read_frame()
                if frame is None or frame[0] == 0x8:
                    return True
        except (ConnectionResetError, socket.timeout):
            return False


@pytest.mark.parametrize("protocol", [V5, V311])
def test_paho_over_websocket_with_a_tcp_client(tmp_path, protocol):
    b = ws_broker(tmp_path)
    try:
        sub = Paho(b, "ws-sub", protocol=protocol, transport="websockets", port=b.ws_port)
        assert sub.subscribe("ws/#", 1)
        tcp = Paho(b, "tcp-pub", protocol=protocol)
        tcp.publish("ws/retained", b"kept", qos=1, retain=True)
        for i in range(50):
            tcp.publish("ws/t", f"m{i}".encode() * 100, qos=1)
        got = [sub.expect() for _ in range(51)]
        assert got[0].payload == b"kept"
        assert [m.payload for m in got[1:]] == [f"m{i}".encode() * 100 for i in range(50)]
        # ... and back: a publish over WebSocket reaches a retained-message subscriber.
        sub.publish("ws/back", b"from the browser side", qos=1)
        late = Paho(b, "late", protocol=protocol, transport="websockets", port=b.ws_port)
        late.subscribe("ws/retained", 0)
        assert late.expect().payload == b"kept"
        b.wait_for_log(r"client connected .*client_id=ws-sub .*listener=ws|client connected .*listener=ws")
        for c in (sub, tcp, late):
            c.disconnect()
    finally:
        b.stop()


def test_paho_over_secure_websocket(tmp_path, certs):
    b = ws_broker(tmp_path, certs)
    try:
        b.wait_for_log(r"listening name=wss ")
        sub = Paho(b, "wss-sub", transport="websockets", port=b.wss_port, ca=certs / "ca.pem")
        sub.subscribe("wss/t", 2)
        pub = Paho(b, "wss-pub", transport="websockets", port=b.wss_port, ca=certs / "ca.pem")
        pub.publish("wss/t", b"secure", qos=2)
        assert sub.expect().payload == b"secure"
        b.wait_for_log(r"listener=wss")
        sub.disconnect()
        pub.disconnect()
    finally:
        b.stop()


def test_packets_split_across_and_packed_into_frames_ping_and_close(tmp_path):
    b = ws_broker(tmp_path)
    try:
        ws = RawWs(b.ws_port, protocol="mqttv3.1, mqtt")
        assert " 101 " in ws.response.splitlines()[0], ws.response
        assert "sec-websocket-protocol: mqttv3.1" in ws.response.lower(), ws.response
        connect = connect_packet("raw-ws", version=4)
        # CONNECT split over three frames (one of them a continuation of a fragmented
        # message), then SUBSCRIBE and a PUBLISH packed into one frame.
        ws.send_frame(connect[:3])
        ws.send_frame(connect[3:7], fin=False)
        ws.send_frame(connect[7:], opcode=0x0)
        assert ws.read_mqtt()[:4] == bytes([0x20, 2, 0, 0])
        packed = subscribe_packet([("raw/t", 0)], version=4) + publish_packet("raw/t", b"packed", version=4)
        ws.send_frame(packed)
        suback = bytes([0x90, 3, 0, 1, 0])
        expected = suback + publish_packet("raw/t", b"packed", version=4)
        got = b""
        while len(got) < len(expected):
            got += ws.read_mqtt()
        assert got == expected
        ws.send_frame(b"are you there", opcode=0x9)
        assert ws.read_frame() == (0xA, b"are you there")
        ws.send_frame(struct.pack(">H", 1000), opcode=0x8)
        assert ws.read_frame()[0] == 0x8, "the close handshake is answered"
        b.wait_for_log(r"client disconnected client_id=raw-ws ")
    finally:
        b.stop()


def test_bad_upgrades_and_bad_frames_close_only_that_connection(tmp_path):
    b = ws_broker(tmp_path, extra="[limits]\nmax_packet_size = 4096\n")
    try:
        bystander = Paho(b, "bystander", transport="websockets", port=b.ws_port)
        bystander.subscribe("still/#", 0)

        start = len(b.lines)
        s = socket.create_connection(("127.0.0.1", b.ws_port), timeout=5)
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not s.recv(4096).startswith(b"HTTP/1.1 101")
        b.wait_for_log(r"WARN .*refused connection addr=127\.0\.0\.1:\d+ listener=ws: WebSocket upgrade failed", start=start)

        start = len(b.lines)
        wrong = RawWs(b.ws_port, protocol="chat")
        assert wrong.response.startswith("HTTP/1.1 400"), wrong.response
        b.wait_for_log(r"listener=ws: WebSocket upgrade failed.*subprotocol", start=start)

        start = len(b.lines)
        elsewhere = RawWs(b.ws_port, path="/other")
        assert elsewhere.response.startswith("HTTP/1.1 404"), elsewhere.response
        b.wait_for_log(r"listener=ws: WebSocket upgrade failed", start=start)

        start = len(b.lines)
        text = RawWs(b.ws_port)
        text.send_frame(connect_packet("texter", version=4), opcode=0x1)
        assert text.closed() is not None
        b.wait_for_log(r"text frame", start=start)

        start = len(b.lines)
        big = RawWs(b.ws_port)
        big.send_frame(connect_packet("big", version=4))
        assert big.read_mqtt()[:1] == bytes([0x20])
        try:
            big.send_frame(publish_packet("still/x", b"x" * 10000, version=4))
        except (BrokenPipeError, ConnectionResetError):
            pass
        big.closed()
        b.wait_for_log(r"client_id=big .*too large", start=start)

        bystander.publish("still/here", b"yes")
        assert bystander.expect().payload == b"yes"
        bystander.disconnect()
    finally:
        b.stop()


def test_proxy_protocol_before_websocket_and_before_tls(tmp_path, certs):
    tls = free_port()
    extra = (f'proxy_protocol = true\n[listeners.tls]\nbind = "127.0.0.1:{tls}"\ncert = "{certs}/server.crt"\n'
             f'key = "{certs}/server.key"\nproxy_protocol = true\n')
    b = ws_broker(tmp_path, extra=extra)
    try:
        ws = RawWs(b.ws_port, preamble=b"PROXY TCP4 198.51.100.7 127.0.0.1 50123 8083\r\n")
        assert " 101 " in ws.response.splitlines()[0], ws.response
        ws.send_frame(connect_packet("behind-nginx", version=4))
        assert ws.read_mqtt()[:4] == bytes([0x20, 2, 0, 0])
        b.wait_for_log(r"client connected .*198\.51\.100\.7:50123.*behind-nginx|behind-nginx.*198\.51\.100\.7:50123")

        # A v2 header, then Tern's own TLS handshake on the same connection.
        v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12)
              + socket.inet_aton("203.0.113.9") + socket.inet_aton("127.0.0.1") + struct.pack(">HH", 40000, 8883))
        raw = socket.create_connection(("127.0.0.1", tls), timeout=5)
        raw.sendall(v2)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        s.sendall(connect_packet("proxied-tls", version=4))
        assert s.recv(4)[:4] == bytes([0x20, 2, 0, 0])
        b.wait_for_log(r"client connected .*203\.0\.113\.9:40000.*proxied-tls|proxied-tls.*203\.0\.113\.9:40000")
        s.close()

        # Without the header the ws listener refuses.
        start = len(b.lines)
        bare = RawWs(b.ws_port)
        assert not bare.response.startswith("HTTP/1.1 101")
        b.wait_for_log(r"listener=ws: .*PROXY", start=start)
    finally:
        b.stop()


def test_slow_upgrade_times_out(tmp_path):
    b = ws_broker(tmp_path, extra="[limits]\nconnect_timeout = 1\n")
    try:
        start = len(b.lines)
        s = socket.create_connection(("127.0.0.1", b.ws_port), timeout=5)
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1.5)
        assert s.recv(100) == b""
        b.wait_for_log(r"listener=ws: no WebSocket upgrade within 1s", start=start)
    finally:
        b.stop()
