"""Two to five Tern nodes as one broker: the real binaries on loopback addresses
(127.0.0.2, .3, .4, each node's cluster port on its own address), real clients."""

import base64
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.parser import text_string_to_metric_families

from conftest import Broker, free_port
from mqttraw import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient, ack_packet
from paho_helpers import V5, V311, Paho
from test_balancers import Device, in_front_of, serving, start_nginx
from test_bridge import Mosquitto

SECRET = "cluster-secret-for-tests"
API_SECRET = "s3cret"


def node_config(i, n, extra="", tcp_extra="", dns=None):
    """Node i (1-based) of n, on 127.0.0.(i+1): MQTT and the API on free ports, the
    cluster port on 5370 of its own address, the other nodes as seeds (or, with `dns`,
    every address that name resolves to)."""
    seeds = ", ".join(f'"127.0.0.{j + 1}:5370"' for j in range(1, n + 1) if j != i)
    discovery = f'dns = "{dns}"' if dns else f"seeds = [{seeds}]"
    stop_wait = "" if "stop_wait" in extra else "stop_wait = 1\n"
    return (f'[node]\nname = "n{i}"\n'
            f'[listeners.tcp]\nbind = "127.0.0.{i + 1}:0"\n{tcp_extra}'
            f'[api]\nbind = "127.0.0.{i + 1}:0"\napp_secret = "{API_SECRET}"\nsys_interval = 1\n'
            f'[cluster]\nbind = "127.0.0.{i + 1}:5370"\n{discovery}\n'
            f'secret = "{SECRET}"\njoin_wait = 3\n{stop_wait}{extra}')


class Cluster:
    def __init__(self, tmp_path, n, extra="", tcp_extra="", prefix=(), dns=None):
        self.tmp_path = tmp_path
        self.n = n
        self.extra, self.tcp_extra, self.prefix, self.dns = extra, tcp_extra, prefix, dns
        self.nodes = []
        for i in range(1, n + 1):
            self.nodes.append(self.start_node(i))
        self.wait_linked()

    def start_node(self, i):
        d = self.tmp_path / f"n{i}"
        d.mkdir(exist_ok=True)
        text = node_config(i, self.n, self.extra, self.tcp_extra, self.dns)
        return Broker(d, text, prefix=self.prefix, start_timeout=20)

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

    def make(n, extra="", tcp_extra="", prefix=(), dns=None):
        c = Cluster(tmp_path, n, extra, tcp_extra, prefix, dns)
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
    # The sessions that relay for the peers are not clients of the node.
    assert nodes[0]["connections"] == 0, nodes
    deadline = time.monotonic() + 8  # each node's figures cross with the link's heartbeat
    while api(n1, "/api/v4/nodes/n2")["data"]["connections"] != 1:
        assert time.monotonic() < deadline, api(n1, "/api/v4/nodes/n2")
        time.sleep(0.2)
    assert api(n1, "/api/v4/clients")["data"] == []
    assert api(n1, "/api/v4/subscriptions")["data"] == []
    assert nodes[1]["queued"] == 0 and nodes[1]["last_sync"] and nodes[1]["link_since"], nodes[1]
    with urllib.request.urlopen(f"http://{n1.host}:{n1.api_port}/metrics", timeout=5) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    sample = {f: families[f].samples[0] for f in ("tern_cluster_nodes", "tern_cluster_link_up",
                                                  "tern_cluster_queued_messages",
                                                  "tern_cluster_last_sync_timestamp_seconds")}
    assert sample["tern_cluster_nodes"].value == 2
    assert sample["tern_cluster_link_up"].labels == {"node": "n2"} and sample["tern_cluster_link_up"].value == 1
    assert sample["tern_cluster_queued_messages"].value == 0
    assert abs(sample["tern_cluster_last_sync_timestamp_seconds"].value - time.time()) < 60
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


@pytest.mark.parametrize("qos", [1, 2])
def test_kill_9_under_load_loses_nothing_acknowledged(make_cluster, qos):
    """Publishers on every node, a persistent subscriber on two of them; the third node
    is killed mid-load. Every message acknowledged to a publisher on a survivor reaches
    both subscribers; the killed node's publishers' acknowledged messages arrive once it
    is back; the survivors never stop serving. QoS 2 arrives exactly once; QoS 1's
    duplicates are counted and reported."""
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    subs = {}
    for k, node in ((1, n1), (2, n2)):
        s = Paho(node, f"persist{k}", protocol=V311, clean_start=False)
        s.subscribe("load/#", qos=qos)
        subs[k] = s
    for node in (n1, n2, n3):
        for k in (1, 2):
            if node is not c.nodes[k - 1]:
                wait_route(node, "load/#", f"n{k}")
    acked = {}  # payload -> when its publisher had it acknowledged
    stop = threading.Event()

    def publish(node, name):
        p = Paho(node, name, protocol=V311)
        i = 0
        while not stop.is_set():
            try:
                info = p.c.publish(f"load/{name}", f"{name}-{i}", qos)
                info.wait_for_publish(5)
                if info.is_published():
                    acked[f"{name}-{i}"] = time.monotonic()
                i += 1
            except Exception:
                break

    threads = [threading.Thread(target=publish, args=(node, f"p{j}"), daemon=True)
               for j, node in enumerate((n1, n2, n3), 1)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    n3.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    for name in ("p1", "p2"):
        assert any(p.startswith(name + "-") and at > killed_at + 0.5 for p, at in acked.items()), \
            f"{name}'s node stopped serving when n3 died"
    # The killed node comes back with what it held.
    c.nodes[2] = c.start_node(3)
    c.nodes[2].wait_for_log(r"cluster: linked to node n1\b", 20)
    deadline = time.monotonic() + 30
    want = set(acked)
    for k, s in subs.items():
        counts = {}
        while time.monotonic() < deadline and not want <= counts.keys():
            try:
                payload = s.expect(timeout=1).payload.decode()
                counts[payload] = counts.get(payload, 0) + 1
            except Exception:
                pass
        # Whatever else is on its way (unacknowledged messages may arrive too).
        while True:
            try:
                payload = s.expect(timeout=1).payload.decode()
                counts[payload] = counts.get(payload, 0) + 1
            except Exception:
                break
        missing = want - counts.keys()
        assert not missing, f"subscriber {k} lost {len(missing)} acknowledged messages, e.g. {sorted(missing)[:5]}"
        duplicates = sum(n - 1 for n in counts.values())
        print(f"QoS {qos} subscriber {k}: {len(counts)} messages ({len(want)} acknowledged), {duplicates} duplicates")
        if qos == 2:
            assert duplicates == 0, f"QoS 2 delivered {duplicates} duplicates"
    assert len(acked) > 100


def test_a_node_that_leaves_is_seen_down_and_the_rest_keep_delivering(make_cluster):
    c = make_cluster(3)
    n1, n2, n3 = c.nodes
    sub = Paho(n1, "stayer", protocol=V311)
    sub.subscribe("rest/#", qos=1)
    wait_route(n2, "rest/#", "n1")
    n3.stop()
    c.nodes.remove(n3)
    n1.wait_for_log(r"cluster: node n3 at 127\.0\.0\.4:5370 is down", 10)
    deadline = time.monotonic() + 10
    while True:
        states = {n["node"]: n["node_status"] for n in api(n2, "/api/v4/nodes")["data"]}
        if states.get("n3") == "Stopped":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    assert states["n1"] == states["n2"] == "Running"
    Paho(n2, "after-leave", protocol=V311).publish("rest/x", "still", qos=1)
    assert sub.expect().payload == b"still"


def test_what_waits_for_a_node_is_bounded_and_never_acknowledged_then_dropped(make_cluster):
    """Under strict durability, a full queue for a node that is away refuses the
    publisher (v5 PUBACK 0x97) rather than acknowledging and dropping."""
    c = make_cluster(2, extra="max_queued_messages = 5\n")
    n1, n2 = c.nodes
    Paho(n2, "away", protocol=V311, clean_start=False).subscribe("held/#", qos=1)
    wait_route(n1, "held/#", "n2")
    # Killed: a node that stops on purpose hands its sessions to n1 (test_cluster_sessions).
    n2.stop(signal.SIGKILL)
    n1.wait_for_log(r"cluster: node n2 at .* is down", 10)
    v5 = RawClient(n1.host, n1.port, version=5)
    v5.connect("filler")
    for k in range(8):
        v5.publish("held/x", str(k), qos=1, packet_id=k + 1)
    codes = [v5.recv_kind(PUBACK).code for _ in range(8)]
    assert codes == [0] * 5 + [0x97] * 3, codes
    # QoS 2 too: PUBREC 0x97 ends that flow, so the same packet id is free for a retry.
    v5.publish("held/x", "8", qos=2, packet_id=9)
    assert v5.recv_kind(PUBREC).code == 0x97
    # The first five wait for n2; it gets them once it is back.
    n2.start()
    n2.wait_for_log(r"cluster: linked to node n1\b", 20)
    back = Paho(n2, "away", protocol=V311, clean_start=False)
    got = sorted(int(back.expect(timeout=10).payload) for _ in range(5))
    assert got == [0, 1, 2, 3, 4]
    back.expect_none(1.0)
    # The refused QoS 2 message, sent again with its packet id now that there is room.
    v5.publish("held/x", "8", qos=2, packet_id=9)
    assert v5.recv_kind(PUBREC).code == 0
    v5.send(ack_packet(PUBREL, 9))
    assert v5.recv_kind(PUBCOMP).code in (None, 0)
    assert back.expect().payload == b"8"


@pytest.fixture
def netns(tmp_path):
    """A network namespace of the test's own, with loopback up; its /etc/hosts is
    /etc/netns/NAME/hosts (which `ip netns exec` mounts over the real one)."""
    name = f"tern-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    hosts = pathlib.Path("/etc/netns") / name
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        hosts.mkdir(parents=True)
        yield name, hosts / "hosts"
    finally:
        subprocess.run(["ip", "netns", "del", name])
        shutil.rmtree(hosts, ignore_errors=True)


def test_nodes_find_each_other_by_dns(make_cluster, netns):
    """`dns = NAME`: every address the name resolves to is a node, resolved again and
    again. The three nodes run in a namespace whose /etc/hosts gives the name three
    addresses; no node has a seed."""
    ns, hosts = netns
    hosts.write_text("".join(f"127.0.0.{i} tern.site.test\n" for i in (2, 3, 4)))
    c = make_cluster(3, prefix=("ip", "netns", "exec", ns), dns="tern.site.test")
    n1, _, n3 = c.nodes
    run = ["ip", "netns", "exec", ns]
    sub = subprocess.Popen(run + ["mosquitto_sub", "-h", n1.host, "-p", str(n1.port), "-t", "dns/#",
                                  "-q", "1", "-C", "1", "-W", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    n3.wait_for_log(r"cluster: node n1 routes at version \d+: [1-9]", 10)
    subprocess.run(run + ["mosquitto_pub", "-h", n3.host, "-p", str(n3.port), "-t", "dns/found",
                          "-q", "1", "-m", "by name"], check=True, timeout=10)
    out, err = sub.communicate(timeout=20)
    assert out.strip() == "by name", err


def find_devices(port, terns, certs, first_source=10):
    """A subscriber and a publisher that the balancer put on different nodes: devices
    from new source addresses until one lands elsewhere than the first."""
    sub = Device(port, f"127.0.0.{first_source}", "dev-sub", certs / "ca.pem")
    sub_node = serving(terns, "dev-sub", f"127.0.0.{first_source}")
    for k in range(first_source + 1, first_source + 40):
        pub = Device(port, f"127.0.0.{k}", f"dev-pub-{k}", certs / "ca.pem")
        pub_node = serving(terns, f"dev-pub-{k}", f"127.0.0.{k}")
        if pub_node is not sub_node:
            return (sub, sub_node), (pub, pub_node)
        pub.close()
    raise AssertionError("the balancer put every device on one node")


def exchange_both_ways(port, terns, certs):
    (a, node_a), (b, node_b) = find_devices(port, terns, certs)
    for receiver, at, sender, topic in ((a, node_a, b, "site/to-a"), (b, node_b, a, "site/to-b")):
        receiver.c.subscribe(topic, 1)
        for node in terns:
            if node is not at:
                wait_route(node, topic, at.dir.name)
        sender.c.publish(topic, topic.encode(), 1)
        assert receiver.messages.get(timeout=5) == topic.encode()
    a.close()
    b.close()


def haproxy_cluster(tmp_path, terns, port, certs, health="tcp"):
    """HAProxy terminating TLS, PROXY v2 to the nodes, balance source; health checks by
    TCP (with a PROXY header) or on the API's /status."""
    if health == "tcp":
        check, option = "check check-send-proxy", ""
    else:
        check, option = "check port {api}", "  option httpchk GET /status\n  http-check expect status 200\n"
    servers = "\n".join(
        f"  server {t.dir.name} {t.host}:{t.port} send-proxy-v2 {check.format(api=t.api_port)}"
        " inter 200ms fall 1 rise 1" for t in terns)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
  maxconn 200
defaults
  mode tcp
  timeout connect 2s
  timeout client 90s
  timeout server 90s
frontend mqtts
  bind 127.0.0.1:{port} ssl crt {certs / 'server.pem'}
  default_backend terns
backend terns
  balance source
  option redispatch
  retries 2
{option}{servers}
""")
    haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    time.sleep(0.7)
    assert haproxy.poll() is None, haproxy.stdout.read()
    return haproxy


@pytest.mark.parametrize("n", [2, 3])
def test_behind_haproxy_devices_on_different_nodes_talk_both_ways(make_cluster, tmp_path, certs, n):
    c = make_cluster(n, tcp_extra="proxy_protocol = true\n")
    port = free_port()
    haproxy = haproxy_cluster(tmp_path, c.nodes, port, certs)
    with in_front_of(haproxy, []):
        exchange_both_ways(port, c.nodes, certs)


@pytest.mark.parametrize("n", [2, 3])
def test_behind_nginx_devices_on_different_nodes_talk_both_ways(make_cluster, tmp_path, certs, n):
    c = make_cluster(n, tcp_extra="proxy_protocol = true\n")
    port = free_port()
    nginx = start_nginx(tmp_path, [f"{t.host}:{t.port}" for t in c.nodes], port, certs)
    with in_front_of(nginx, []):
        exchange_both_ways(port, c.nodes, certs)


def test_a_stopping_node_is_taken_out_of_the_balancer_before_its_clients_go(make_cluster, tmp_path, certs):
    """SIGTERM: /status answers 503 for stop_wait while clients stay connected; HAProxy's
    health check takes the node out, so a client that connects meanwhile, and the
    clients it then closes, reach the other node, where messages flow."""
    c = make_cluster(2, extra="stop_wait = 3\n", tcp_extra="proxy_protocol = true\n")
    port = free_port()
    haproxy = haproxy_cluster(tmp_path, c.nodes, port, certs, health="status")
    with in_front_of(haproxy, []):
        (a, node_a), (b, node_b) = find_devices(port, c.nodes, certs)
        mark = len(node_a.lines)
        os.killpg(node_a.proc.pid, signal.SIGTERM)
        node_a.wait_for_log(r"cluster: /status says 503", 5, start=mark)
        time.sleep(1.0)  # HAProxy checks every 200 ms: the node is down for it by now
        assert node_a.proc.poll() is None, "the node still serves its clients meanwhile"
        again = Device(port, "127.0.0.10", "dev-sub-again", certs / "ca.pem")
        assert serving([node_b], "dev-sub-again", "127.0.0.10") is node_b
        node_a.wait_for_log(r"cluster: left the cluster", 10, start=mark)
        again.c.subscribe("site/after", 1)
        time.sleep(0.2)
        b.c.publish("site/after", b"moved", 1)
        assert again.messages.get(timeout=5) == b"moved"
        again.close()
        b.close()
        a.c.loop_stop()


def test_every_node_bridges_what_was_published_on_it_and_the_centre_gets_it_once(make_cluster, tmp_path):
    """Every node runs the same [[bridge]]: what was published on a node goes up from
    that node only; what comes down reaches each node through its own bridge and is
    not passed to the peers again, so every subscriber gets each message once."""
    central = Mosquitto(tmp_path)
    try:
        bridge = (f'[[bridge]]\nname = "central"\naddresses = ["mqtt://127.0.0.1:{central.port}"]\n'
                  "reconnect_min_ms = 100\nreconnect_max_ms = 500\n"
                  '[[bridge.topic]]\npattern = "up/#"\ndirection = "out"\nqos = 1\n'
                  '[[bridge.topic]]\npattern = "down/#"\ndirection = "in"\nqos = 1\n')
        c = make_cluster(2, extra=bridge)
        watcher = Paho(central, "watcher", protocol=V311)
        watcher.subscribe("up/#", 1)
        local = {}
        for node in c.nodes:
            node.wait_for_log(r"bridge central connected to mqtt://", 10)
            local[node] = Paho(node, f"local-{node.dir.name}", protocol=V311)
            local[node].subscribe("up/#", 1)
            local[node].subscribe("down/#", 1)
        n1, n2 = c.nodes
        wait_route(n1, "up/#", "n2")
        wait_route(n2, "up/#", "n1")
        Paho(n1, "up-pub", protocol=V311).publish("up/a", "from n1", qos=1)
        assert watcher.expect().payload == b"from n1"
        for node in c.nodes:
            assert local[node].expect().payload == b"from n1"
        Paho(central, "down-pub", protocol=V311).publish("down/b", "from the centre", qos=1)
        for node in c.nodes:
            assert local[node].expect().payload == b"from the centre"
        watcher.expect_none(1.0)
        for node in c.nodes:
            local[node].expect_none(0.5)
    finally:
        central.stop()


def test_the_dashboard_shows_the_nodes(make_cluster, tmp_path):
    from test_browser import BROWSER_DIR, need_browser
    need_browser()
    c = make_cluster(2)
    n1 = c.nodes[0]
    port = int(n1.wait_for_log(r"listening name=dashboard addr=[\d.]+:(\d+)").group(1))
    shot = tmp_path / "cluster.png"
    out = subprocess.run(["node", str(BROWSER_DIR / "cluster.mjs"), f"http://127.0.0.1:{port}/",
                          "admin", API_SECRET, "n2", str(shot)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sees 2 of the 2 nodes" in out.stdout, out.stdout
    print(out.stdout, f"screenshot: {shot}")


def test_a_full_queue_on_the_subscribers_node_acts_as_on_one_node(make_cluster):
    """Node 2's subscriber is away with room for five messages: of ten published on
    node 1 (all acknowledged there, each kept for node 2 first), five wait for it and
    five are dropped and counted on node 2, as a single node does; nothing is lost
    between the nodes."""
    c = make_cluster(2, extra="[limits]\nmax_queued_messages = 5\n")
    n1, n2 = c.nodes
    away = Paho(n2, "slow", protocol=V311, clean_start=False)
    away.subscribe("full/#", qos=1)
    away.disconnect()
    wait_route(n1, "full/#", "n2")
    pub = RawClient(n1.host, n1.port, version=5)
    pub.connect("eager")
    for k in range(10):
        pub.publish("full/x", str(k), qos=1, packet_id=k + 1)
    assert [pub.recv_kind(PUBACK).code for _ in range(10)] == [0] * 10
    deadline = time.monotonic() + 5
    while api(n2, "/api/v4/metrics")["data"][0]["metrics"]["messages.dropped.queue_full"] < 5:
        assert time.monotonic() < deadline, "node 2 never dropped the five that did not fit"
        time.sleep(0.1)
    back = Paho(n2, "slow", protocol=V311, clean_start=False)
    assert sorted(int(back.expect().payload) for _ in range(5)) == [0, 1, 2, 3, 4]
    back.expect_none(1.0)
    assert api(n1, "/api/v4/nodes/n2")["data"]["queued"] == 0, "node 1 holds nothing for node 2"


def node_cert(d, name, certs, ca="ca"):
    """`d`/node.crt and node.key: `name`'s certificate (its DNS name is the node's name,
    for both ends of a link), signed by `certs`/`ca`.pem; `d`/ca.pem the CA."""
    d.mkdir(exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", f"/CN={name}")
    (d / "node.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                                f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{name}\n")
    run("x509", "-req", "-in", "node.csr", "-CA", str(certs / f"{ca}.pem"), "-CAkey", str(certs / f"{ca}.key"),
        "-CAcreateserial", "-out", "node.crt", "-days", "2", "-extfile", "node.ext")
    shutil.copy(certs / f"{ca}.pem", d / "ca.pem")


def test_links_over_mutual_tls(make_cluster, tmp_path, certs):
    """`cert`, `key`, `ca`: the links are mutual TLS, each end checking the other's
    certificate against the CA and the node's name; a node with a certificate from
    another CA is refused."""
    for i in (1, 2):
        node_cert(tmp_path / f"n{i}", f"n{i}", certs)
    tls = 'cert = "node.crt"\nkey = "node.key"\nca = "ca.pem"\n'
    c = make_cluster(2, extra=tls)
    n1, n2 = c.nodes
    sub = Paho(n2, "tls-sub", protocol=V5)
    sub.subscribe("sealed/#", qos=2)
    wait_route(n1, "sealed/#", "n2")
    Paho(n1, "tls-pub", protocol=V5).publish("sealed/x", "over TLS", qos=2)
    assert sub.expect().payload == b"over TLS"
    # A third node whose certificate another CA signed.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
                    "-out", "other.pem", "-days", "2", "-subj", "/CN=Other CA"], cwd=certs, check=True,
                   capture_output=True)
    node_cert(tmp_path / "n3", "n3", certs, ca="other")
    d = tmp_path / "n3"
    stranger = Broker(d, node_config(3, 3, tls), start_timeout=20)
    c.nodes.append(stranger)
    # n1 dials n3 (its name sorts first) and refuses the certificate, once in the log.
    n1.wait_for_log(r"WARN .*cluster: cannot link to node n3: cannot connect: invalid peer certificate", 20)
    time.sleep(3)
    warned = [line for line in n1.log_text().splitlines() if "WARN" in line and "cannot link to node n3" in line]
    assert len(warned) == 1, warned
    assert "linked to node n3" not in n1.log_text()
    # n2 dials n3 too: n3 refuses n2's certificate in its handshake, or n2 refuses n3's.
    assert "linked to node n2" not in stranger.log_text()
