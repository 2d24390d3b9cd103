#!/usr/bin/env python3
"""Runs Tern and its peers (Mosquitto; rumqttd when installed) one after the other on
the same scenarios, alternating the order each round and starting every broker fresh
for every scenario, then prints medians, min-max and the Tern/peer ratios.

    bench/compare.py                 # 3 rounds, full scenarios (about 10 minutes)
    bench/compare.py --quick         # one short pass of every scenario (CI)
    bench/compare.py --write-doc     # also replace the table in BENCHMARKS.md
    bench/compare.py --only tls-handshakes,tls-fanin-qos0   # some scenarios only
"""

import argparse
import datetime
import os
import pathlib
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TERN = ROOT / "target" / "release" / "tern"
BENCH = ROOT / "target" / "release" / "tern-bench"
RESULTS = ROOT / "bench" / "results"

# (scenario, headline metric, unit, higher is better)
SCENARIOS = [
    ("fanin-qos0", "rate", "msg/s", True),
    ("fanin-qos1", "rate", "msg/s", True),
    ("qos1-sweep", "rate", "msg/s lossless", True),
    ("fanout", "rate", "deliveries/s", True),
    ("latency", "p99_us", "µs p99", False),
    ("connections", "rate", "connects/s", True),
]
# Durable sessions: Tern `strict` and `batched` against Mosquitto with persistence on
# (its one mode: it writes its whole state every autosave_interval and at exit).
DURABLE = [
    ("persist-strict", "rate", "msg/s to an offline persistent subscriber", True),
    ("persist-batched", "rate", "msg/s to an offline persistent subscriber", True),
    ("startup-sessions", "startup_ms", "ms to first CONNACK with stored sessions", False),
]
# MQTT over the broker's own TLS listener (an ECDSA P-256 certificate, TLS 1.3, every
# connection a full handshake): Tern's rustls against Mosquitto's OpenSSL.
TLS = [
    ("tls-handshakes", "rate", "TLS handshakes/s (each with MQTT CONNECT)", True),
    ("tls-fanin-qos0", "rate", "msg/s over TLS", True),
    ("tls-connections", "rss_per_conn_bytes", "B RSS per idle TLS connection", False),
]
TLS_BENCH = {"tls-handshakes": "handshakes", "tls-fanin-qos0": "fanin-qos0", "tls-connections": "connections"}
# Tern with its dashboard on (API and dashboard ports open, nobody looking): every
# publish updates the topic tree, the difference from fanin-* is that cost. Tern only.
DASHBOARD = [
    ("fanin-qos0-dashboard", "rate", "msg/s, the dashboard on (its topic tree recording)", True),
    ("fanin-qos1-dashboard", "rate", "msg/s, the dashboard on (its topic tree recording)", True),
]
DASHBOARD_BENCH = {"fanin-qos0-dashboard": "fanin-qos0", "fanin-qos1-dashboard": "fanin-qos1"}
# Tern always sets TCP_NODELAY; Mosquitto does only when told. Where Nagle's algorithm
# only adds delay (a handshake, one message at a time) Mosquitto is told, or its figure
# would measure the 40 ms delayed-ACK timer; where it batches small writes (the
# throughput scenarios) it runs as shipped, which is faster there.
NODELAY = {"latency", "connections", "tls-handshakes", "tls-connections"}
CERTS = None  # set by main()
# The bridge (the broker under test at the edge, Tern as the central broker for both):
# QoS 1 forwarding from edge publishers to a central subscriber, and the time to drain
# a stored backlog once the uplink returns.
BRIDGE = [
    ("bridge-forward", "rate", "msg/s from edge publishers to a central subscriber (QoS 1)", True),
    ("bridge-drain", "drain_ms", "ms from the centre's return to the last of the stored backlog", False),
]
CENTRAL = None  # the central broker's port in a bridge scenario: the directory with ca.pem, server.crt, server.key
# Not comparable as a ratio: Mosquitto writes its state only every autosave_interval
# and at exit, so what it wrote during a run says nothing about its wear.
NO_RATIO = {"disk_bytes_per_msg"}
PERSISTENT = {"persist-strict", "persist-batched", "startup-sessions"}
EXTRA = [  # further figures shown per scenario: (scenario, metric, unit, higher is better)
    ("persist-strict", "disk_bytes_per_msg", "disk B written/msg", False),
    ("persist-batched", "disk_bytes_per_msg", "disk B written/msg", False),
    ("persist-strict", "loss", "acknowledged, not delivered", False),
    ("persist-batched", "loss", "acknowledged, not delivered", False),
    ("startup-sessions", "sessions", "sessions stored", True),
    ("fanin-qos0", "loss", "lost msgs", False),
    ("fanin-qos1", "loss", "lost msgs", False),
    ("latency", "p50_us", "µs p50", False),
    ("latency", "p999_us", "µs p99.9", False),
    ("connections", "rss_per_conn_bytes", "B RSS/conn", False),
    ("bridge-forward", "loss", "acknowledged at the edge, not delivered at the centre", False),
    ("bridge-drain", "rate", "msg/s while the backlog drains", True),
    ("bridge-drain", "loss", "stored at the edge, not delivered at the centre", False),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class Broker:
    """How to start one kind of broker on a port."""

    def __init__(self, name, binary):
        self.name, self.binary = name, binary

    def command(self, port, workdir, scenario=""):
        tls = scenario.startswith("tls-")
        if self.name.startswith("tern"):
            conf = workdir / "tern.toml"
            # The MQTT/TCP listener only, as Mosquitto's and rumqttd's configurations.
            text = ('[listeners.ws]\nenabled = false\n[api]\nenabled = false\nsys_interval = 0\n'
                    '[dashboard]\nenabled = false\n')
            text += f'[listeners.tcp]\nbind = "127.0.0.1:{port}"\n'
            if scenario in DASHBOARD_BENCH:
                text = text.replace('[api]\nenabled = false', '[api]\nbind = "127.0.0.1:0"\napp_secret = "bench"')
                text = text.replace('[dashboard]\nenabled = false', '[dashboard]\nbind = "127.0.0.1:0"')
            if scenario == "central":
                text += "[limits]\nmax_queued_messages = 10000000\nmax_queued_bytes = 17179869184\n"
            if scenario.startswith("bridge-"):
                text += (f'[[bridge]]\nname = "central"\naddresses = ["mqtt://127.0.0.1:{CENTRAL}"]\n'
                         "reconnect_min_ms = 1000\nreconnect_max_ms = 1000\nmax_queued_messages = 10000000\n"
                         "max_queued_bytes = 17179869184\n"
                         '[[bridge.topic]]\npattern = "bench/#"\ndirection = "out"\nqos = 1\n')
            if tls:
                text = text.replace(f'bind = "127.0.0.1:{port}"', 'bind = "127.0.0.1:0"')
                text += (f'[listeners.tls]\nbind = "127.0.0.1:{port}"\n'
                         f'cert = "{CERTS}/server.crt"\nkey = "{CERTS}/server.key"\n')
            if scenario.startswith("persist-"):
                durability = scenario.split("-", 1)[1]
                text += (f'[storage]\ndurability = "{durability}"\n'
                         "[limits]\nmax_queued_messages = 100000000\nmax_queued_bytes = 17179869184\n")
            conf.write_text(text)
            return [str(self.binary), "--config", str(conf)]
        if self.name == "mosquitto":
            conf = workdir / "mosquitto.conf"
            text = f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            if scenario in NODELAY:
                text += "set_tcp_nodelay true\n"
            if scenario.startswith("bridge-"):
                # As the Tern edge: a persistent remote session, an unbounded queue, a
                # reconnect every second.
                text += (f"max_queued_messages 0\nconnection central\naddress 127.0.0.1:{CENTRAL}\n"
                         "topic bench/# out 1\ncleansession false\nrestart_timeout 1\n")
            if tls:
                text += f"certfile {CERTS}/server.crt\nkeyfile {CERTS}/server.key\n"
            if scenario in PERSISTENT:
                text += (f"persistence true\npersistence_location {workdir}/\n"
                         "max_queued_messages 0\nmax_queued_bytes 0\n")
            conf.write_text(text)
            return [str(self.binary), "-c", str(conf)]
        if self.name == "rumqttd":
            conf = workdir / "rumqttd.toml"
            conf.write_text(RUMQTTD_CONFIG.format(port=port))
            return [str(self.binary), "--config", str(conf)]
        raise ValueError(self.name)

    def start(self, port, workdir, scenario=""):
        proc = subprocess.Popen(self.command(port, workdir, scenario), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {proc.returncode}")
                time.sleep(0.01)
        proc.kill()
        raise RuntimeError(f"{self.name} did not listen on {port}")


RUMQTTD_CONFIG = """id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 100
dynamic_filters = true
"""


def rss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse(line):
    fields = dict(kv.split("=", 1) for kv in line.split())
    return fields


def stop(proc, timeout=10):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_scenario(broker, scenario, args, workdir):
    port = free_port()
    proc = broker.start(port, workdir, scenario)
    try:
        extra = []
        if scenario == "connections":
            extra = ["--connections", str(args.connections)]
        if scenario == "tls-connections":
            extra = ["--connections", str(args.tls_connections)]
        if scenario in TLS_BENCH:
            extra += ["--tls-ca", f"{CERTS}/ca.pem"]
        bench_scenario = "persist-qos1" if scenario.startswith("persist-") else scenario
        bench_scenario = TLS_BENCH.get(scenario, DASHBOARD_BENCH.get(scenario, bench_scenario))
        duration = args.sweep_duration if scenario == "qos1-sweep" else args.duration
        cmd = [str(BENCH), bench_scenario, "--addr", f"127.0.0.1:{port}", "--pid", str(proc.pid),
               "--duration", str(duration), *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            return {"error": out.stderr.strip().replace(" ", "_")[:200]}
        return parse(out.stdout.strip())
    finally:
        stop(proc)


def run_startup_sessions(broker, args, workdir):
    """Leaves `args.sessions` persistent sessions behind, stops the broker, and times
    its next start to the first CONNACK."""
    port = free_port()
    proc = broker.start(port, workdir, "startup-sessions")
    try:
        cmd = [str(BENCH), "sessions", "--addr", f"127.0.0.1:{port}", "--connections", str(args.sessions)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return {"error": out.stderr.strip().replace(" ", "_")[:200]}
    finally:
        stop(proc, timeout=120)
    port = free_port()
    cmd = [str(BENCH), "startup", "--addr", f"127.0.0.1:{port}", "--",
           *broker.command(port, workdir, "startup-sessions")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return {"error": out.stderr.strip().replace(" ", "_")[:200]}
    fields = parse(out.stdout.strip())
    fields["sessions"] = str(args.sessions)
    return fields


def bench(*args, timeout=300):
    out = subprocess.run([str(BENCH), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr.strip().replace(" ", "_")[:200]}
    return parse(out.stdout.strip())


def run_bridge(broker, scenario, args, workdir):
    """The broker under test as the edge, bridging `bench/#` out to a Tern centre."""
    global CENTRAL
    central_dir, edge_dir = workdir / "central", workdir / "edge"
    central_dir.mkdir()
    edge_dir.mkdir()
    os.chmod(central_dir, 0o777)
    os.chmod(edge_dir, 0o777)
    CENTRAL = free_port()
    centre = Broker("tern", TERN)
    central = centre.start(CENTRAL, central_dir, "central")
    port = free_port()
    edge = None
    try:
        if scenario == "bridge-forward":
            edge = broker.start(port, edge_dir, scenario)
            time.sleep(1.5)  # the bridge connects
            return bench("fanin-qos1", "--addr", f"127.0.0.1:{port}", "--sub-addr", f"127.0.0.1:{CENTRAL}",
                         "--pid", str(edge.pid), "--duration", str(args.duration))
        # bridge-drain: a persistent central subscriber, the centre down, a backlog
        # published at the edge, the centre back.
        made = bench("drain", "--addr", f"127.0.0.1:{CENTRAL}", "--count", "0")
        if "error" in made:
            return made
        stop(central)
        edge = broker.start(port, edge_dir, scenario)
        published = bench("publish", "--addr", f"127.0.0.1:{port}", "--count", str(args.backlog))
        if "error" in published:
            return published
        central = centre.start(CENTRAL, central_dir, "central")
        fields = bench("drain", "--addr", f"127.0.0.1:{CENTRAL}", "--count", str(args.backlog))
        fields["backlog"] = published.get("acked", "")
        return fields
    finally:
        if edge is not None:
            stop(edge)
        stop(central)


def time_to_connack(broker, workdir):
    port = free_port()
    cmd = [str(BENCH), "startup", "--addr", f"127.0.0.1:{port}", "--", *broker.command(port, workdir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[:200]}
    return parse(out.stdout.strip())


def run_startup(broker, workdir):
    """Exec to first CONNACK twice: on an empty data directory (a board's very first
    start: Tern creates its store) and again over what that start left (every start
    after a reboot or a power cut)."""
    first = time_to_connack(broker, workdir)
    fields = time_to_connack(broker, workdir)
    fields["first_start_ms"] = first.get("startup_ms", "")
    # Idle RSS one second after start, with nothing connected.
    port = free_port()
    proc = broker.start(port, workdir)
    time.sleep(1.0)
    fields["idle_rss_kb"] = str(rss_kb(proc.pid))
    stop(proc)
    fields["binary_kb"] = str(os.path.getsize(broker.binary) // 1024)
    return fields


def make_certs(d):
    """A throwaway CA and an ECDSA P-256 server certificate for 127.0.0.1, both brokers'."""
    d.mkdir()

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    for f in d.iterdir():
        os.chmod(f, 0o644)
    return d


def fmt(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one short round of every scenario")
    ap.add_argument("--peers", default="mosquitto,rumqttd",
                    help="comma-separated; NAME=PATH adds another Tern build as a peer "
                         "(tern-before=/tmp/tern: this tree against an older one, same run)")
    ap.add_argument("--only", help="comma-separated scenarios to run (default: all)")
    ap.add_argument("--write-doc", action="store_true", help="replace the table in BENCHMARKS.md")
    args = ap.parse_args()
    args.duration, args.sweep_duration, args.connections, args.sessions = 5.0, 2.0, 10000, 100000
    args.tls_connections, args.backlog = 2000, 100000
    if args.quick:
        args.rounds, args.duration, args.sweep_duration, args.connections = 1, 0.5, 0.3, 1000
        args.sessions, args.tls_connections, args.backlog = 2000, 200, 5000

    nofile = raise_nofile()
    subprocess.run(["cargo", "build", "--release", "--locked", "--workspace"], cwd=ROOT, check=True)
    brokers = [Broker("tern", TERN)]
    for peer in args.peers.split(","):
        if "=" in peer:
            name, path = peer.split("=", 1)
            if not name.startswith("tern-") or not os.access(path, os.X_OK):
                sys.exit(f"--peers {peer}: expected tern-NAME=PATH to a tern binary")
            brokers.append(Broker(name, pathlib.Path(path)))
            continue
        path = shutil_which(peer, ["/usr/sbin/mosquitto"] if peer == "mosquitto" else [])
        if path:
            brokers.append(Broker(peer, path))
        elif peer == "mosquitto" or os.environ.get("CI") == "true" and peer == "mosquitto":
            sys.exit("mosquitto is not installed (apt-get install mosquitto)")
        else:
            print(f"# {peer} not installed; left out", flush=True)

    raw = []
    results = {}  # (broker, scenario) -> list of dicts
    suffix = "quick" if args.quick else "latest"
    if args.only and not args.write_doc:
        suffix = "partial"  # a look at some scenarios leaves the last full run alone
    if args.only and args.write_doc:
        # Rerunning some scenarios: the others keep their lines from the last full run.
        for line in (RESULTS / f"{suffix}-raw.txt").read_text().splitlines():
            fields = parse(line)
            if fields["scenario"] not in args.only.split(","):
                raw.append(line)
                results.setdefault((fields["broker"], fields["scenario"]), []).append(fields)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        os.chmod(workdir, 0o777)
        global CERTS
        CERTS = make_certs(workdir / "certs")
        for r in range(args.rounds):
            order = brokers if r % 2 == 0 else list(reversed(brokers))
            for broker in order:
                for scenario, *_ in SCENARIOS + [("startup",)] + DURABLE + TLS + BRIDGE + DASHBOARD:
                    if args.only and scenario not in args.only.split(","):
                        continue
                    if scenario in PERSISTENT and broker.name == "rumqttd":
                        continue  # keeps nothing on disk
                    if scenario in TLS_BENCH and broker.name == "rumqttd":
                        continue  # its TLS listener needs a config of its own; not compared
                    if scenario.startswith("bridge-") and broker.name == "rumqttd":
                        continue  # no bridge to a plain MQTT broker
                    if scenario in DASHBOARD_BENCH and not broker.name.startswith("tern"):
                        continue  # Tern's own dashboard
                    # Every run starts with an empty data directory.
                    rundir = workdir / f"{r}-{broker.name}-{scenario}"
                    rundir.mkdir()
                    os.chmod(rundir, 0o777)
                    if scenario == "startup":
                        fields = run_startup(broker, rundir)
                    elif scenario.startswith("bridge-"):
                        fields = run_bridge(broker, scenario, args, rundir)
                    elif scenario == "startup-sessions":
                        fields = run_startup_sessions(broker, args, rundir)
                    else:
                        fields = run_scenario(broker, scenario, args, rundir)
                    shutil.rmtree(rundir, ignore_errors=True)
                    line = f"round={r} broker={broker.name} scenario={scenario} " + " ".join(
                        f"{k}={v}" for k, v in fields.items() if k != "scenario")
                    print(line, flush=True)
                    raw.append(line)
                    results.setdefault((broker.name, scenario), []).append(fields)

    table = render(brokers, results, args, nofile)
    print()
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{suffix}-raw.txt").write_text("\n".join(raw) + "\n")
    (RESULTS / f"{suffix}.md").write_text(table + "\n")
    if args.write_doc:
        doc = ROOT / "BENCHMARKS.md"
        text = doc.read_text()
        start, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        doc.write_text(before + start + "\n" + table + "\n" + end + after)
    errors = [l for l in raw if "error=" in l]
    if errors and os.environ.get("CI") == "true":
        sys.exit("scenarios failed:\n" + "\n".join(errors))


def shutil_which(name, extra):
    import shutil
    found = shutil.which(name)
    if found:
        return found
    for path in extra:
        if os.path.exists(path):
            return path
    return None


def values(results, broker, scenario, metric):
    out = []
    for fields in results.get((broker, scenario), []):
        try:
            out.append(float(fields[metric]))
        except (KeyError, ValueError):
            pass
    return out


def render(brokers, results, args, nofile):
    names = [b.name for b in brokers]
    peers = names[1:]
    head = (f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
            f"{platform.node()}; {args.rounds} round(s), {args.duration:g} s per scenario, "
            f"order alternating, every broker started fresh per scenario; open-file limit {nofile}. "
            f"Cells: median (min–max). Ratio: Tern / peer, > 1 means Tern is better "
            f"(for latency, loss and memory the peer's figure is divided by Tern's).")
    cols = ["scenario", "metric"] + names + [f"tern vs {p}" for p in peers] + ["limit"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = [(s, m, u, hb) for s, m, u, hb in SCENARIOS + DURABLE + TLS + BRIDGE + DASHBOARD]
    rows += [(s, m, u, hb) for s, m, u, hb in EXTRA]
    rows += [("startup", "startup_ms", "ms to first CONNACK", False),
             ("startup", "first_start_ms", "ms to first CONNACK, empty data dir", False),
             ("startup", "idle_rss_kb", "KiB idle RSS", False),
             ("startup", "binary_kb", "KiB binary", False)]
    rows += [(s, "peak_rss_kb", "KiB peak RSS", False) for s, *_ in SCENARIOS]
    rows += [("tls-connections", "rate", "TLS connects/s (with SUBSCRIBE, 64 at a time)", True)]
    order = {s: i for i, (s, *_) in enumerate(SCENARIOS + [("startup",)] + DURABLE + TLS + BRIDGE + DASHBOARD)}
    rows.sort(key=lambda r: order[r[0]])
    for scenario, metric, unit, higher in rows:
        cells, medians = [], {}
        for n in names:
            v = values(results, n, scenario, metric)
            if not v:
                cells.append("—")
                continue
            med = statistics.median(v)
            medians[n] = med
            cells.append(fmt(med) if len(v) == 1 else f"{fmt(med)} ({fmt(min(v))}–{fmt(max(v))})")
        ratios = []
        for p in peers:
            t, q = medians.get("tern"), medians.get(p)
            if t is None or q is None or metric in NO_RATIO:
                ratios.append("—")
            elif higher:
                ratios.append(f"×{t / q:.2f}" if q else "—")
            else:
                ratios.append(f"×{q / t:.2f}" if t else ("×∞" if q else "="))
        limit = ""
        if metric == "rate":
            bound = [n for n in names
                     if statistics.median(values(results, n, scenario, "gen_cpu") or [0])
                     > statistics.median(values(results, n, scenario, "broker_cpu") or [0])]
            limit = ("generator-bound: " + ", ".join(bound)) if bound else "broker"
        lines.append(f"| {scenario} | {unit} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {limit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
