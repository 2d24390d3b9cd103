"""Limits and hostile clients: each offender gets the right reason code, others keep
being served, and the broker's memory stays bounded."""

import socket
import time

from mqttraw import DISCONNECT, RawClient, connect_packet, packet, s
from paho_helpers import Paho


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_client_id_longer_than_the_limit_is_refused(make_broker):
    broker = make_broker("[limits]\nmax_client_id_len = 8\n")
    c = RawClient(broker.host, broker.port)
    c.send(connect_packet("much-too-long-id"))
    assert c.recv().code == 0x85
    c3 = RawClient(broker.host, broker.port, version=4)
    c3.send(connect_packet("much-too-long-id", version=4))
    assert c3.recv().code == 0x02
    assert RawClient(broker.host, broker.port).connect("short").code == 0


def test_topics_too_long_or_deep_are_refused(make_broker):
    broker = make_broker("[limits]\nmax_topic_levels = 3\nmax_topic_len = 20\n")
    c = RawClient(broker.host, broker.port)
    c.connect("deep")
    assert c.subscribe("a/b/c/d").codes == [0x8F]
    assert c.subscribe("a/" + "x" * 30).codes == [0x8F]
    assert c.subscribe("a/b/c").codes == [0]
    c.publish("a/b/c/d", b"x")
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x90]
    broker.wait_for_log(r"client_id=deep .*deeper than max_topic_levels 3")


def test_subscriptions_per_client_are_limited(make_broker):
    broker = make_broker("[limits]\nmax_subscriptions = 2\n")
    c = RawClient(broker.host, broker.port)
    c.connect("many")
    assert c.subscribe("a").codes == [0]
    assert c.subscribe("b").codes == [0]
    assert c.subscribe("a").codes == [0], "re-subscribing replaces, it does not count again"
    assert c.subscribe("c").codes == [0x97]
    v3 = RawClient(broker.host, broker.port, version=4)
    v3.connect("many3", version=4)
    v3.subscribe("a")
    v3.subscribe("b")
    assert v3.subscribe("c").codes == [0x80]


def test_connection_limits_total_and_per_listener(make_broker):
    broker = make_broker("[limits]\nmax_connections = 3\n"
                         '[listeners.small]\ntype = "tcp"\nbind = "127.0.0.1:0"\nmax_connections = 1\n')
    small = int(broker.wait_for_log(r"listening name=small addr=127.0.0.1:(\d+)").group(1))
    first = RawClient("127.0.0.1", small)
    assert first.connect("s1").code == 0
    c = RawClient("127.0.0.1", small)
    c.send(connect_packet("s2"))
    assert c.recv().code == 0x89, "listener full: server busy"
    held = [RawClient(broker.host, broker.port) for _ in range(2)]
    for i, h in enumerate(held):
        assert h.connect(f"t{i}").code == 0
    c = RawClient(broker.host, broker.port, version=4)
    c.send(connect_packet("t-over", version=4))
    assert c.recv().code == 0x03, "all listeners full: 3.x server unavailable"
    held[0].send(bytes([0xE0, 0]))
    held[0].close()
    time.sleep(0.3)
    assert RawClient(broker.host, broker.port).connect("t-again").code == 0
    broker.wait_for_log(r"refused connection .*1 connections open on this listener")
    broker.wait_for_log(r"refused connection .*the max_connections limit")


def test_connection_rate_per_source_address(make_broker):
    broker = make_broker("[limits]\nmax_connection_rate = 5\n")
    codes = []
    for i in range(20):
        c = RawClient(broker.host, broker.port)
        c.send(connect_packet(f"r{i}"))
        codes.append(c.recv().code)
    assert codes.count(0x9F) >= 12 and codes[0] == 0, codes
    # A flood of refusals: the first ten in a minute are logged, the rest counted.
    time.sleep(0.2)
    assert broker.log_text().count("refused connection") == 10
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.connect((broker.host, broker.port))
    other.sendall(connect_packet("from-elsewhere"))
    assert other.recv(4)[3] == 0, "another source address has its own budget"


def test_slowloris_and_half_open_clients_cost_little_and_are_closed(make_broker):
    broker = make_broker("[limits]\nconnect_timeout = 2\n")
    # The well-behaved clients first: paho uses select(), which cannot watch
    # descriptors past 1024, and the slow clients below take 2000 of them.
    healthy = Paho(broker, "healthy")
    healthy.subscribe("ok/#", qos=1)
    publisher = RawClient(broker.host, broker.port)
    publisher.connect("publisher")
    before = rss_kb(broker.proc.pid)
    slow = []
    hello = connect_packet("slowloris-client-id")
    try:
        for i in range(2000):
            sock = socket.create_connection((broker.host, broker.port))
            if i % 2:
                sock.sendall(hello[:1])  # starts a CONNECT, then one byte a second
            slow.append(sock)
        for second in range(3):
            for i, sock in enumerate(slow):
                if i % 2:
                    try:
                        sock.sendall(hello[1 + second:2 + second])
                    except OSError:
                        pass
            publisher.publish("ok/t", b"%d" % second, qos=1, packet_id=second + 1)
            assert healthy.expect().payload == b"%d" % second
            time.sleep(1)
        grown = rss_kb(broker.proc.pid) - before
        assert grown < 40_000, f"RSS grew by {grown} KiB for 2000 slow connections"
        closed = 0
        for sock in slow:
            sock.settimeout(3)
            try:
                if sock.recv(1) == b"":
                    closed += 1
            except (socket.timeout, ConnectionResetError):
                closed += 1
        assert closed == len(slow)
    finally:
        for sock in slow:
            sock.close()


def test_huge_declared_length_is_refused_from_the_header(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("liar")
    c.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]))  # 256 MB, no body
    assert [p.code for p in c.closed(timeout=3) if p.kind == DISCONNECT] == [0x95]


def test_subscribe_flood_with_huge_filters_stays_bounded(make_broker):
    broker = make_broker("[limits]\nmax_subscriptions = 100\n")
    before = rss_kb(broker.proc.pid)
    c = RawClient(broker.host, broker.port)
    c.connect("flooder")
    for i in range(300):
        filt = f"{i}/" + "x" * 60_000
        body = (i % 65535 + 1).to_bytes(2, "big") + b"\x00" + s(filt) + b"\x00"
        c.send(packet(0x82, body))
        assert c.recv().kind == 9
    grown = rss_kb(broker.proc.pid) - before
    assert grown < 30_000, f"RSS grew by {grown} KiB"
    healthy = RawClient(broker.host, broker.port)
    assert healthy.connect("still-served").code == 0


def test_publish_storm_from_one_client_does_not_starve_others(make_broker):
    broker = make_broker()
    sub = Paho(broker, "sub")
    sub.subscribe("storm/#")
    other_sub = Paho(broker, "other-sub")
    other_sub.subscribe("calm/#", qos=1)
    before = rss_kb(broker.proc.pid)
    storm = RawClient(broker.host, broker.port, version=4)
    storm.connect("storm", version=4)
    batch = (bytes([0x30, 13, 0, 7]) + b"storm/t" + b"abcd") * 2000
    calm = Paho(broker, "calm-pub")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        storm.send(batch)
        calm.publish("calm/t", b"hello", qos=1)
        assert other_sub.expect(timeout=5).payload == b"hello"
    grown = rss_kb(broker.proc.pid) - before
    assert grown < 64_000, f"RSS grew by {grown} KiB"


def test_a_drained_burst_gives_its_queue_memory_back(make_broker):
    """A burst queued for a subscriber that stopped reading takes memory (bounded by the
    queue limits); once the subscriber has read it, the broker's tick gives the queue's
    buffer back, and RSS falls most of the way to where it was."""
    broker = make_broker(
        "[limits]\nmax_queued_messages = 200000\nmax_queued_bytes = 100000000\n"
        "stall_timeout_ms = 20\n"
    )
    sub = RawClient(broker.host, broker.port, version=4, rcvbuf=4096)
    sub.connect("slow-reader", version=4)
    sub.send(packet(0x82, b"\x00\x01" + s("burst/#") + b"\x00"))
    assert sub.recv().kind == 9
    before = rss_kb(broker.proc.pid)
    one = bytes([0x30, 2 + 7 + 64, 0, 7]) + b"burst/t" + b"p" * 64
    burst = 150_000
    storm = RawClient(broker.host, broker.port, version=4)
    storm.connect("burster", version=4)
    for _ in range(burst // 1000):
        storm.send(one * 1000)
    # The burst is queued once RSS stops growing.
    peak, last = 0, -1
    while peak != last:
        last = peak
        time.sleep(0.5)
        peak = rss_kb(broker.proc.pid)
    received = sub.read_bytes(burst * len(one), timeout=60)
    assert received == burst * len(one)
    time.sleep(2.5)
    after = rss_kb(broker.proc.pid)
    print(f"RSS before {before} KiB, with the burst queued {peak}, after {after}")
    assert peak - before > 10_000, f"the burst took only {peak - before} KiB"
    assert after - before < (peak - before) / 3, (
        f"RSS {before} -> {peak} with the burst queued -> {after} KiB after it drained"
    )
