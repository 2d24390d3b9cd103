"""Two to five Tern nodes as one broker: the real binaries on loopback addresses
(127.0.0.2, .3, .4, each node's cluster port on its own address), real clients."""

import base64
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import Broker
from mqttraw import PUBLISH, RawClient
from paho_helpers import V5, V311, Paho

SECRET = "cluster-secret-for-tests"
API_SECRET = "s3cret"


def node_config(i, n, extra=""):
    """Node i (1-based) of n, on 127.0.0.(i+1): MQTT and the API on free ports, the
    cluster port on 5370 of its own address, the other nodes as seeds."""
    seeds = ", ".join(f'"127.0.0.{j + 1}:5370"' for j in range(1, n + 1) if j != i)
    return (f'[node]\nname = "n{i}"\n'
            f'[listeners.tcp]\nbind = "127.0.0.{i + 1}:0"\n'
            f'[api]\nbind = "127.0.0.{i + 1}:0"\napp_secret = "{API_SECRET}"\nsys_interval = 1\n'
            f'[cluster]\nbind = "127.0.0.{i + 1}:5370"\nseeds = [{seeds}]\n'
            f'secret = "{SECRET}"\njoin_wait = 3\nstop_wait = 1\n{extra}')


class Cluster:
    def __init__(self, tmp_path, n, extra=""):
        self.tmp_path = tmp_path
        self.n = n
        self.nodes = []
        for i in range(1, n + 1):
            self.nodes.append(self.start_node(i, extra))
        self.wait_linked()

    def start_node(self, i, extra=""):
        d = self.tmp_path / f"n{i}"
        d.mkdir(exist_ok=True)
        return Broker(d, node_config(i, self.n, extra), start_timeout=20)

    def wait_linked(self, timeout=20):
        """Until every node is linked to every other."""
        for node in self.nodes:
            for other in self.nodes:
                if other is node:
                    continue
                name = other.dir.name
                node.wait_for_log(rf"cluster: linked to node {name}\b", timeout)

    def stop(self):
        for node in self.nodes:
            node.stop()


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(n, extra=""):
        c = Cluster(tmp_path, n, extra)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def api(node, path, method="GET", body=None):
    port = node.api_port
    req = urllib.request.Request(f"http://{node.host}:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    token = base64.b64encode(f"admin:{API_SECRET}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wait_route(node, topic, on, timeout=10):
    """Until `node` knows that node `on` holds the filter `topic`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        routes = api(node, "/api/v4/routes")["data"]
        if any(r["topic"] == topic and r["node"] == on for r in routes):
            return
        time.sleep(0.05)
    raise AssertionError(f"{node.dir.name} never learnt {on}'s route {topic}: {routes}")


def test_three_nodes_deliver_every_qos_once_across_a_hop(make_cluster):
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    subs = {}
    for qos in (0, 1, 2):
        subs[qos] = Paho(n1, f"sub{qos}", protocol=V5)
        subs[qos].subscribe(f"hop/q{qos}", qos=qos)
    for qos in (0, 1, 2):
        wait_route(n3, f"hop/q{qos}", "n1")
    pub = Paho(n3, "pub", protocol=V5)
    for qos in (0, 1, 2):
        for k in range(5):
            pub.publish(f"hop/q{qos}", f"{qos}-{k}", qos=qos)
    for qos in (0, 1, 2):
        got = [subs[qos].expect().payload.decode() for _ in range(5)]
        assert got == [f"{qos}-{k}" for k in range(5)], f"QoS {qos}: in order, once each"
        subs[qos].expect_none(0.5)


def test_v5_semantics_hold_across_a_hop(make_cluster):
    """No-local, retain-as-published, subscription identifiers, message expiry and user
    properties, with the subscriber on one node and the publisher on another."""
    c = make_cluster(2)
    n1, n2 = c.nodes
    sub = Paho(n1, "v5sub", protocol=V5)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    sub.subscribe("sem/#", options=SubscribeOptions(qos=1, retainAsPublished=True), properties=props)
    wait_route(n2, "sem/#", "n1")
    pub = Paho(n2, "v5pub", protocol=V5)
    pp = Properties(PacketTypes.PUBLISH)
    pp.MessageExpiryInterval = 60
    pp.UserProperty = [("k", "v")]
    pub.publish("sem/a", "x", qos=1, retain=True, properties=pp)
    m = sub.expect()
    assert m.retain, "retain as published across the hop"
    assert m.properties.SubscriptionIdentifier == [42]
    assert 55 <= m.properties.MessageExpiryInterval <= 60
    assert m.properties.UserProperty == [("k", "v")]
    # No-local: a client that publishes what it subscribed to does not get it back, on
    # its own node, and its message still reaches the other node's subscribers.
    loop = Paho(n2, "loop", protocol=V5)
    loop.subscribe("sem/loop", options=SubscribeOptions(qos=1, noLocal=True))
    wait_route(n1, "sem/loop", "n2")
    loop.publish("sem/loop", "mine", qos=1)
    assert sub.expect().payload == b"mine"
    loop.expect_none(0.5)


def test_retained_messages_are_set_and_cleared_on_every_node(make_cluster):
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    Paho(n2, "setter", protocol=V311).publish("cfg/site", "v1", qos=1, retain=True)
    for node in (n1, n3):
        deadline = time.monotonic() + 5
        while True:
            late = Paho(node, f"late-{node.dir.name}", protocol=V311)
            late.subscribe("cfg/#", qos=1)
            try:
                m = late.expect(timeout=0.5)
                assert (m.topic, m.payload, m.retain) == ("cfg/site", b"v1", True)
                break
            except Exception:
                assert time.monotonic() < deadline, f"{node.dir.name} never got the retained message"
            finally:
                late.disconnect()
    Paho(n3, "clearer", protocol=V311).publish("cfg/site", "", qos=1, retain=True)
    time.sleep(0.5)
    for node in (n1, n2, n3):
        late = Paho(node, f"after-{node.dir.name}", protocol=V311)
        late.subscribe("cfg/#", qos=1)
        late.expect_none(0.5)


def test_a_shared_group_with_members_on_two_nodes_gets_each_message_once(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    a = Paho(n1, "member-a", protocol=V5)
    b = Paho(n2, "member-b", protocol=V5)
    for m in (a, b):
        m.subscribe("$share/workers/jobs/#", qos=1)
    wait_route(n1, "$share/workers/jobs/#", "n2")
    wait_route(n2, "$share/workers/jobs/#", "n1")
    pub = Paho(n1, "jobs-pub", protocol=V5)
    for k in range(20):
        pub.publish("jobs/x", str(k), qos=1)
    got = []
    for member in (a, b):
        while True:
            try:
                got.append((member.c._client_id, member.expect(timeout=1.0).payload.decode()))
            except Exception:
                break
    payloads = sorted(int(p) for _, p in got)
    assert payloads == list(range(20)), "each message once, cluster-wide"
    assert {who for who, _ in got} == {b"member-a", b"member-b"}, "both nodes' members served"


def test_a_node_added_at_run_time_gets_routes_and_retained_messages(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    Paho(n1, "keeper", protocol=V311).publish("state/door", "closed", qos=1, retain=True)
    sub = Paho(n2, "far-sub", protocol=V311)
    sub.subscribe("alerts/#", qos=1)
    # A third node, seeded with the first two, joins without a restart of anyone.
    d = c.tmp_path / "n3"
    d.mkdir()
    n3 = Broker(d, node_config(3, 3), start_timeout=20)
    c.nodes.append(n3)
    n3.wait_for_log(r"cluster: linked to node n1\b", 20)
    n3.wait_for_log(r"cluster: linked to node n2\b", 20)
    wait_route(n3, "alerts/#", "n2")
    late = Paho(n3, "late", protocol=V311)
    late.subscribe("state/#", qos=1)
    m = late.expect(timeout=5)
    assert (m.topic, m.payload) == ("state/door", b"closed")
    Paho(n3, "alerter", protocol=V311).publish("alerts/fire", "drill", qos=1)
    assert sub.expect().payload == b"drill"


def test_nodes_and_routes_in_the_api_and_sys(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    Paho(n2, "routed", protocol=V311).subscribe("api/x", qos=0)
    wait_route(n1, "api/x", "n2")
    nodes = api(n1, "/api/v4/nodes")["data"]
    assert [n["node"] for n in nodes] == ["n1", "n2"]
    assert all(n["node_status"] == "Running" for n in nodes)
    assert nodes[1]["version"] and nodes[1]["uptime"]
    watcher = Paho(n1, "sys-watch", protocol=V311)
    watcher.subscribe("$SYS/tern/cluster/nodes/n2/state", qos=0)
    assert watcher.expect(timeout=5).payload == b"running"


def test_bad_input_on_the_cluster_port_costs_nobody_anything(make_cluster):
    c = make_cluster(2)
    n1, n2 = c.nodes
    sub = Paho(n1, "bystander", protocol=V311)
    sub.subscribe("still/#", qos=1)
    wait_route(n2, "still/#", "n1")
    # A datagram with a wrong MAC, garbage, an oversize length on a link.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"\x01" + b"\x00" * 16 + b"forged gossip", ("127.0.0.2", 5370))
    udp.sendto(b"\x09" + b"\x00" * 16 + b"from the future", ("127.0.0.2", 5370))
    n1.wait_for_log(r"cluster: dropped a datagram from 127\.0\.0\.1:\d+: wrong MAC")
    n1.wait_for_log(r"cluster: dropped a datagram from .*datagram version 9")
    # A flood is counted, not logged line by line.
    for _ in range(500):
        udp.sendto(b"\x01" + os.urandom(40), ("127.0.0.2", 5370))
    time.sleep(0.5)
    assert n1.log_text().count("cluster: dropped a datagram") <= 10
    for junk in (b"GET / HTTP/1.1\r\n\r\n", (1 << 31).to_bytes(4, "little") + b"x",
                 b"\x00" * 64):
        s = socket.create_connection(("127.0.0.2", 5370))
        s.sendall(junk)
        s.settimeout(10)
        try:
            while s.recv(1024):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
    n1.wait_for_log(r"cluster: refused input from 127\.0\.0\.1:\d+")
    Paho(n2, "checker", protocol=V311).publish("still/here", "yes", qos=1)
    assert sub.expect().payload == b"yes"


def test_a_node_with_a_clashing_name_is_refused_on_both_sides(make_cluster, tmp_path):
    c = make_cluster(2)
    n1, n2 = c.nodes
    d = tmp_path / "impostor"
    d.mkdir()
    # Named n1 like the first node, at a third address, seeded with the second.
    text = node_config(1, 2).replace("127.0.0.2:0", "127.0.0.4:0").replace(
        'bind = "127.0.0.2:5370"', 'bind = "127.0.0.4:5370"').replace(
        'seeds = ["127.0.0.3:5370"]', 'seeds = ["127.0.0.2:5370", "127.0.0.3:5370"]')
    impostor = Broker(d, text, start_timeout=20)
    try:
        impostor.wait_for_log(r"node n1 at 127\.0\.0\.2:5370 has this node's name", 20)
        n1.wait_for_log(r"node n1 at 127\.0\.0\.4:5370 has this node's name", 20)
    finally:
        impostor.stop()


def test_kill_9_under_qos1_load_loses_nothing_acknowledged(make_cluster):
    """Publishers on every node, a persistent subscriber on two of them; the third node
    is killed mid-load. Every message acknowledged to a publisher on a survivor reaches
    both subscribers; the killed node's publishers' acknowledged messages arrive once it
    is back."""
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    received = {1: [], 2: []}
    subs = {}
    for k, node in ((1, n1), (2, n2)):
        s = Paho(node, f"persist{k}", protocol=V311, clean_start=False)
        s.subscribe("load/#", qos=1)
        subs[k] = s
    for node in (n1, n2, n3):
        for k in (1, 2):
            if node is not c.nodes[k - 1]:
                wait_route(node, "load/#", f"n{k}")
    acked = []
    stop = threading.Event()

    def publish(node, name):
        p = Paho(node, name, protocol=V311)
        i = 0
        while not stop.is_set():
            try:
                info = p.c.publish(f"load/{name}", f"{name}-{i}", 1)
                info.wait_for_publish(5)
                if info.is_published():
                    acked.append(f"{name}-{i}")
                i += 1
            except Exception:
                break

    threads = [threading.Thread(target=publish, args=(node, f"p{j}"), daemon=True)
               for j, node in enumerate((n1, n2, n3), 1)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    n3.stop(signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    # The killed node comes back with what it held.
    c.nodes[2] = c.start_node(3)
    c.nodes[2].wait_for_log(r"cluster: linked to node n1\b", 20)
    deadline = time.monotonic() + 30
    for k, s in subs.items():
        seen = set()
        while time.monotonic() < deadline and not set(acked) <= seen:
            try:
                seen.add(s.expect(timeout=1).payload.decode())
            except Exception:
                pass
        missing = set(acked) - seen
        assert not missing, f"subscriber {k} lost {len(missing)} acknowledged messages, e.g. {sorted(missing)[:5]}"
    assert len(acked) > 100
