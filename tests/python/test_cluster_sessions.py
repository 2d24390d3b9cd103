"""Sessions that follow their clients between cluster nodes (a client reconnecting to
another node behind the balancer), owners that cannot be reached, wills of a lost
node's clients, and `/status` when a node is cut off. Real binaries on loopback
addresses (see test_cluster.py), raw clients where the packets' bytes matter."""

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from mqttraw import (CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient,
                     ack_packet, connect_packet)
from paho_helpers import CONNECT_PROPS, V5, Paho, props
from test_cluster import api, make_cluster, wait_route  # noqa: F401 (a fixture)

SESSION_EXPIRY = 0x11


def raw_connect(node, client_id, version, clean, expiry=300, **kw):
    c = RawClient(node.host, node.port, version=version)
    properties = [(SESSION_EXPIRY, expiry)] if version == 5 and expiry else []
    ack = c.connect(client_id, clean=clean, properties=properties, **kw)
    return c, ack


def receive(client, n, timeout=5):
    """The next `n` PUBLISH packets, each then acknowledged to the end of its flow."""
    got = []
    while len(got) < n:
        p = client.recv(timeout)
        assert p is not None, f"closed after {got}"
        if p.kind != PUBLISH:
            continue
        got.append(p)
        if p.qos == 1:
            client.send(ack_packet(PUBACK, p.packet_id, client.version))
        elif p.qos == 2:
            client.send(ack_packet(PUBREC, p.packet_id, client.version))
    for p in got:
        if p.qos == 2:
            rel = client.recv_kind(PUBREL, timeout)
            assert rel is not None
            client.send(ack_packet(PUBCOMP, rel.packet_id, client.version))
    return got


def cluster_info(node):
    return api(node, "/api/v4/cluster")["data"]


def pause(*nodes):
    for node in nodes:
        os.killpg(node.proc.pid, signal.SIGSTOP)


def resume(*nodes):
    for node in nodes:
        os.killpg(node.proc.pid, signal.SIGCONT)


def status_code(node):
    try:
        with urllib.request.urlopen(f"http://{node.host}:{node.api_port}/status", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("version", [5, 4])
def test_a_persistent_session_moves_with_what_it_had_in_flight(make_cluster, version):
    """Two messages sent and not acknowledged (QoS 1 and QoS 2) and two queued while
    offline move from node 1 to node 2 with the client: resent there with DUP and the
    same packet ids, then the queued ones, in order; session present = 1; its
    subscription follows it, so what is published on node 1 afterwards reaches it."""
    c = make_cluster(2)
    n1, n2 = c.nodes
    sub, ack = raw_connect(n1, "mover", version, clean=False)
    assert ack.code == 0 and not ack.session_present
    assert sub.subscribe("m/#", qos=2).codes == [2]
    pub = Paho(n1, "pub-n1")
    pub.publish("m/1", "one", qos=1)
    pub.publish("m/2", "two", qos=2)
    sent = {}
    for _ in range(2):
        p = sub.recv_kind(PUBLISH)
        sent[p.payload] = p.packet_id
    sub.close()  # nothing acknowledged
    n1.wait_for_log(r"client disconnected client_id=mover\b", 5)
    pub.publish("m/3", "three", qos=1)
    pub.publish("m/4", "four", qos=2)
    time.sleep(0.2)

    moved, ack = raw_connect(n2, "mover", version, clean=False)
    assert ack.code == 0 and ack.session_present, "session present = 1 on the new node"
    n1.wait_for_log(r"client_id=mover: session handed over to node n2 \(4 messages\)", 5)
    got = [(p.payload, p.dup, p.packet_id, p.qos) for p in receive(moved, 4)]
    assert [g[0] for g in got] == [b"one", b"two", b"three", b"four"], got
    assert got[0][1:] == (True, sent[b"one"], 1), "QoS 1 resent with DUP and its packet id"
    assert got[1][1:] == (True, sent[b"two"], 2), "QoS 2 resent with DUP and its packet id"
    assert not got[2][1] and not got[3][1]
    # The subscription moved: publishing on either node reaches it, once.
    pub.publish("m/5", "five", qos=2)
    Paho(n2, "pub-n2").publish("m/6", "six", qos=2)
    later = [p.payload for p in receive(moved, 2)]
    assert sorted(later) == [b"five", b"six"]
    moved.expect_nothing(1.0)
    # Node 1 no longer holds it; node 2 owns it by every node's records.
    for node in (n1, n2):
        owned = cluster_info(node)
        assert owned["sessions_owned"].get("n2", 0) >= 1, owned
        assert owned["sessions_owned"].get("n1", 0) == 0, owned


def test_a_paho_v5_session_follows_and_its_queue_arrives_once(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    expiry = {"SessionExpiryInterval": 300}
    sub = Paho(n1, "paho-mover", protocol=V5, clean_start=False,
               properties=props(CONNECT_PROPS, **expiry))
    sub.subscribe("pm/#", qos=2)
    sub.disconnect()
    pub = Paho(n1, "pm-pub")
    for i in range(50):
        pub.publish(f"pm/{i % 3}", f"m{i}", qos=1 + i % 2)
    again = Paho(n2, "paho-mover", protocol=V5, clean_start=False,
                 properties=props(CONNECT_PROPS, **expiry))
    assert again.flags.session_present
    payloads = [again.expect(10).payload.decode() for _ in range(50)]
    # In order within each QoS (paho hands a QoS 2 message over at PUBREL), once each.
    for qos in (1, 2):
        mine = [p for p in payloads if 1 + int(p[1:]) % 2 == qos]
        assert mine == [f"m{i}" for i in range(50) if 1 + i % 2 == qos], payloads
    again.expect_none(1.0)


def test_a_mosquitto_311_session_follows(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    args = ["-V", "311", "-c", "-i", "mq-mover", "-q", "2", "-t", "mq/#"]
    # Subscribe, then leave: the session stays on node 1.
    subprocess.run(["mosquitto_sub", "-h", n1.host, "-p", str(n1.port), *args, "-W", "1"],
                   capture_output=True, timeout=10)
    for i in range(5):
        subprocess.run(["mosquitto_pub", "-h", n1.host, "-p", str(n1.port), "-V", "311",
                        "-q", "2", "-t", f"mq/{i}", "-m", f"q{i}"], check=True, timeout=10)
    out = subprocess.run(["mosquitto_sub", "-h", n2.host, "-p", str(n2.port), *args,
                          "-C", "5", "-W", "10"], capture_output=True, text=True, timeout=20)
    assert out.stdout.split() == [f"q{i}" for i in range(5)], out


def test_a_connected_client_is_taken_over_from_another_node(make_cluster):
    """A clean session too: the old connection is told 0x8E, its will is published as
    on one node, once; the new connection gets session present = 0."""
    c = make_cluster(2)
    n1, n2 = c.nodes
    watcher = Paho(n2, "will-watcher")
    watcher.subscribe("wills/#", qos=1)
    wait_route(n1, "wills/#", "n2")
    old = RawClient(n1.host, n1.port, version=5)
    old.connect("twin", clean=True, will={"topic": "wills/twin", "payload": "gone", "qos": 1})
    new = RawClient(n2.host, n2.port, version=5)
    ack = new.connect("twin", clean=True)
    assert ack.code == 0 and not ack.session_present
    seen = old.closed(5)
    assert seen and seen[-1].kind == DISCONNECT and seen[-1].code == 0x8E, seen
    assert watcher.expect(5).payload == b"gone"
    watcher.expect_none(1.5)


@pytest.mark.parametrize("policy", ["rebuild", "new", "refuse"])
def test_when_the_owner_is_killed_the_policy_decides(make_cluster, policy):
    c = make_cluster(2, extra=f'takeover_timeout = 1\non_owner_unreachable = "{policy}"\n')
    n1, n2 = c.nodes
    sub, _ = raw_connect(n1, "orphan", 5, clean=False)
    sub.subscribe("o/#", qos=1)
    wait_route(n2, "o/#", "n1")
    # The record (with the subscription) has reached node 2.
    deadline = time.monotonic() + 5
    while cluster_info(n2)["sessions_owned"].get("n1", 0) < 1:
        assert time.monotonic() < deadline, "the record never reached node 2"
        time.sleep(0.05)
    sub.close()
    n1.wait_for_log(r"client disconnected client_id=orphan\b", 5)
    Paho(n1, "o-pub").publish("o/held", "held on n1", qos=1)
    n1.stop(signal.SIGKILL)
    again = RawClient(n2.host, n2.port, version=5)
    again.send(connect_packet("orphan", clean=False, properties=[(SESSION_EXPIRY, 300)]))
    ack = again.recv(10)
    assert ack.kind == CONNACK
    n2.wait_for_log(r"client_id=orphan: its session's node n1 (did not answer|is down)", 5)
    if policy == "refuse":
        assert ack.code == 0x88
        assert again.recv(5) is None
        v311 = RawClient(n2.host, n2.port, version=4)
        v311.send(connect_packet("orphan", version=4, clean=False))
        assert v311.recv(10).code == 3
        return
    assert ack.code == 0
    assert ack.session_present == (policy == "rebuild")
    Paho(n2, "o-pub2").publish("o/new", "published on n2", qos=1)
    if policy == "new":
        again.expect_nothing(1.0)
        return
    assert [p.payload for p in receive(again, 1)] == [b"published on n2"]
    # The old owner comes back: what it held reaches the client here; nothing is lost.
    c.nodes[0] = n1 = c.start_node(1)
    n1.wait_for_log(r"client_id=orphan: node n2 owns the session", 20)
    assert [p.payload for p in receive(again, 1, 10)] == [b"held on n1"]
    assert cluster_info(n2)["owner_unreachable"] == 1


def test_the_wills_of_a_lost_nodes_clients_are_published_once(make_cluster):
    c = make_cluster(3, extra="lost_node_wills_after = 2\n")
    n1, n2, n3 = c.nodes
    watchers = []
    for node in (n2, n3):
        w = Paho(node, f"watch-{node.dir.name}")
        w.subscribe("lost/#", qos=1)
        watchers.append(w)
    wait_route(n1, "lost/#", "n2")
    wait_route(n1, "lost/#", "n3")
    Paho(n1, "doomed", will={"topic": "lost/doomed", "payload": "doomed is gone", "qos": 1})
    deadline = time.monotonic() + 5
    while cluster_info(n2)["sessions_owned"].get("n1", 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    n1.stop(signal.SIGKILL)
    c.nodes.remove(n1)
    for w in watchers:
        assert w.expect(20).payload == b"doomed is gone"
    for w in watchers:
        w.expect_none(2.0)
    n2.wait_for_log(r"client_id=doomed: node n1 has been down", 1)
    published = sum(cluster_info(n)["lost_node_wills"] for n in (n2, n3))
    assert published == 1


def test_status_follows_isolated_status(make_cluster):
    """`minority` with three nodes: 503 once a node sees only itself; a node that left
    on purpose no longer counts, and two nodes never step aside."""
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    assert status_code(n1) == 200
    pause(n2, n3)
    try:
        deadline = time.monotonic() + 20
        while status_code(n1) != 503:
            assert time.monotonic() < deadline, cluster_info(n1)
            time.sleep(0.2)
        assert cluster_info(n1)["isolated"]
    finally:
        resume(n2, n3)
    deadline = time.monotonic() + 20
    while status_code(n1) != 200:
        assert time.monotonic() < deadline, cluster_info(n1)
        time.sleep(0.2)
    # n3 leaves on purpose: n1 and n2 are a two-node cluster, and stay up alone.
    n3.stop()
    c.nodes.remove(n3)
    n1.wait_for_log(r"cluster: node n3 is leaving", 10)
    pause(n2)
    try:
        n1.wait_for_log(r"cluster: node n2 at .* is down", 20)
        assert status_code(n1) == 200
        assert cluster_info(n1)["nodes_known"] == 2
    finally:
        resume(n2)


def test_alone_status_with_two_nodes(make_cluster):
    c = make_cluster(2, extra='isolated_status = "alone"\n')
    n1, n2 = c.nodes
    pause(n2)
    try:
        deadline = time.monotonic() + 20
        while status_code(n1) != 503:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        resume(n2)


def restart_on_same_ports(node):
    """Stops `node` (SIGTERM) and starts it again where the balancer expects it: the
    same MQTT and API ports. Its log so far is kept in `lines_before`."""
    text = node.config_path.read_text()
    for table, port in (("[listeners.tcp]", node.port), ("[api]", node.api_port)):
        text = text.replace(f'{table}\nbind = "{node.host}:0"', f'{table}\nbind = "{node.host}:{port}"')
    node.stop()
    node.lines_before = list(node.lines)
    node.config_path.write_text(text)
    node.start()


class Steady:
    """A paho client through the balancer from its own source address that reconnects
    by itself (a device): a persistent QoS 1 subscriber, or a publisher that counts
    what was acknowledged."""

    def __init__(self, port, source, client_id, ca, subscribe=None):
        import ssl
        import paho.mqtt.client as mqtt
        self.received, self.acked, self.lock = [], set(), threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=subscribe is None)
        self.c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.reconnect_delay_set(1, 2)
        self.c.on_message = lambda c, u, m: self._got(m.payload.decode())
        self.connects = 0
        up = threading.Event()

        def on_connect(c, u, flags, rc, p):
            self.connects += 1
            if subscribe and not flags.session_present:
                c.subscribe(subscribe, 1)
            up.set()
        self.c.on_connect = on_connect
        self.c.connect("127.0.0.1", port, keepalive=10, bind_address=source)
        self.c.loop_start()
        assert up.wait(10)

    def _got(self, payload):
        with self.lock:
            self.received.append(payload)

    def publish_for(self, topic, stop):
        i = 0
        while not stop.is_set():
            payload = f"{self.c._client_id.decode()}-{i}"
            info = self.c.publish(topic, payload, 1)
            try:
                info.wait_for_publish(3)
                if info.is_published():
                    self.acked.add(payload)
            except (RuntimeError, ValueError):
                time.sleep(0.2)  # not connected: paho reconnects by itself
            i += 1
            time.sleep(0.01)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_a_rolling_restart_loses_nothing_acknowledged(make_cluster, tmp_path, certs, balancer):
    """Three nodes behind the balancer, persistent QoS 1 subscribers and publishers
    that reconnect by themselves; every node is restarted in turn (SIGTERM: 503, its
    clients closed with 0x8B, its sessions handed to another node). Every message a
    publisher had acknowledged reaches every subscriber; duplicates are reported."""
    from conftest import free_port
    from test_balancers import start_nginx
    from test_cluster import haproxy_cluster
    c = make_cluster(3, extra="stop_wait = 1\n", tcp_extra="proxy_protocol = true\n")
    port = free_port()
    if balancer == "haproxy":
        front = haproxy_cluster(tmp_path, c.nodes, port, certs, health="status")
    else:
        front = start_nginx(tmp_path, [f"{t.host}:{t.port}" for t in c.nodes], port, certs)
    try:
        subs = [Steady(port, f"127.0.0.{20 + k}", f"roll-sub-{k}", certs / "ca.pem", "roll/#")
                for k in range(4)]
        pubs = [Steady(port, f"127.0.0.{30 + k}", f"roll-pub-{k}", certs / "ca.pem") for k in range(2)]
        time.sleep(1.0)  # the subscriptions' routes reach every node
        stop = threading.Event()
        threads = [threading.Thread(target=p.publish_for, args=(f"roll/{k}", stop), daemon=True)
                   for k, p in enumerate(pubs)]
        for t in threads:
            t.start()
        handed = []
        for i in range(3):
            time.sleep(1.0)
            node = c.nodes[i]
            restart_on_same_ports(node)
            (tmp_path / f"{node.dir.name}-life{i}.log").write_text("\n".join(node.lines_before))
            handed += [line for line in node.lines_before if "handed to node" in line]
            for other in c.nodes:
                if other is not node:
                    node.wait_for_log(rf"cluster: linked to node {other.dir.name}\b", 20)
            deadline = time.monotonic() + 10
            while status_code(node) != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(10)
        acked = set().union(*(p.acked for p in pubs))
        assert len(acked) > 100, len(acked)
        print("\n".join(handed))
        assert handed, "no stopping node handed its sessions on"
        deadline = time.monotonic() + 30
        for k, s in enumerate(subs):
            while time.monotonic() < deadline:
                with s.lock:
                    if acked <= set(s.received):
                        break
                time.sleep(0.2)
            with s.lock:
                received = list(s.received)
            missing = acked - set(received)
            for node in c.nodes:
                (tmp_path / f"{node.dir.name}-last.log").write_text(node.log_text())
            assert not missing, f"(logs in {tmp_path}) subscriber {k} lost {len(missing)} acknowledged messages, e.g. {sorted(missing)[:5]}"
            duplicates = len(received) - len(set(received))
            print(f"{balancer}: subscriber {k} got {len(set(received))} messages ({len(acked)} acknowledged),"
                  f" {duplicates} duplicates, {s.connects} connections")
        for client in subs + pubs:
            client.close()
    finally:
        front.terminate()
        front.wait(5)
