"""The dashboard's API (issue 24) through the real binary: the topic tree, the tap, the
history, client search, sort and paging, failed-login throttling; and the page itself
in headless Chromium (tests/browser/dashboard.mjs) at desktop and phone sizes."""

import json
import os
import pathlib
import resource
import socket
import subprocess
import threading
import time

from mqttraw import CONNACK, Packet, connect_packet
from paho_helpers import V311, V5, Paho
from test_api import SECRET, api_broker, call
from test_browser import BROWSER_DIR, need_browser

ROOT = pathlib.Path(__file__).resolve().parents[2]
AUTH = "Basic " + __import__("base64").b64encode(f"admin:{SECRET}".encode()).decode()


def metrics(b):
    return call(b, "GET", "/api/v4/metrics")[1]["data"][0]["metrics"]


def wait_until(what, check, timeout=10):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Tap:
    """A tap read over a raw socket: the head, then JSON lines from the chunked body."""

    def __init__(self, b, filter, read=True, source="127.0.0.1"):
        self.s = socket.socket()
        if not read:
            # A page that stops reading: the smallest receive buffer the kernel allows.
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.s.bind((source, 0))
        self.s.connect(("127.0.0.1", b.api_port))
        target = "/api/v4/topics/tap?filter=" + __import__("urllib.parse").parse.quote(filter, safe="")
        self.s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode())
        self.buf = b""
        if read:
            self.head = self._until(b"\r\n\r\n")
            self.status = int(self.head.split()[1])

    def _until(self, marker, timeout=10):
        self.s.settimeout(timeout)
        while marker not in self.buf:
            data = self.s.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        out, self.buf = self.buf.split(marker, 1)
        return out

    def line(self, timeout=10):
        """The next non-empty JSON line of the chunked body."""
        while True:
            size = int(self._until(b"\r\n", timeout), 16)
            if size == 0:
                return None
            while len(self.buf) < size + 2:
                self.buf += self.s.recv(65536)
            chunk, self.buf = self.buf[:size], self.buf[size + 2:]
            self.pending = getattr(self, "pending", []) + [l for l in chunk.split(b"\n") if l]
            if self.pending:
                return json.loads(self.pending.pop(0))

    def next(self, timeout=10):
        if getattr(self, "pending", None):
            return json.loads(self.pending.pop(0))
        return self.line(timeout)


def test_the_topic_tree_goes_one_level_at_a_time(tmp_path):
    b = api_broker(tmp_path)
    try:
        p = Paho(b, "sensor", protocol=V311)
        for v in ("20.1", "20.2", "20.3"):
            p.publish("site/line1/temp", v, qos=1)
        p.publish("site/line1/json", '{"a": 1}', qos=0, retain=True)
        p.publish("site/bin", bytes([0xff, 0x00, 0x01]))
        p.publish("other", "x")
        wait_until("all four topics recorded",
                   lambda: call(b, "GET", "/api/v4/topics")[1]["data"]["topics"] == 4)
        top = call(b, "GET", "/api/v4/topics")[1]["data"]
        assert [c["name"] for c in top["children"]] == ["other", "site"]
        assert top["messages"] == 6
        site = call(b, "GET", "/api/v4/topics?under=site")[1]["data"]
        line1 = next(c for c in site["children"] if c["name"] == "line1")
        assert (line1["messages"], line1["topics"], line1["has_children"]) == (4, 2, True)
        binary = next(c for c in site["children"] if c["name"] == "bin")["value"]
        assert (binary["encoding"], binary["payload"], binary["size"]) == ("hex", "ff0001", 3)
        leaf = call(b, "GET", "/api/v4/topics?under=site/line1")[1]["data"]["children"]
        temp = next(c for c in leaf if c["name"] == "temp")["value"]
        assert (temp["payload"], temp["qos"], temp["retain"], temp["encoding"]) == ("20.3", 1, False, "utf8")
        assert temp["age_ms"] < 10_000
        # $SYS shows only when asked for.
        assert "$SYS" not in [c["name"] for c in top["children"]]
        wait_until("$SYS published", lambda: "$SYS" in [
            c["name"] for c in call(b, "GET", "/api/v4/topics?sys=true")[1]["data"]["children"]])
        # A topic with an empty first level (`/a/b`) sits under the empty name, which
        # is not the top.
        p.publish("/lead/x", "y", qos=1)
        wait_until("the leading slash recorded", lambda: "" in [
            c["name"] for c in call(b, "GET", "/api/v4/topics")[1]["data"]["children"]])
        empty = call(b, "GET", "/api/v4/topics?under=")[1]["data"]
        assert [(c["name"], c["topic"]) for c in empty["children"]] == [("lead", "/lead")]
        # Topics longer than 512 bytes are not recorded (a name may be 64 KiB).
        p.publish("long/" + "x" * 600, "v", qos=1)
        p.publish("long/short", "v", qos=1)
        wait_until("long/short recorded", lambda: call(b, "GET", "/api/v4/topics?under=long")[1]["data"]["topics"] >= 1)
        assert [c["name"] for c in call(b, "GET", "/api/v4/topics?under=long")[1]["data"]["children"]] == ["short"]
        # Bad parameters are refused with EMQX's codes.
        assert call(b, "GET", "/api/v4/topics?under=site/%2B")[:1] == (400,)
        assert call(b, "GET", "/api/v4/topics?under=site/%2B")[1]["code"] == 115
        assert call(b, "GET", "/api/v4/topics?sys=maybe")[1]["code"] == 108
    finally:
        b.stop()


def test_retained_messages_from_before_a_restart_are_in_the_tree(tmp_path):
    b = api_broker(tmp_path)
    try:
        Paho(b, "keeper", protocol=V311).publish("kept/state", "on", qos=1, retain=True)
        wait_until("retained", lambda: call(b, "GET", "/api/v4/stats")[1]["data"][0]["retained.count"] >= 1)
        b.restart()
        b.wait_for_log(r"tern \S+ started node=")
        kept = call(b, "GET", "/api/v4/topics?under=kept")[1]["data"]["children"][0]
        assert (kept["messages"], kept["value"]["payload"], kept["value"]["age_ms"]) == (0, "on", None)
    finally:
        b.stop()


def test_the_topic_tree_is_bounded_and_forgets_the_oldest(tmp_path):
    b = api_broker(tmp_path, "[dashboard]\nbind = \"127.0.0.1:0\"\nmax_topics = 64\n")
    try:
        p = Paho(b, "many", protocol=V311)
        for i in range(300):
            p.publish(f"many/{i}", "v", qos=1)
        p.publish("many/0", "again", qos=1)
        wait_until("the last publish recorded", lambda: any(
            c["name"] == "0" for c in call(b, "GET", "/api/v4/topics?under=many")[1]["data"]["children"]))
        assert metrics(b)["dashboard.topics"] <= 64
        names = {c["name"] for c in call(b, "GET", "/api/v4/topics?under=many")[1]["data"]["children"]}
        assert "299" in names and "0" in names and "1" not in names
    finally:
        b.stop()


def test_the_tap_streams_what_matches_and_ends_when_closed(tmp_path):
    b = api_broker(tmp_path)
    try:
        tap = Tap(b, "site/+/temp")
        assert tap.status == 200 and b"Transfer-Encoding: chunked" in tap.head
        assert tap.next() == {"watching": "site/+/temp"}
        p = Paho(b, "pub", protocol=V5)
        p.publish("site/a/temp", "1")
        p.publish("site/a/other", "no")
        p.publish("site/b/temp", bytes([0, 1, 2]), qos=1, retain=True)
        first, second = tap.next(), tap.next()
        assert (first["topic"], first["payload"], first["qos"]) == ("site/a/temp", "1", 0)
        assert (second["topic"], second["encoding"], second["payload"], second["retain"]) == (
            "site/b/temp", "hex", "000102", True)
        # A tap is no subscriber: a v5 publisher with no subscriber hears 0x10.
        raw = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-V", "5", "-q", "1", "-t", "site/c/temp",
                              "-m", "x", "-d"], capture_output=True, text=True, timeout=10)
        assert "RC:16" in raw.stdout, raw.stdout
        assert tap.next()["topic"] == "site/c/temp"
        assert metrics(b)["dashboard.taps"] == 1
        tap.s.close()
        # The broker notices at its next write (a message or the 10 s heartbeat).
        p.publish("site/a/temp", "after")
        wait_until("the closed tap forgotten", lambda: metrics(b)["dashboard.taps"] == 0, timeout=15)
        # Bad filters, a shared one, a missing one, too many taps.
        assert call(b, "GET", "/api/v4/topics/tap?filter=a/%23/b")[1]["code"] == 115
        assert call(b, "GET", "/api/v4/topics/tap?filter=%24share/g/a")[1]["code"] == 115
        assert call(b, "GET", "/api/v4/topics/tap")[1]["code"] == 107
        taps = [Tap(b, f"t/{i}") for i in range(16)]
        assert all(t.status == 200 for t in taps)
        status, body = call(b, "GET", "/api/v4/topics/tap?filter=t/17")
        assert status == 503 and "16 taps" in body["message"]
        for t in taps:
            t.s.close()
    finally:
        b.stop()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_tap_that_is_never_read_costs_only_its_bounded_buffer(tmp_path):
    """The page stops reading: the tap fills its 256-message buffer, is ended and
    forgotten, and the broker keeps serving its subscribers at full speed."""
    b = api_broker(tmp_path)
    try:
        stuck = Tap(b, "#", read=False)
        wait_until("the tap open", lambda: metrics(b)["dashboard.taps"] == 1)
        sub = Paho(b, "sub", protocol=V311)
        sub.subscribe("load/#", qos=0)
        before = rss_kb(b.proc.pid)
        out = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-t", "load/x", "-l", "-q", "1"],
                             input="\n".join("x" * 1000 for _ in range(5000)) + "\n",
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got = 0
        while got < 5000:
            sub.expect(10)
            got += 1
        wait_until("the stuck tap dropped", lambda: metrics(b)["dashboard.taps"] == 0)
        assert rss_kb(b.proc.pid) - before < 8 * 1024, (before, rss_kb(b.proc.pid))
        stuck.s.close()
    finally:
        b.stop()


def test_history_has_a_sample_at_start_and_one_for_now(tmp_path):
    b = api_broker(tmp_path)
    try:
        Paho(b, "h", protocol=V311).publish("h/1", "x", qos=1)
        data = call(b, "GET", "/api/v4/history")[1]["data"]
        assert data["interval"] == 10
        samples = data["samples"]
        assert len(samples) >= 2
        assert {"t", "connections", "messages_in", "messages_out", "bytes_in", "bytes_out", "dropped",
                "store_bytes", "memory"} <= set(samples[0])
        assert samples[-1]["messages_in"] >= 1 and samples[-1]["memory"] > 0
        assert samples[0]["t"] <= samples[-1]["t"]
    finally:
        b.stop()


def test_clients_are_searched_sorted_and_paged(tmp_path):
    b = api_broker(tmp_path)
    try:
        clients = [Paho(b, f"dev-{i:02}", protocol=V311) for i in range(25)]
        named = Paho(b, "Boiler-Room", protocol=V5, username="heating",
                     will={"topic": "wills/boiler", "payload": "gone", "qos": 1, "retain": True})
        named.subscribe("cmd/boiler/#", qos=1)
        r = call(b, "GET", "/api/v4/clients?_like=boiler")[1]
        assert [c["clientid"] for c in r["data"]] == ["Boiler-Room"], "any case, client id"
        assert [c["clientid"] for c in call(b, "GET", "/api/v4/clients?_like=HEAT")[1]["data"]] == ["Boiler-Room"]
        assert call(b, "GET", "/api/v4/clients?_like=127.0.0.1")[1]["meta"]["count"] == 26
        assert call(b, "GET", "/api/v4/clients?ip_address=127.0.0.1")[1]["meta"]["count"] == 26
        page2 = call(b, "GET", "/api/v4/clients?_like=dev-&_sort=clientid&_order=desc&_page=2&_limit=10")[1]
        assert [c["clientid"] for c in page2["data"]] == [f"dev-{i:02}" for i in range(14, 4, -1)]
        assert page2["meta"] == {"page": 2, "limit": 10, "count": 25, "hasnext": True}
        for bad in ("_page=0", "_limit=x", "_sort=heap_size", "_order=sideways"):
            status, body = call(b, "GET", f"/api/v4/clients?{bad}")
            assert (status, body["code"]) == (400, 108), bad
        detail = call(b, "GET", "/api/v4/clients/Boiler-Room")[1]["data"][0]
        assert detail["subscriptions"] == [{"topic": "cmd/boiler/#", "qos": 1}]
        assert detail["will"] == {"topic": "wills/boiler", "qos": 1, "retain": True, "delay_interval": 0}
        assert detail["proto_ver"] == 5 and detail["username"] == "heating"
        assert 0 <= detail["connected_seconds"] < 60
        assert call(b, "GET", "/api/v4/clients/dev-00")[1]["data"][0]["will"] is None
        listeners = call(b, "GET", "/api/v4/listeners")[1]["data"][0]["listeners"]
        assert all({"proxy_protocol", "tls"} <= set(l) for l in listeners)
        for c in clients:
            c.c.disconnect()
    finally:
        b.stop()


def timed_call(b, auth, source="127.0.0.1"):
    """(status, seconds, Retry-After) of GET /api/v4/brokers from `source`."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", b.api_port))
    basic = __import__("base64").b64encode(f"admin:{auth}".encode()).decode()
    start = time.monotonic()
    s.sendall(f"GET /api/v4/brokers HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n"
              "Connection: close\r\n\r\n".encode())
    s.settimeout(60)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    retry = next((line.split(":")[1].strip() for line in head.split("\r\n")
                  if line.lower().startswith("retry-after")), None)
    return int(head.split()[1]), time.monotonic() - start, retry


def test_failed_logins_are_slowed_per_address(tmp_path):
    """Three wrong secrets are answered at once; then each waits longer (250 ms,
    500 ms, ...), and while one waits its address is turned away (429) even with the
    right secret; another address logs in at once; a success does not reset the count."""
    b = api_broker(tmp_path)
    try:
        quick = [timed_call(b, "wrong") for _ in range(3)]
        assert [q[0] for q in quick] == [401] * 3
        assert all(q[1] < 0.2 for q in quick), quick
        status, took, _ = timed_call(b, "wrong")
        assert status == 401 and took >= 0.2, took
        waiting = threading.Thread(target=lambda: timed_call(b, "wrong"))
        waiting.start()
        time.sleep(0.1)
        status, _, retry = timed_call(b, SECRET)
        assert status == 429 and retry is not None and int(retry) >= 1
        status, took, _ = timed_call(b, SECRET, source="127.0.0.2")
        assert status == 200 and took < 0.2, "another address is not held back"
        waiting.join()
        assert timed_call(b, SECRET)[0] == 200, "the wait over, the right secret works"
        # A success does not forgive: behind a NAT the operator's page and a guesser
        # share the address, and the page's polls must not reset the count.
        status, took, _ = timed_call(b, "wrong")
        assert status == 401 and took >= 0.9, took
        prom = call(b, "GET", "/metrics", auth=None)[1]
        assert "tern_api_login_failures_total 6" in prom, prom
        assert "tern_api_logins_turned_away_total 1" in prom, prom
        # A request without credentials is told 401 and not counted as a guess.
        for _ in range(5):
            assert call(b, "GET", "/api/v4/brokers", auth=None)[0] == 401
        assert timed_call(b, SECRET)[0] == 200
    finally:
        b.stop()


def connect_many(b, n, prefix):
    """`n` raw MQTT 3.1.1 connections (no keep-alive), each CONNACKed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    socks = []
    for i in range(n):
        s = socket.create_connection((b.host, b.port))
        s.sendall(connect_packet(f"{prefix}{i:04}", version=4, keepalive=0))
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        assert s.recv(4)[:1] == bytes([CONNACK << 4])
    return socks


def test_the_dashboard_in_headless_chromium(tmp_path, capsys):
    """The page through its real flows, at 1280x800 and 390x844: log in with Enter; the
    Overview chart has points at once; a sensor publishing every 100 ms shows in the
    topic tree with its latest value; JSON is pretty-printed and binary shown as hex;
    the tap streams and stops; the publish form reaches a subscriber; one client of
    2,000 is found by search and kicked."""
    need_browser()
    b = api_broker(tmp_path)
    stop = threading.Event()
    try:
        sensor = Paho(b, "sensor-line1", protocol=V311)

        def publish():
            n = 0
            while not stop.is_set():
                n += 1
                sensor.publish("site/line1/temp", f"{20 + n / 100:.2f}")
                time.sleep(0.1)

        threading.Thread(target=publish, daemon=True).start()
        sensor.publish("site/line1/config", json.dumps({"unit": "C", "limits": [5, 40]}), qos=1, retain=True)
        sensor.publish("site/line1/raw", bytes([0xde, 0xad, 0xbe, 0xef, 0x00]), qos=1, retain=True)
        sensor.publish("/lead/x", "a topic with an empty first level", qos=1, retain=True)
        listener = Paho(b, "listener", protocol=V311)
        listener.subscribe("from/dashboard", qos=1)
        fleet = connect_many(b, 2000, "fleet-")
        shots = ROOT / "target" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["node", str(BROWSER_DIR / "dashboard.mjs"), f"http://127.0.0.1:{b.dashboard_port}/",
                              "admin", SECRET, "fleet-1234", str(shots)],
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        with capsys.disabled():
            # The screenshots' names, in the suite's output even when it passes.
            print("\n" + "\n".join(line for line in out.stdout.splitlines() if line.startswith("screenshot: ")))
        for line in ("logged in with Enter", "chart points on first load", "tree shows site/line1/temp",
                     "json pretty-printed", "binary as hex", "empty level opens", "tap streamed", "tap stopped", "published",
                     "found fleet-1234 among 2000", "kicked fleet-1234"):
            assert line in out.stdout, line
        got = listener.expect(10)
        assert (got.topic, got.payload) == ("from/dashboard", b"hello from the page")
        # The kicked client's socket is closed; the other 1,999 stay.
        kicked = fleet[1234]
        kicked.settimeout(5)
        assert kicked.recv(10) == b""
        assert call(b, "GET", "/api/v4/clients?_like=fleet-")[1]["meta"]["count"] == 1999
        wait_until("the page's tap closed", lambda: metrics(b)["dashboard.taps"] == 0, timeout=15)
        for name in ("dashboard-1280x800.png", "dashboard-390x844.png"):
            assert (shots / name).stat().st_size > 10_000, name
        for s in fleet:
            s.close()
    finally:
        stop.set()
        b.stop()
