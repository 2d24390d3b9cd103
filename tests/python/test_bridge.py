"""The bridge (issue 9): Tern at the edge carries topics to and from a central broker
(Debian's Mosquitto, or another Tern), keeps what it accepted while the uplink is down,
and survives lost acknowledgements, failover, bad credentials and `kill -9`."""

import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import Broker, free_port, run_tern
from paho_helpers import V311, V5, Paho


class Mosquitto:
    """Debian's Mosquitto as the central broker, on a port of its own."""

    def __init__(self, tmp_path, name="central", extra="", port=None, persistence=False):
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        conf = f"listener {self.port} 127.0.0.1\nuser root\n"
        if "allow_anonymous" not in extra:
            conf += "allow_anonymous true\n"
        if persistence:
            conf += f"persistence true\npersistence_location {self.dir}/\n"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(conf + extra)
        self.start()

    def start(self):
        self.log = open(self.dir / "mosquitto.log", "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.dir / "mosquitto.log").read_text()
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def edge(tmp_path, remotes, rules, extra="", protocol="v311", name="edge"):
    """A Tern node bridging to `remotes` (HOST:PORT or full URLs) with `rules`:
    (pattern, direction, qos, local_prefix, remote_prefix)."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    urls = ", ".join(f'"{r}"' if "://" in r else f'"mqtt://{r}"' for r in remotes)
    text = (f'[[bridge]]\nname = "central"\naddresses = [{urls}]\nprotocol = "{protocol}"\n'
            f'client_id = "edge-site1"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\nkeep_alive = 5\n{extra}')
    for pattern, direction, qos, local, remote in rules:
        text += (f'[[bridge.topic]]\npattern = "{pattern}"\ndirection = "{direction}"\nqos = {qos}\n'
                 f'local_prefix = "{local}"\nremote_prefix = "{remote}"\n')
    return Broker(d, text)


def connected(tern, start=0):
    return tern.wait_for_log(r"bridge central connected to (\S+)", start=start).group(1)


@pytest.fixture
def stop_all():
    running = []
    yield running.append
    for thing in reversed(running):
        thing.stop()


@pytest.mark.parametrize("protocol", ["v311", "v5"])
def test_rules_both_ways_with_prefixes_qos_and_retained(tmp_path, stop_all, protocol):
    central = Mosquitto(tmp_path)
    stop_all(central)
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [
        ("sensors/#", "out", 2, "", "site1/"),
        ("cmd/#", "in", 2, "local/", "site1/"),
        ("sync/#", "both", 1, "", ""),
    ], protocol=protocol)
    stop_all(tern)
    connected(tern)
    watcher = Paho(central, "watcher", protocol=V5)
    watcher.subscribe("site1/sensors/#", 2)
    # No-local: the watcher's own publishes on sync/ are not what it should see.
    from paho.mqtt.subscribeoptions import SubscribeOptions
    watcher.subscribe("sync/#", options=SubscribeOptions(qos=1, noLocal=True))
    device = Paho(tern, "device", protocol=V5)
    device.subscribe("local/cmd/#", 2)
    device.subscribe("sync/#", 1)
    time.sleep(0.3)
    for qos in (0, 1, 2):
        device.publish("sensors/t", f"q{qos}".encode(), qos=qos)
    got = [watcher.expect() for _ in range(3)]
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        ("site1/sensors/t", b"q0", 0), ("site1/sensors/t", b"q1", 1), ("site1/sensors/t", b"q2", 2)]
    # Commands come in with their prefix swapped, at QoS 2.
    watcher.publish("site1/cmd/reboot", b"now", qos=2)
    m = device.expect()
    assert (m.topic, m.payload, m.qos) == ("local/cmd/reboot", b"now", 2)
    # A retained message crosses and stays retained at the centre.
    device.publish("sensors/config", b"v1", qos=1, retain=True)
    assert watcher.expect().payload == b"v1"
    late = Paho(central, "late", protocol=V311)
    late.subscribe("site1/sensors/config", 1)
    m = late.expect()
    assert (m.payload, m.retain) == (b"v1", True)
    # Both ways, and no loop: each side sees each message once.
    device.publish("sync/edge", b"e", qos=1)
    watcher.publish("sync/centre", b"c", qos=1)
    # The device sees its own message and the centre's; the watcher (no-local) only
    # the edge's; neither sees anything come back round the bridge.
    assert sorted(m.topic for m in (device.expect(), device.expect())) == ["sync/centre", "sync/edge"]
    assert watcher.expect().topic == "sync/edge"
    device.expect_none(1.0)
    watcher.expect_none(0.2)
    # The bridge's own state, retained, in both $SYS trees (Mosquitto's notification).
    state = Paho(central, "state", protocol=V311)
    state.subscribe("$SYS/broker/connection/edge-site1/state", 1)
    assert state.expect().payload == b"1"
    local_state = Paho(tern, "local-state", protocol=V311)
    local_state.subscribe("$SYS/broker/connection/central/state", 0)
    assert local_state.expect().payload == b"1"


def sys_figure(tern, key, wanted, timeout=8):
    """Waits for `$SYS/tern/bridge/central/KEY` to carry a value `wanted` accepts."""
    c = Paho(tern, f"sys-{key}", protocol=V311)
    c.subscribe(f"$SYS/tern/bridge/central/{key}", 0)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            value = c.expect(timeout=deadline - time.monotonic()).payload.decode()
        except Exception:
            break
        seen.append(value)
        if wanted(value):
            c.disconnect()
            return True
    raise AssertionError(f"$SYS/tern/bridge/central/{key} was {seen}")


def publish_many(tern, n, topic="sensors/x", qos=1):
    """`n` numbered QoS 1 messages from one edge client, each acknowledged."""
    c = Paho(tern, "burst", protocol=V311)
    infos = [c.c.publish(topic, str(i).encode(), qos) for i in range(n)]
    for info in infos:
        info.wait_for_publish(10)
    c.disconnect()


def collect_numbers(client, n, timeout=20):
    got = []
    deadline = time.monotonic() + timeout
    while len(set(got)) < n and time.monotonic() < deadline:
        try:
            got.append(int(client.expect(timeout=max(0.1, deadline - time.monotonic())).payload))
        except Exception:
            break
    return got


def assert_all_in_order(got, n):
    unique = list(dict.fromkeys(got))
    assert sorted(unique) == list(range(n)), f"missing {sorted(set(range(n)) - set(unique))[:20]}"
    assert unique == list(range(n)), "out of order"
    return len(got) - n


@pytest.mark.parametrize("kill", [False, True], ids=["outage", "outage-and-kill-9"])
def test_store_and_forward_through_an_outage(tmp_path, stop_all, kill):
    central = Mosquitto(tmp_path, persistence=True)
    stop_all(central)
    sub = Paho(central, "central-sub", protocol=V311, clean_start=False)
    sub.subscribe("site1/#", 1)
    sub.disconnect()
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [("sensors/#", "out", 1, "", "site1/")])
    stop_all(tern)
    connected(tern)
    central.stop()
    tern.wait_for_log(r"bridge central lost mqtt://")
    publish_many(tern, 1000)
    # The outbox's figures under $SYS (published every two seconds when they change).
    assert sys_figure(tern, "queued", lambda v: v == "1000")
    assert sys_figure(tern, "connected", lambda v: v == "0")
    assert sys_figure(tern, "last_error", lambda v: "cannot" in v or "closed" in v or "refused" in v)
    if kill:
        tern.restart(signal.SIGKILL)
    start = len(tern.lines)
    central.start()
    connected(tern, start=start)
    sub = Paho(central, "central-sub", protocol=V311, clean_start=False)
    duplicates = assert_all_in_order(collect_numbers(sub, 1000), 1000)
    print(f"duplicates after the outage: {duplicates}")


class AckSwallower:
    """A TCP relay between the edge and the centre that, on its first connection, drops
    every PUBACK the centre sends and cuts the link after `cut_after` of them."""

    def __init__(self, target_port, cut_after):
        self.port = free_port()
        self.target = target_port
        self.cut_after = cut_after
        self.connections = 0
        self.swallowed = 0
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            swallow = self.connections == 1
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, swallow), daemon=True).start()

    def _pipe(self, src, dst, swallow):
        buf = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if not swallow:
                    dst.sendall(chunk)
                    continue
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + buf[1]:  # acks are short packets
                    size = 2 + buf[1] if buf[1] < 128 else None
                    if size is None:
                        dst.sendall(buf)
                        buf = b""
                        break
                    frame, buf = buf[:size], buf[size:]
                    if frame[0] >> 4 == 4:
                        self.swallowed += 1
                        if self.swallowed >= self.cut_after:
                            raise ConnectionAbortedError
                        continue
                    dst.sendall(frame)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self):
        self.server.close()


def test_messages_whose_acknowledgements_were_lost_are_sent_again(tmp_path, stop_all):
    central = Mosquitto(tmp_path)
    stop_all(central)
    proxy = AckSwallower(central.port, cut_after=50)
    stop_all(proxy)
    sub = Paho(central, "central-sub", protocol=V311)
    sub.subscribe("site1/#", 1)
    tern = edge(tmp_path, [f"127.0.0.1:{proxy.port}"], [("sensors/#", "out", 1, "", "site1/")])
    stop_all(tern)
    connected(tern)
    publish_many(tern, 300)
    got = collect_numbers(sub, 300)
    unique = set(got)
    assert unique == set(range(300)), f"missing {sorted(set(range(300)) - unique)[:20]}"
    assert proxy.connections >= 2 and proxy.swallowed >= 50
    tern.wait_for_log(r"bridge central lost mqtt://")
    print(f"{len(got) - 300} duplicates after {proxy.swallowed} lost PUBACKs")


def test_failover_to_the_second_remote(tmp_path, stop_all):
    first, second = Mosquitto(tmp_path, "first"), Mosquitto(tmp_path, "second")
    stop_all(first)
    stop_all(second)
    tern = edge(tmp_path, [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"],
                [("sensors/#", "out", 1, "", "")])
    stop_all(tern)
    assert connected(tern).endswith(f":{first.port}")
    watcher = Paho(second, "watcher", protocol=V311)
    watcher.subscribe("sensors/#", 1)
    start = len(tern.lines)
    first.stop()
    assert connected(tern, start=start).endswith(f":{second.port}")
    Paho(tern, "device", protocol=V311).publish("sensors/t", b"via the second", qos=1)
    assert watcher.expect().payload == b"via the second"
    # The management API shows where the bridge is and what it carried.
    from test_api import call
    secret = (tern.dir / "data" / "api_secret").read_text().strip()
    deadline = time.monotonic() + 5
    while True:
        status, body = call(tern, "GET", "/api/v4/bridges", auth=("admin", secret), port=tern.api_port)
        bridge = body["data"][0]
        if bridge["acknowledged"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (bridge["name"], bridge["connected"]) == ("central", 1)
    assert bridge["remote"].endswith(f":{second.port}") and bridge["sent"] >= 1 and bridge["acknowledged"] >= 1
    # The dashboard's "last forward": when the remote last took a message.
    assert abs(bridge["last_forward_ms"] / 1000 - time.time()) < 60, bridge
    assert {"queued", "queued_bytes", "last_error"} <= set(bridge)


def test_wrong_credentials_and_untrusted_certificates_back_off_and_log(tmp_path, stop_all, certs):
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "edge", "right"], check=True)
    tls_port = free_port()
    central = Mosquitto(tmp_path, extra=(
        f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        f"listener {tls_port} 127.0.0.1\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"))
    stop_all(central)
    (certs / "other-ca.pem").write_text(subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(certs / "other-ca.key"),
         "-days", "2", "-subj", "/CN=Other CA"], capture_output=True, text=True, check=True).stdout)
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [("sensors/#", "out", 1, "", "")],
                extra='username = "edge"\npassword = "wrong"\n')
    stop_all(tern)
    tern.wait_for_log(r"WARN .*bridge central cannot connect to mqtt://127\.0\.0\.1:\d+: CONNACK refused: "
                      r"0x8[67] \((bad user name or password|not authorized)\); retrying with backoff")
    # Local clients are served all the while, and the same failure is logged once.
    device = Paho(tern, "device", protocol=V311)
    device.subscribe("sensors/#", 1)
    device.publish("sensors/t", b"still here", qos=1)
    assert device.expect().payload == b"still here"
    time.sleep(1.5)
    assert len([l for l in tern.lines if "cannot connect" in l and "WARN" in l]) == 1
    tls_edge = edge(tmp_path, [f"mqtts://127.0.0.1:{tls_port}"], [("sensors/#", "out", 1, "", "")],
                    extra=f'username = "edge"\npassword = "right"\ntls = {{ ca = "{certs}/other-ca.pem" }}\n',
                    name="tls-edge")
    stop_all(tls_edge)
    tls_edge.wait_for_log(r"bridge central cannot connect to mqtts://127\.0\.0\.1:\d+: TLS handshake failed: .*(UnknownIssuer|issuer)")


def test_tern_as_the_central_broker_too(tmp_path, stop_all):
    d = tmp_path / "centre"
    d.mkdir()
    centre = Broker(d)
    stop_all(centre)
    tern = edge(tmp_path, [f"127.0.0.1:{centre.port}"], [
        ("sensors/#", "out", 2, "", "site1/"), ("cmd/#", "in", 1, "", "site1/")], protocol="v5")
    stop_all(tern)
    connected(tern)
    centre.wait_for_log(r"client connected client_id=edge-site1 proto=5\.0")
    watcher = Paho(centre, "watcher")
    watcher.subscribe("site1/sensors/#", 2)
    device = Paho(tern, "device")
    device.subscribe("cmd/#", 1)
    time.sleep(0.3)
    device.publish("sensors/t", b"up", qos=2)
    m = watcher.expect()
    assert (m.topic, m.payload, m.qos) == ("site1/sensors/t", b"up", 2)
    watcher.publish("site1/cmd/go", b"down", qos=1)
    m = device.expect()
    assert (m.topic, m.payload) == ("cmd/go", b"down")
    # What the edge sent out does not come back in (no-local at the centre).
    device.expect_none(0.5)


def test_bad_bridge_config_is_an_error(tmp_path):
    cases = [
        ('[[bridge]]\nname = "c"\naddresses = ["tcp://x"]\n[[bridge.topic]]\npattern = "a"\n', "mqtt://"),
        ('[[bridge]]\nname = "c"\naddresses = ["mqtt://x:1883"]\n', "bridge.topic"),
        ('[[bridge]]\nname = "c"\naddresses = ["mqtts://x:8883"]\ntls = { ca = "/nonexistent.pem" }\n'
         '[[bridge.topic]]\npattern = "a"\n', "nonexistent.pem"),
    ]
    for text, want in cases:
        (tmp_path / "bad.toml").write_text(text)
        code, err = run_tern(["--config", str(tmp_path / "bad.toml")], cwd=tmp_path)
        assert code != 0 and want in err, (text, err)


def test_network_clients_cannot_take_an_outbox(tmp_path, stop_all):
    central = Mosquitto(tmp_path)
    stop_all(central)
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [("sensors/#", "out", 1, "", "")])
    stop_all(tern)
    connected(tern)
    intruder = Paho(tern, "$bridge/central", expect_refusal=True)
    assert intruder.reason_code.value == 0x85
    tern.wait_for_log(r"client identifiers starting with \$bridge/ or \$cluster/ belong to the broker")


def test_a_metered_uplink_is_held_to_its_byte_rate(tmp_path, stop_all):
    central = Mosquitto(tmp_path)
    stop_all(central)
    watcher = Paho(central, "watcher", protocol=V311)
    watcher.subscribe("sensors/#", 1)
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [("sensors/#", "out", 1, "", "")],
                extra="max_bytes_per_second = 2000\n")
    stop_all(tern)
    connected(tern)
    time.sleep(1.2)  # the bucket holds one second's worth: let the handshake's bytes refill
    start = time.monotonic()
    device = Paho(tern, "device", protocol=V311)
    for i in range(60):
        device.c.publish("sensors/t", f"{i:03d}".encode() * 33, 1)  # about 115 bytes each
    got = [watcher.expect(timeout=15).payload[:3] for _ in range(60)]
    elapsed = time.monotonic() - start
    assert got == [f"{i:03d}".encode() for i in range(60)]
    # 60 × ~115 bytes is ~6.9 kB: at 2 kB/s, with one second's burst, about 2.5 s.
    assert elapsed > 2.0, f"60 messages took only {elapsed:.2f} s through a 2 kB/s cap"


@pytest.mark.parametrize("durability", ["strict", "batched"])
def test_a_full_outbox_refuses_under_strict_and_drops_oldest_otherwise(tmp_path, stop_all, durability):
    from mqttraw import PUBACK, RawClient
    central = Mosquitto(tmp_path, persistence=True)
    stop_all(central)
    sub = Paho(central, "central-sub", protocol=V311, clean_start=False)
    sub.subscribe("sensors/#", 1)
    sub.disconnect()
    tern = edge(tmp_path, [f"127.0.0.1:{central.port}"], [("sensors/#", "out", 1, "", "")],
                extra=f'max_queued_messages = 5\n[storage]\ndurability = "{durability}"\n')
    stop_all(tern)
    connected(tern)
    central.stop()
    tern.wait_for_log(r"bridge central lost mqtt://")
    v5 = RawClient(tern.host, tern.port, version=5)
    v5.connect("v5-publisher")
    for i in range(8):
        v5.publish("sensors/t", str(i), qos=1, packet_id=i + 1)
    codes = [v5.recv_kind(PUBACK).code for _ in range(8)]
    if durability == "strict":
        # Never acknowledge and then drop: what does not fit is refused.
        assert codes == [0] * 5 + [0x97] * 3, codes
        v3 = RawClient(tern.host, tern.port, version=4)
        v3.connect("v3-publisher", version=4)
        v3.publish("sensors/t", "no room", qos=1)
        assert all(p.kind != PUBACK for p in v3.closed()), "a 3.1.1 publisher is closed, not acknowledged"
        tern.wait_for_log(r"client disconnected client_id=v3-publisher .*a bridge outbox is full")
        expected, dropped = [0, 1, 2, 3, 4], "4"  # three from the v5 client, one from the v3
    else:
        assert codes == [0] * 8, codes
        expected, dropped = [3, 4, 5, 6, 7], "3"  # the oldest made room
    start = len(tern.lines)
    central.start()
    connected(tern, start=start)
    sub = Paho(central, "central-sub", protocol=V311, clean_start=False)
    got = [int(sub.expect(timeout=10).payload) for _ in range(5)]
    assert got == expected
    sub.expect_none(1.0)
    assert sys_figure(tern, "dropped", lambda v: v == dropped)
