"""A cut between cluster nodes that heals by itself. Each node runs in a network
namespace of its own: the cluster's links cross a bridge in a hub namespace, where the
test cuts a node off with `ip link set ... down`; the test reaches each node over a veth
pair of its own, which the cut leaves alone. Addresses come from 198.18.0.0/15 (set
aside for tests like this one) and exist only inside these namespaces and their pairs.

Both sides keep serving through a 30 s cut while clients publish on each; once the link
is up again, routes, retained messages and session ownership converge without help, and
persistent subscribers get what the other side published meanwhile."""

import os
import re
import subprocess
import threading
import time

import pytest

from conftest import Broker
from paho_helpers import V311, Paho
from test_cluster import API_SECRET, SECRET, api
from test_cluster_sessions import status_code

CUT_SECONDS = 30


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Site:
    """`n` nodes, node i in namespace `tern-<tag>-<i>`: 198.18.0.i on the bridge of the
    hub namespace (the cluster), 198.19.i.2 on a pair to this namespace (the clients,
    the API), where this end is 198.19.i.1."""

    def __init__(self, tmp_path, n, extra=""):
        self.tag = f"{os.getpid() % 100000}"
        self.n = n
        # A run that was killed leaves its pairs here, holding the same addresses.
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        for name in re.findall(r"^(a\d+x\d+)@", links, re.M):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        self.hub = f"tern-{self.tag}-hub"
        self.namespaces = []
        self.nodes = []
        ip("netns", "add", self.hub)
        self.namespaces.append(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i in range(1, n + 1):
            ns = f"tern-{self.tag}-{i}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # The cluster's side: c<i> in the node, h<i> on the hub's bridge.
            ip("link", "add", f"c{i}x{self.tag}", "type", "veth", "peer", "name", self.port_name(i))
            ip("link", "set", f"c{i}x{self.tag}", "netns", ns)
            ip("link", "set", self.port_name(i), "netns", self.hub)
            ip("-n", self.hub, "link", "set", self.port_name(i), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"198.18.0.{i}/24", "dev", f"c{i}x{self.tag}")
            ip("-n", ns, "link", "set", f"c{i}x{self.tag}", "up")
            # The test's side: a<i> here, b<i> in the node.
            ip("link", "add", f"a{i}x{self.tag}", "type", "veth", "peer", "name", f"b{i}x{self.tag}")
            ip("link", "set", f"b{i}x{self.tag}", "netns", ns)
            ip("addr", "add", f"198.19.{i}.1/30", "dev", f"a{i}x{self.tag}")
            ip("link", "set", f"a{i}x{self.tag}", "up")
            ip("-n", ns, "addr", "add", f"198.19.{i}.2/30", "dev", f"b{i}x{self.tag}")
            ip("-n", ns, "link", "set", f"b{i}x{self.tag}", "up")
        for i in range(1, n + 1):
            d = tmp_path / f"n{i}"
            d.mkdir()
            seeds = ", ".join(f'"198.18.0.{j}:5370"' for j in range(1, n + 1) if j != i)
            config = (f'[node]\nname = "n{i}"\n'
                      f'[listeners.tcp]\nbind = "198.19.{i}.2:1883"\n'
                      f'[api]\nbind = "198.19.{i}.2:8081"\napp_secret = "{API_SECRET}"\n'
                      f'[cluster]\nbind = "198.18.0.{i}:5370"\nseeds = [{seeds}]\n'
                      f'secret = "{SECRET}"\njoin_wait = 3\nstop_wait = 1\n{extra}')
            prefix = ("ip", "netns", "exec", f"tern-{self.tag}-{i}")
            self.nodes.append(Broker(d, config, prefix=prefix, start_timeout=20))
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.wait_for_log(rf"cluster: linked to node {other.dir.name}\b", 20)

    def port_name(self, i):
        return f"h{i}x{self.tag}"

    def cut(self, i):
        """Node i loses the others (its port on the hub's bridge goes down)."""
        ip("-n", self.hub, "link", "set", self.port_name(i), "down")

    def heal(self, i):
        ip("-n", self.hub, "link", "set", self.port_name(i), "up")

    def close(self):
        for node in self.nodes:
            node.stop()
            (node.dir / "tern.log").write_text(node.log_text())
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        # A namespace is torn down in the background: its pairs go now.
        for i in range(1, self.n + 1):
            subprocess.run(["ip", "link", "del", f"a{i}x{self.tag}"], capture_output=True)


@pytest.fixture
def make_site(tmp_path):
    sites = []

    def make(n, extra=""):
        site = Site(tmp_path, n, extra)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


class Clients:
    """Paho clients that are all disconnected at the end: one left reconnecting would
    take over its id from the next test's client on the same address."""

    def __init__(self):
        self.all = []

    def __call__(self, *args, **kwargs):
        client = Paho(*args, **kwargs)
        self.all.append(client)
        return client

    def close(self):
        for client in self.all:
            try:
                client.disconnect()
            except Exception:
                pass


@pytest.fixture
def clients():
    made = Clients()
    yield made
    made.close()


def drain(client, quiet=0.2):
    """The payloads that arrive until none has for `quiet` seconds."""
    got = []
    while True:
        try:
            got.append(client.expect(timeout=quiet).payload.decode())
        except Exception:
            return got


def retained_view(node, prefix):
    c = Paho(node, protocol=V311)
    c.subscribe(f"{prefix}/#", 1)
    got = {}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            m = c.expect(timeout=0.5)
        except Exception:
            break
        got[m.topic] = m.payload.decode()
    c.disconnect()
    return got


def owners(node):
    return api(node, "/api/v4/cluster")["data"]["sessions_owned"]


@pytest.mark.parametrize("nodes", [3, 2])
def test_a_cut_between_nodes_heals_by_itself(make_site, clients, nodes):
    """Node `nodes` is cut off from the rest for 30 s while both sides take
    publishes, a new subscription and a persistent client that moves across the cut;
    then the link comes back. Nothing is lost on either side, the retained messages,
    routes and ownership records converge, and /status followed `isolated_status =
    "minority"` (503 on the lone node of three; never with two)."""
    site = make_site(nodes)
    left, right = site.nodes[0], site.nodes[-1]
    # Persistent subscribers on both sides, and a client with a session on the left that
    # reconnects on the right during the cut.
    left_sub = clients(left, "left-sub", protocol=V311, clean_start=False)
    left_sub.subscribe("cut/#", 1)
    right_sub = clients(right, "right-sub", protocol=V311, clean_start=False)
    right_sub.subscribe("cut/#", 1)
    mover = clients(left, "mover", protocol=V311, clean_start=False)
    mover.subscribe("mover/#", 1)
    mover.disconnect()
    for node, on in ((left, right), (right, left)):
        deadline = time.monotonic() + 10
        while not any(r["topic"] == "cut/#" and r["node"] == on.dir.name
                      for r in api(node, "/api/v4/routes")["data"]):
            assert time.monotonic() < deadline, f"{node.dir.name} lacks {on.dir.name}'s route"
            time.sleep(0.05)
    left_pub = clients(left, "left-pub", protocol=V311)
    right_pub = clients(right, "right-pub", protocol=V311)
    left_pub.publish("cut/retained/both", "left, before the cut", 1, retain=True)

    site.cut(nodes)
    cut_at = time.monotonic()
    stop = threading.Event()
    sent = {"left": [], "right": []}

    def publish(name, client):
        k = 0
        while not stop.is_set():
            payload = f"{name}-{k}"
            info = client.publish(f"cut/{name}/{k}", payload, 1)
            assert info.is_published(), f"{name} was not acknowledged {payload}"
            sent[name].append(payload)
            k += 1
            time.sleep(0.1)

    threads = [threading.Thread(target=publish, args=(name, client), daemon=True)
               for name, client in (("left", left_pub), ("right", right_pub))]
    for t in threads:
        t.start()
    # The right side notices it is alone (gossip calls the others down within seconds).
    right.wait_for_log(r"cluster: node n1 at .* is down", 15)
    left_pub.publish("cut/retained/left", "set on the left", 1, retain=True)
    right_pub.publish("cut/retained/right", "set on the right", 1, retain=True)
    time.sleep(0.5)
    right_pub.publish("cut/retained/both", "right, during the cut", 1, retain=True)
    # A subscription made on the right during the cut, and the mover's session taken
    # there while its node cannot be reached (`on_owner_unreachable = "rebuild"`).
    late = clients(right, "late-sub", protocol=V311, clean_start=False)
    late.subscribe("late/#", 1)
    moved = clients(right, "mover", protocol=V311, clean_start=False)
    assert moved.flags.session_present, "the mover's session was not rebuilt on the right"
    moved.disconnect()
    expected_status = {3: (200, 503), 2: (200, 200)}[nodes]
    deadline = time.monotonic() + 15
    while (status_code(left), status_code(right)) != expected_status:
        # The lone node of three says 503 once gossip calls both others down.
        assert time.monotonic() < deadline, (status_code(left), status_code(right))
        time.sleep(0.2)
    # Both sides served throughout.
    while time.monotonic() < cut_at + CUT_SECONDS:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(sent["left"]) > 50 and len(sent["right"]) > 50, {k: len(v) for k, v in sent.items()}
    assert (status_code(left), status_code(right)) == expected_status

    site.heal(nodes)
    healed_at = time.monotonic()
    # Each side's persistent subscriber gets everything, its own side's as it happened
    # and the other side's once the link is back.
    got_left, got_right = [], []
    deadline = healed_at + 60
    while time.monotonic() < deadline:
        got_left += drain(left_sub)
        got_right += drain(right_sub)
        missing_left = set(sent["right"]) - set(got_left)
        missing_right = set(sent["left"]) - set(got_right)
        if not missing_left and not missing_right:
            break
    drained = time.monotonic() - healed_at
    assert not missing_left, f"the left lost {len(missing_left)} of the right's, e.g. {sorted(missing_left)[:3]}"
    assert not missing_right, f"the right lost {len(missing_right)} of the left's, e.g. {sorted(missing_right)[:3]}"
    for name, got in (("left", got_left), ("right", got_right)):
        # In order per publisher.
        for side in ("left", "right"):
            seq = [int(p.rsplit("-", 1)[1]) for p in got if p.startswith(f"{side}-")]
            first = [k for i, k in enumerate(seq) if k not in seq[:i]]
            assert first == sorted(first), f"{name} got {side}'s messages out of order"
    # The subscription made during the cut reaches across, once routes converged.
    deadline = healed_at + 30
    while not any(r["topic"] == "late/#" and r["node"] == right.dir.name
                  for r in api(left, "/api/v4/routes")["data"]):
        assert time.monotonic() < deadline, "the late subscription's route never reached the left"
        time.sleep(0.1)
    left_pub.publish("late/x", "after the heal", 1)
    assert late.expect(timeout=10).payload == b"after the heal"
    # Retained messages converge: the later write wins on a topic set on both sides.
    want = {"cut/retained/both": "right, during the cut", "cut/retained/left": "set on the left",
            "cut/retained/right": "set on the right"}
    deadline = healed_at + 30
    while True:
        views = [retained_view(node, "cut/retained") for node in site.nodes]
        if all(v == want for v in views):
            break
        assert time.monotonic() < deadline, views
    # Ownership converges: every node says the mover's session is the right's.
    deadline = healed_at + 30
    while True:
        seen = [owners(node) for node in site.nodes]
        if all(s == seen[0] for s in seen) and seen[0].get(right.dir.name, 0) >= 3:
            break
        assert time.monotonic() < deadline, seen
    converged = time.monotonic() - healed_at
    assert status_code(right) == 200
    print(f"\n{nodes} nodes: {len(sent['left'])} + {len(sent['right'])} messages during a "
          f"{CUT_SECONDS} s cut; delivered across {drained:.2f} s after the heal, "
          f"everything converged after {converged:.2f} s")
