#!/usr/bin/env python3
"""Measures Tern's cluster against a single Tern node on the same loopback load: there
is no Mosquitto figure to compare with (it has no cluster), so the ratio is the price
of crossing a node.

    bench/cluster.py                 # 3 rounds (about 5 minutes)
    bench/cluster.py --quick         # one short pass
    bench/cluster.py --write-doc     # also replace the cluster table in BENCHMARKS.md

Figures:
- fan-in QoS 0 and QoS 1 (8 publishers, one subscriber) and fan-out (one publisher,
  100 subscribers): all on one node, and with the publishers on node 1 and the
  subscribers on node 2 of a two-node cluster;
- the time from a SUBACK on node 2 to the first message published on node 1 for that
  filter (node 1 publishes to it every millisecond);
- the time a node started next to a node holding 10 000 routes takes to hold them all,
  from its exec;
- memory per route: RSS on the node that receives 10 000 routes, and on the node whose
  clients hold them beyond what the same subscriptions cost a single node;
- takeover: a persistent session with 0, 1 000 and 100 000 queued messages on node 1,
  its client's CONNECT on node 2 to the CONNACK (session present = 1).
"""

import argparse
import datetime
import os
import pathlib
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare import BENCH, RESULTS, ROOT, TERN, free_port, parse, raise_nofile, rss_kb, stop  # noqa: E402

SECRET = "bench-cluster-secret-0123"
ROUTES = 10_000
TAKEOVER_QUEUES = (0, 1_000, 100_000)


def node_config(i, peers, port):
    """Node i on 127.0.0.(i+1), MQTT on `port`, the cluster port 5370 of its address."""
    addr = f"127.0.0.{i + 1}"
    text = ('[listeners.ws]\nenabled = false\n[api]\nenabled = false\nsys_interval = 0\n'
            '[dashboard]\nenabled = false\n'
            f'[listeners.tcp]\nbind = "{addr}:{port}"\n'
            f'[node]\nname = "n{i}"\n')
    if peers:
        seeds = ", ".join(f'"127.0.0.{j + 1}:5370"' for j in peers)
        text += (f'[cluster]\nbind = "{addr}:5370"\nseeds = [{seeds}]\nsecret = "{SECRET}"\n'
                 "join_wait = 3\nstop_wait = 0\nmax_queued_messages = 10000000\n"
                 "max_queued_bytes = 17179869184\n"
                 f"[limits]\nmax_queued_messages = {max(TAKEOVER_QUEUES) * 2}\n")
    return text


class Node:
    def __init__(self, workdir, i, peers):
        self.dir = workdir / f"n{i}"
        self.dir.mkdir(exist_ok=True)
        self.addr = f"127.0.0.{i + 1}"
        self.port = free_port()
        conf = self.dir / "tern.toml"
        conf.write_text(node_config(i, peers, self.port))
        self.log_path = self.dir / "tern.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(TERN), "--config", str(conf)], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
                                     env=dict(os.environ, RUST_LOG="info,tern::cluster=debug"))

    def wait_log(self, pattern, timeout=30):
        """The time (monotonic) at which a line matching `pattern` was first seen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.log_path.read_text()):
                return time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.dir.name} exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.005)
        raise RuntimeError(f"{self.dir.name}: no {pattern!r} in {timeout} s")

    def stop(self):
        stop(self.proc)


def cluster(workdir, n=2):
    nodes = [Node(workdir, i, [j for j in range(1, n + 1) if j != i]) for i in range(1, n + 1)]
    for node in nodes:
        node.wait_log(r"listening name=tcp")
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.wait_log(rf"cluster: linked to node {other.dir.name}\b")
    return nodes


def bench(*args, timeout=300):
    out = subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[:200]}
    return parse(out.stdout.strip())


def throughput(workdir, scenario, duration, crossing):
    """One of tern-bench's scenarios, on one node or across two."""
    nodes = cluster(workdir) if crossing else [Node(workdir, 1, [])]
    try:
        if not crossing:
            nodes[0].wait_log(r"listening name=tcp")
        pub, sub = nodes[0], nodes[-1]
        return bench(scenario, "--addr", f"{pub.addr}:{pub.port}", "--sub-addr", f"{sub.addr}:{sub.port}",
                     "--pid", str(pub.proc.pid), "--duration", str(duration))
    finally:
        for node in nodes:
            node.stop()


def client(node, client_id):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.connect(node.addr, node.port)
    c.loop_start()
    return c


def first_delivery(workdir, samples):
    """Milliseconds from a SUBACK on node 2 to the first message from node 1: node 1
    publishes to one topic every millisecond; node 2 subscribes to it, receives,
    unsubscribes, and after a pause (the route's removal crosses too) starts again."""
    nodes = cluster(workdir)
    n1, n2 = nodes
    stop_flag = threading.Event()
    try:
        pub = client(n1, "lat-pub")

        def publish():
            while not stop_flag.is_set():
                pub.publish("first/now", b"x", 0)
                time.sleep(0.001)

        threading.Thread(target=publish, daemon=True).start()
        sub = client(n2, "lat-sub")
        got, subacked = threading.Event(), threading.Event()
        sub.on_subscribe = lambda *a: subacked.set()
        sub.on_message = lambda *a: got.set()
        times = []
        for _ in range(samples):
            got.clear()
            subacked.clear()
            sub.subscribe("first/now", 0)
            subacked.wait(5)
            t0 = time.monotonic()
            if got.wait(10):
                times.append((time.monotonic() - t0) * 1000)
            sub.unsubscribe("first/now")
            time.sleep(0.3)
        return {"p50_ms": f"{statistics.median(times):.1f}", "max_ms": f"{max(times):.1f}",
                "samples": str(len(times))}
    finally:
        stop_flag.set()
        for node in nodes:
            node.stop()


def subscribe_many(node, count):
    """`count` distinct filters held by persistent clients of `node`, 1 000 each (the
    default `max_subscriptions`), which then disconnect."""
    per_client, batch = 1000, 100
    for first in range(0, count, per_client):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"holder-{first}",
                        protocol=mqtt.MQTTv311, clean_session=False)
        done = threading.Semaphore(0)
        c.on_subscribe = lambda *a: done.release()
        c.connect(node.addr, node.port)
        c.loop_start()
        last = min(count, first + per_client)
        for start in range(first, last, batch):
            c.subscribe([(f"route/{k}/+", 0) for k in range(start, min(last, start + batch))])
        for _ in range(first, last, batch):
            assert done.acquire(timeout=30), "no SUBACK"
        c.disconnect()
        c.loop_stop()


def routes_and_memory(workdir):
    """RSS per route on both sides of a two-node cluster whose node 1 gets clients
    holding ROUTES filters (against what they cost a single node), and the time a
    fresh node 2 then takes from exec to holding them all."""
    (workdir / "single").mkdir()
    single = Node(workdir / "single", 1, [])
    single.wait_log(r"listening name=tcp")
    time.sleep(0.5)
    before = rss_kb(single.proc.pid)
    subscribe_many(single, ROUTES)
    time.sleep(0.5)
    single_per_sub = (rss_kb(single.proc.pid) - before) * 1024 / ROUTES
    single.stop()

    nodes = cluster(workdir)
    try:
        n1, n2 = nodes
        time.sleep(1.0)
        before1, before2 = rss_kb(n1.proc.pid), rss_kb(n2.proc.pid)
        subscribe_many(n1, ROUTES)
        n2.wait_log(rf"cluster: node n1 routes at version \d+: {ROUTES} \(", 60)
        time.sleep(1.0)
        holder_per_sub = (rss_kb(n1.proc.pid) - before1) * 1024 / ROUTES
        receiver_per_route = (rss_kb(n2.proc.pid) - before2) * 1024 / ROUTES
        n2.stop()
        # A new node (nothing stored) joins while node 1's clients hold the filters.
        shutil.rmtree(n2.dir)
        nodes[1] = n2 = Node(workdir, 2, [1])
        held = n2.wait_log(rf"cluster: node n1 routes at version \d+: {ROUTES} \(all\)", 60)
        took_ms = (held - n2.started) * 1000
    finally:
        for node in nodes:
            node.stop()
    return {"full_routes_ms": f"{took_ms:.0f}", "receiver_b_per_route": f"{receiver_per_route:.0f}",
            "holder_extra_b_per_route": f"{holder_per_sub - single_per_sub:.0f}",
            "single_b_per_sub": f"{single_per_sub:.0f}"}


def connect_packet(client_id):
    """An MQTT 3.1.1 CONNECT that resumes the session of `client_id`."""
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + struct.pack(">H", len(client_id)) + client_id.encode()
    return bytes([0x10, len(body)]) + body


def takeover(workdir, queued):
    """Milliseconds from a CONNECT on node 2 to its CONNACK, for a persistent session
    on node 1 holding `queued` QoS 1 messages."""
    nodes = cluster(workdir)
    n1, n2 = nodes
    try:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mover",
                          protocol=mqtt.MQTTv311, clean_session=False)
        subacked = threading.Event()
        sub.on_subscribe = lambda *a: subacked.set()
        sub.connect(n1.addr, n1.port)
        sub.loop_start()
        sub.subscribe("bench/#", 1)
        assert subacked.wait(10), "no SUBACK"
        sub.disconnect()
        sub.loop_stop()
        if queued:
            out = subprocess.run([str(BENCH), "publish", "--addr", f"{n1.addr}:{n1.port}",
                                  "--count", str(queued)],
                                 capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                return {"error": out.stderr.strip()[:200]}
        time.sleep(1.0)
        s = socket.create_connection((n2.addr, n2.port), timeout=30)
        t0 = time.monotonic()
        s.sendall(connect_packet("mover"))
        connack = b""
        while len(connack) < 4:
            chunk = s.recv(4 - len(connack))
            if not chunk:
                return {"error": "closed before CONNACK"}
            connack += chunk
        took = (time.monotonic() - t0) * 1000
        s.close()
        if connack[0] != 0x20 or connack[2] != 1 or connack[3] != 0:
            return {"error": f"CONNACK {connack.hex()}"}
        return {"ms": f"{took:.1f}"}
    finally:
        for node in nodes:
            node.stop()


def median(runs, key):
    values = [float(r[key]) for r in runs if key in r]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "–"
    return f"{v:,.0f}{unit}" if v >= 100 else f"{v:.3g}{unit}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one short round")
    ap.add_argument("--write-doc", action="store_true", help="replace the cluster table in BENCHMARKS.md")
    args = ap.parse_args()
    duration, samples = (0.5, 5) if args.quick else (5.0, 20)
    rounds = 1 if args.quick else args.rounds
    raise_nofile()
    if not (TERN.exists() and BENCH.exists()):
        sys.exit("build first: cargo build --release --workspace")
    results = {}
    raw = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for scenario in ("fanin-qos0", "fanin-qos1", "fanout"):
                for crossing in ((False, True) if r % 2 == 0 else (True, False)):
                    workdir = pathlib.Path(tmp) / f"{scenario}-{crossing}-{r}"
                    workdir.mkdir()
                    fields = throughput(workdir, scenario, duration, crossing)
                    key = (scenario, "two nodes" if crossing else "one node")
                    results.setdefault(key, []).append(fields)
                    raw.append(f"round={r} scenario={scenario} where={key[1].replace(' ', '-')} "
                               + " ".join(f"{k}={v}" for k, v in fields.items()))
                    print(raw[-1], flush=True)
            workdir = pathlib.Path(tmp) / f"first-{r}"
            workdir.mkdir()
            fields = first_delivery(workdir, samples)
            results.setdefault(("first", ""), []).append(fields)
            raw.append(f"round={r} scenario=first-delivery " + " ".join(f"{k}={v}" for k, v in fields.items()))
            print(raw[-1], flush=True)
            workdir = pathlib.Path(tmp) / f"routes-{r}"
            workdir.mkdir()
            fields = routes_and_memory(workdir)
            results.setdefault(("routes", ""), []).append(fields)
            raw.append(f"round={r} scenario=routes " + " ".join(f"{k}={v}" for k, v in fields.items()))
            print(raw[-1], flush=True)
            for queued in TAKEOVER_QUEUES:
                workdir = pathlib.Path(tmp) / f"takeover-{queued}-{r}"
                workdir.mkdir()
                fields = takeover(workdir, queued)
                results.setdefault(("takeover", queued), []).append(fields)
                raw.append(f"round={r} scenario=takeover queued={queued} "
                           + " ".join(f"{k}={v}" for k, v in fields.items()))
                print(raw[-1], flush=True)

    rows = []
    for scenario, unit in (("fanin-qos0", "msg/s"), ("fanin-qos1", "msg/s"), ("fanout", "deliveries/s")):
        one = median(results[(scenario, "one node")], "rate")
        two = median(results[(scenario, "two nodes")], "rate")
        loss = median(results[(scenario, "two nodes")], "loss")
        ratio = f"×{two / one:.2f}" if one and two else "–"
        lost = f"; {fmt(loss)} lost" if loss else ""
        rows.append(f"| {scenario} | {unit} | {fmt(one)} | {fmt(two)}{lost} | {ratio} |")
    first = results[("first", "")]
    routes = results[("routes", "")]
    rows += [
        f"| new subscription on node 2 to its first message from node 1 | ms, median of {samples} "
        f"(max) | – | {median(first, 'p50_ms'):.1f} ({median(first, 'max_ms'):.1f}) | |",
        f"| a node joining one whose clients hold {ROUTES:,} filters: exec to holding them all | ms | – | "
        f"{fmt(median(routes, 'full_routes_ms'))} | |",
        f"| memory per route on the node that receives it (an outbox subscription) | B RSS | – | "
        f"{fmt(median(routes, 'receiver_b_per_route'))} | |",
        f"| memory per filter on the node whose clients hold it, beyond a single node's | B RSS | "
        f"{fmt(median(routes, 'single_b_per_sub'))} per subscription | +{fmt(median(routes, 'holder_extra_b_per_route'))} | |",
    ]
    for queued in TAKEOVER_QUEUES:
        rows.append(f"| a persistent session with {queued:,} queued QoS 1 messages on node 1: its CONNECT "
                    f"on node 2 to CONNACK (session present) | ms | – | "
                    f"{fmt(median(results[('takeover', queued)], 'ms'))} | |")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    table = (f"Measured {now} on {platform.machine()}, {os.cpu_count()} cores; {rounds} round(s), "
             f"{duration:g} s per throughput run, medians; the two nodes on 127.0.0.2 and .3 of the same "
             "machine, default durability (`strict`).\n\n"
             "| scenario | unit | one node | two nodes (publishers on node 1, subscribers on node 2) | two / one |\n"
             "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print()
    print(table)
    RESULTS.mkdir(exist_ok=True)
    suffix = "cluster-quick" if args.quick else "cluster-latest"
    (RESULTS / f"{suffix}-raw.txt").write_text("\n".join(raw) + "\n")
    (RESULTS / f"{suffix}.md").write_text(table)
    if args.write_doc:
        doc = ROOT / "BENCHMARKS.md"
        text = doc.read_text()
        begin, end = "<!-- cluster:begin -->", "<!-- cluster:end -->"
        i, j = text.index(begin) + len(begin), text.index(end)
        doc.write_text(text[:i] + "\n" + table + text[j:])


if __name__ == "__main__":
    main()
