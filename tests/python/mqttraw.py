"""A deliberately minimal MQTT client over a raw socket, for tests that must control
every byte (malformed packets, withheld acknowledgements, exact reason codes)."""

import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15


def vbi(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def packet(first, body):
    return bytes([first]) + vbi(len(body)) + body


# Property encoders: id -> kind.
PROP_KINDS = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "vbi", 0x11: "u32",
    0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte", 0x18: "u32", 0x19: "byte",
    0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16", 0x22: "u16", 0x23: "u16", 0x24: "byte",
    0x25: "byte", 0x26: "pair", 0x27: "u32", 0x28: "byte", 0x29: "byte", 0x2A: "byte",
}


def props(items=()):
    """Encodes [(id, value), ...] as a v5 property block with its length."""
    body = bytearray()
    for pid, value in items:
        body += vbi(pid)
        kind = PROP_KINDS[pid]
        if kind == "byte":
            body.append(value)
        elif kind == "u16":
            body += struct.pack(">H", value)
        elif kind == "u32":
            body += struct.pack(">I", value)
        elif kind == "vbi":
            body += vbi(value)
        elif kind in ("str", "bin"):
            body += s(value)
        elif kind == "pair":
            body += s(value[0]) + s(value[1])
    return vbi(len(body)) + bytes(body)


def parse_props(data, pos):
    length, pos = read_vbi(data, pos)
    end = pos + length
    out = {}
    while pos < end:
        pid, pos = read_vbi(data, pos)
        kind = PROP_KINDS[pid]
        if kind == "byte":
            value, pos = data[pos], pos + 1
        elif kind == "u16":
            value, pos = struct.unpack_from(">H", data, pos)[0], pos + 2
        elif kind == "u32":
            value, pos = struct.unpack_from(">I", data, pos)[0], pos + 4
        elif kind == "vbi":
            value, pos = read_vbi(data, pos)
        elif kind in ("str", "bin"):
            n = struct.unpack_from(">H", data, pos)[0]
            value, pos = data[pos + 2:pos + 2 + n], pos + 2 + n
            if kind == "str":
                value = value.decode()
        else:
            n = struct.unpack_from(">H", data, pos)[0]
            k = data[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            n = struct.unpack_from(">H", data, pos)[0]
            v = data[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            value = (k, v)
        if pid in (0x26, 0x0B):
            out.setdefault(pid, []).append(value)
        else:
            out[pid] = value
    return out, end


def read_vbi(data, pos):
    n, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def connect_packet(client_id="", version=5, clean=True, keepalive=60, properties=(), will=None,
                   username=None, password=None, level=None, name=None):
    name = name or ("MQIsdp" if version == 3 else "MQTT")
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = s(name) + bytes([level if level is not None else version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += props(properties)
    body += s(client_id)
    if will:
        if version == 5:
            body += props(will.get("properties", ()))
        body += s(will["topic"]) + s(will["payload"])
    if username is not None:
        body += s(username)
    if password is not None:
        body += s(password)
    return packet(CONNECT << 4, body)


def publish_packet(topic, payload=b"", qos=0, packet_id=1, retain=False, dup=False, version=5, properties=()):
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = s(topic)
    if qos:
        body += struct.pack(">H", packet_id)
    if version == 5:
        body += props(properties)
    return packet(first, body + (payload.encode() if isinstance(payload, str) else payload))


def subscribe_packet(filters, packet_id=1, version=5, properties=()):
    """filters: [(filter, options_byte)]"""
    body = struct.pack(">H", packet_id)
    if version == 5:
        body += props(properties)
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return packet((SUBSCRIBE << 4) | 2, body)


def ack_packet(kind, packet_id, version=5, code=None):
    first = (kind << 4) | (2 if kind == PUBREL else 0)
    body = struct.pack(">H", packet_id)
    if version == 5 and code is not None:
        body += bytes([code])
    return packet(first, body)


class Packet:
    def __init__(self, kind, flags, body, version):
        self.kind, self.flags, self.body = kind, flags, body
        self.props = {}
        self.code = None
        if kind == CONNACK:
            self.session_present = bool(body[0] & 1)
            self.code = body[1]
            if version == 5 and len(body) > 2:
                self.props, _ = parse_props(body, 2)
        elif kind == PUBLISH:
            self.qos = (flags >> 1) & 3
            self.dup = bool(flags & 8)
            self.retain = bool(flags & 1)
            n = struct.unpack_from(">H", body, 0)[0]
            self.topic = body[2:2 + n].decode()
            pos = 2 + n
            self.packet_id = None
            if self.qos:
                self.packet_id = struct.unpack_from(">H", body, pos)[0]
                pos += 2
            if version == 5:
                self.props, pos = parse_props(body, pos)
            self.payload = body[pos:]
        elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK):
            self.packet_id = struct.unpack_from(">H", body, 0)[0]
            if kind in (SUBACK, UNSUBACK):
                pos = 2
                if version == 5:
                    self.props, pos = parse_props(body, pos)
                self.codes = list(body[pos:])
            elif len(body) > 2:
                self.code = body[2]
            else:
                self.code = 0
        elif kind == DISCONNECT:
            self.code = body[0] if body else 0
            if len(body) > 1:
                self.props, _ = parse_props(body, 1)

    def __repr__(self):
        return f"Packet(kind={self.kind}, code={self.code}, body={self.body[:40]!r})"


class RawClient:
    def __init__(self, host, port, version=5, rcvbuf=None):
        self.version = version
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def connect(self, client_id="raw", **kw):
        kw.setdefault("version", self.version)
        self.send(connect_packet(client_id, **kw))
        ack = self.recv(5)
        assert ack.kind == CONNACK, ack
        return ack

    def recv(self, timeout=5.0):
        """The next packet, or None if the connection closed; raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            p = self._parse()
            if p:
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no packet")
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def read_bytes(self, n, timeout=30.0):
        """Reads and discards `n` bytes, what is buffered included; how many arrived
        before the timeout or the close."""
        got, self.buf = len(self.buf), b""
        deadline = time.monotonic() + timeout
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            got += len(chunk)
        return got

    def recv_kind(self, kind, timeout=5.0):
        while True:
            p = self.recv(timeout)
            if p is None or p.kind == kind:
                return p

    def expect_nothing(self, timeout=1.0):
        try:
            p = self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {p!r}")

    def closed(self, timeout=5.0):
        """Reads until the broker closes the connection; returns the packets seen."""
        seen = []
        while True:
            p = self.recv(timeout)
            if p is None:
                return seen
            seen.append(p)

    def _parse(self):
        if len(self.buf) < 2:
            return None
        n, shift, pos = 0, 0, 1
        while True:
            if pos >= len(self.buf):
                return None
            b = self.buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if len(self.buf) < pos + n:
            return None
        first = self.buf[0]
        body = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return Packet(first >> 4, first & 0x0F, body, self.version)

    def subscribe(self, filt, qos=0, options=None, packet_id=1, properties=()):
        opts = qos if options is None else options
        self.send(subscribe_packet([(filt, opts)], packet_id, self.version, properties))
        ack = self.recv_kind(SUBACK)
        assert ack is not None
        return ack

    def publish(self, topic, payload=b"", qos=0, packet_id=1, **kw):
        self.send(publish_packet(topic, payload, qos, packet_id, version=self.version, **kw))

    def close(self):
        self.sock.close()
