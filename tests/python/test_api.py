"""The management API (EMQX v4 shape), Prometheus metrics, $SYS and the dashboard
(issue 8), through the real binary with real clients connected."""

import base64
import json
import os
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Broker
from mqttraw import RawClient, connect_packet
from paho_helpers import V311, V5, Paho

SECRET = "s3cret"


def api_broker(tmp_path, extra=""):
    """`extra` continues the [api] table (or starts further tables)."""
    d = tmp_path / "tern"
    d.mkdir(exist_ok=True)
    b = Broker(d, f'[api]\nbind = "127.0.0.1:0"\napp_secret = "{SECRET}"\nsys_interval = 1\n{extra}')
    b.dashboard_port = int(b.wait_for_log(r"listening name=dashboard addr=[\d.]+:(\d+)").group(1))
    b.wait_for_log(r"tern \S+ started node=")
    return b


def call(b, method, path, body=None, auth=("admin", SECRET), port=None, raw=None):
    """(HTTP status, parsed JSON or text)."""
    url = f"http://127.0.0.1:{port or b.api_port}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


# The fields EMQX v4 documents for a client (the Erlang-only ones, heap_size,
# reductions and mailbox_len, have no meaning here and are left out).
CLIENT_FIELDS = {"node", "clientid", "username", "ip_address", "port", "proto_name", "proto_ver",
                 "clean_start", "keepalive", "expiry_interval", "connected", "connected_at", "zone",
                 "mqueue_len", "mqueue_dropped", "inflight", "subscriptions_cnt", "recv_msg", "send_msg"}


def test_clients_subscriptions_kick_and_publish(tmp_path):
    b = api_broker(tmp_path)
    try:
        dev = Paho(b, "dev-1", protocol=V311, username="alice")
        dev.subscribe("cmd/#", 1)
        status, body = call(b, "GET", "/api/v4/clients")
        assert status == 200 and body["code"] == 0, body
        assert body["meta"] == {"page": 1, "limit": 10000, "count": 1, "hasnext": False}
        client = body["data"][0]
        # EMQX's fields, and one of Tern's own for the dashboard.
        assert set(client) == CLIENT_FIELDS | {"connected_seconds"}, set(client) ^ CLIENT_FIELDS
        assert (client["clientid"], client["username"], client["ip_address"], client["proto_ver"]) == \
            ("dev-1", "alice", "127.0.0.1", 4)
        assert call(b, "GET", "/api/v4/clients?_like_clientid=dev")[1]["meta"]["count"] == 1
        assert call(b, "GET", "/api/v4/clients?_like_clientid=nobody")[1]["meta"]["count"] == 0
        assert call(b, "GET", "/api/v4/clients/username/alice")[1]["data"][0]["clientid"] == "dev-1"
        assert call(b, "GET", "/api/v4/clients/dev-1")[1]["data"][0]["port"] == client["port"]
        subs = call(b, "GET", "/api/v4/subscriptions")[1]
        assert subs["data"] == [{"node": "tern1", "clientid": "dev-1", "topic": "cmd/#", "qos": 1}]
        assert call(b, "GET", "/api/v4/routes/cmd%2F%23")[1]["data"] == [{"topic": "cmd/#", "node": "tern1"}]
        # Publish through the API: plain and base64, one and a batch.
        status, body = call(b, "POST", "/api/v4/mqtt/publish",
                            {"topic": "cmd/a", "payload": "hello", "qos": 1, "retain": True})
        assert (status, body) == (200, {"code": 0})
        assert dev.expect().payload == b"hello"
        call(b, "POST", "/api/v4/mqtt/publish_batch",
             [{"topics": "cmd/b,cmd/c", "payload": base64.b64encode(b"\x00\x01").decode(), "encoding": "base64"}])
        assert sorted((m.topic, m.payload) for m in (dev.expect(), dev.expect())) == \
            [("cmd/b", b"\x00\x01"), ("cmd/c", b"\x00\x01")]
        retained = call(b, "GET", "/api/v4/retainer/messages")[1]["data"]
        assert [(r["topic"], base64.b64decode(r["payload"])) for r in retained] == [("cmd/a", b"hello")]
        assert call(b, "DELETE", "/api/v4/retainer/message/cmd%2Fa")[0] == 200
        assert call(b, "GET", "/api/v4/retainer/messages")[1]["data"] == []
        # Kick: DISCONNECT for the client, 404 (112) afterwards.
        assert call(b, "DELETE", "/api/v4/clients/dev-1") == (200, {"code": 0, "data": None})
        b.wait_for_log(r"client disconnected client_id=dev-1 .*kicked through the management API")
        assert call(b, "GET", "/api/v4/clients/dev-1")[0] == 404
        status, body = call(b, "DELETE", "/api/v4/clients/dev-1")
        assert (status, body["code"]) == (404, 112)
    finally:
        b.stop()


def test_the_proxy_address_is_the_ip_address(tmp_path):
    b = api_broker(tmp_path, '\n[listeners.behind]\ntype = "tcp"\nbind = "127.0.0.1:0"\nproxy_protocol = true\n')
    try:
        port = int(b.wait_for_log(r"listening name=behind addr=[\d.]+:(\d+)").group(1))
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"PROXY TCP4 203.0.113.50 127.0.0.1 41000 1883\r\n" + connect_packet("far-away", version=4))
        assert s.recv(4)[:1] == b"\x20"
        client = call(b, "GET", "/api/v4/clients/far-away")[1]["data"][0]
        assert (client["ip_address"], client["port"], client["zone"]) == ("203.0.113.50", 41000, "behind")
        listeners = call(b, "GET", "/api/v4/listeners")[1]["data"][0]["listeners"]
        assert {l["identifier"]: l["current_conns"] for l in listeners}["behind"] == 1
    finally:
        b.stop()


def test_counters_rise_by_n_in_the_api_sys_and_prometheus(tmp_path):
    b = api_broker(tmp_path)
    try:
        def prometheus():
            status, text = call(b, "GET", "/metrics", auth=None)
            assert status == 200
            families = {f.name: f for f in text_string_to_metric_families(text)}
            return families["tern_messages_received"].samples[0].value, families

        sys_sub = Paho(b, "sys-watch", protocol=V311)
        sys_sub.subscribe("$SYS/broker/messages/received", 0)
        before_api = call(b, "GET", "/api/v4/metrics")[1]["data"][0]["metrics"]["messages.received"]
        before_prom, families = prometheus()
        assert {"tern_connections", "tern_subscriptions", "tern_retained_messages", "tern_messages_dropped",
                "tern_store_commits", "process_resident_memory_bytes"} <= set(families), set(families)
        time.sleep(1.2)
        before_sys = None
        while True:
            m = sys_sub.expect(timeout=3)
            before_sys = int(m.payload)
            if before_sys == before_api:
                break
        n = 25
        pub = Paho(b, "pub", protocol=V5)
        for i in range(n):
            pub.publish("count/x", str(i).encode(), qos=1)
        after_api = call(b, "GET", "/api/v4/metrics")[1]["data"][0]["metrics"]["messages.received"]
        after_prom, _ = prometheus()
        assert after_api - before_api == n
        assert after_prom - before_prom == n
        deadline = time.monotonic() + 5
        seen = before_sys
        while seen != before_sys + n and time.monotonic() < deadline:
            seen = int(sys_sub.expect(timeout=3).payload)
        assert seen == before_sys + n
    finally:
        b.stop()


def test_mosquitto_sub_sees_the_sys_tree(tmp_path):
    b = api_broker(tmp_path)
    try:
        out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-t", "$SYS/#", "-v",
                              "-W", "3"], capture_output=True, text=True, timeout=10).stdout
        lines = out.splitlines()
        for name in ["version", "uptime", "clients/connected", "clients/total", "messages/received",
                     "messages/sent", "retained messages/count", "subscriptions/count", "bytes/received",
                     "bytes/sent", "load/messages/received/1min"]:
            # The topic and the value are separated by a space; one topic has a space too.
            assert any(line.startswith(f"$SYS/broker/{name} ") for line in lines), (name, lines)
    finally:
        b.stop()


def test_bad_requests_get_emqx_codes_and_cost_nobody_else(tmp_path):
    b = api_broker(tmp_path)
    try:
        dev = Paho(b, "bystander", protocol=V311)
        status, body = call(b, "GET", "/api/v4/clients", auth=None)
        assert (status, body["code"]) == (401, 103)
        status, body = call(b, "GET", "/api/v4/clients", auth=("admin", "wrong"))
        assert (status, body["code"]) == (401, 103)
        b.wait_for_log(r"management API: GET /api/v4/clients from 127\.0\.0\.1:\d+ without valid credentials")
        assert call(b, "POST", "/api/v4/mqtt/publish", raw=b"{not json")[1]["code"] == 109
        status, body = call(b, "POST", "/api/v4/mqtt/publish", {"topic": "a/+/b", "payload": "x"})
        assert (status, body["code"]) == (400, 115)
        assert call(b, "POST", "/api/v4/mqtt/publish", {"payload": "x"})[1]["code"] == 107
        assert call(b, "POST", "/api/v4/mqtt/publish", {"topic": "a", "qos": 7})[1]["code"] == 108
        assert call(b, "GET", "/api/v4/clients/nobody")[0] == 404
        # An oversized body is refused before it is read; a slow request is cut off.
        s = socket.create_connection(("127.0.0.1", b.api_port))
        s.sendall(b"POST /api/v4/mqtt/publish HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 413")
        slow = socket.create_connection(("127.0.0.1", b.api_port))
        slow.sendall(b"GET /api/v4/clients HTTP/1.1\r\n")
        slow.settimeout(15)
        assert slow.recv(100).startswith(b"HTTP/1.1 408")
        # No file behind the dashboard: traversal finds nothing.
        for path in ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/index.html/../../etc/passwd"]:
            assert call(b, "GET", path, port=b.dashboard_port, auth=None)[0] in (401, 404), path
            assert "root:" not in str(call(b, "GET", path, port=b.dashboard_port)[1])
        # The MQTT side never noticed.
        dev.subscribe("still/#", 0)
        dev.publish("still/ok", b"yes")
        assert dev.expect().payload == b"yes"
    finally:
        b.stop()


def test_status_brokers_nodes_stats_and_bridges(tmp_path):
    b = api_broker(tmp_path)
    try:
        status, text = call(b, "GET", "/status", auth=None)
        assert status == 200 and text == "Node tern1 is started\ntern is running\n"
        brokers = call(b, "GET", "/api/v4/brokers")[1]["data"][0]
        assert {"node", "node_status", "sysdescr", "version", "uptime", "datetime"} <= set(brokers)
        node = call(b, "GET", "/api/v4/nodes")[1]["data"][0]
        assert node["memory_used"] > 0 and node["max_fds"] > 0
        Paho(b, "one", protocol=V311).subscribe("s/#", 0)
        stats = call(b, "GET", "/api/v4/stats")[1]["data"][0]
        assert stats["connections.count"] == 1 and stats["subscriptions.count"] == 1
        assert call(b, "GET", "/api/v4/bridges")[1]["data"] == []
    finally:
        b.stop()


def test_a_secret_is_generated_when_none_is_configured(tmp_path):
    d = tmp_path / "tern"
    d.mkdir()
    b = Broker(d)
    try:
        line = b.wait_for_log(r"generated one into (\S+) \(app id \"admin\"\)")
        path = line.group(1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        secret = open(path).read().strip()
        assert len(secret) >= 24
        port = int(b.wait_for_log(r"listening name=api addr=[\d.]+:(\d+)").group(1))
        assert call(b, "GET", "/api/v4/brokers", port=port, auth=("admin", "public"))[0] == 401
        assert call(b, "GET", "/api/v4/brokers", port=port, auth=("admin", secret))[0] == 200
    finally:
        b.stop()


def test_subscribe_and_unsubscribe_on_a_clients_behalf_and_alarms(tmp_path):
    b = api_broker(tmp_path)
    try:
        dev = Paho(b, "dev-2", protocol=V5, clean_start=False,
                   properties=None)
        call(b, "POST", "/api/v4/mqtt/publish", {"topic": "ota/fw", "payload": "v2", "retain": True})
        assert call(b, "POST", "/api/v4/mqtt/subscribe", {"topic": "ota/#", "clientid": "dev-2", "qos": 1}) == \
            (200, {"code": 0})
        m = dev.expect()
        assert (m.topic, m.payload, m.retain) == ("ota/fw", b"v2", True)
        call(b, "POST", "/api/v4/mqtt/publish", {"topic": "ota/now", "payload": "go", "qos": 1})
        assert dev.expect().payload == b"go"
        assert call(b, "GET", "/api/v4/subscriptions/dev-2")[1]["data"][0]["topic"] == "ota/#"
        status, body = call(b, "POST", "/api/v4/mqtt/unsubscribe_batch", [{"topic": "ota/#", "clientid": "dev-2"},
                                                                          {"topic": "x", "clientid": "nobody"}])
        assert status == 200 and [r["code"] for r in body["data"]] == [0, 112], body
        call(b, "POST", "/api/v4/mqtt/publish", {"topic": "ota/later", "payload": "no"})
        dev.expect_none(0.5)
        status, body = call(b, "POST", "/api/v4/mqtt/subscribe", {"topic": "a/#/b", "clientid": "dev-2"})
        assert (status, body["code"]) == (400, 115)
        assert call(b, "POST", "/api/v4/mqtt/subscribe", {"topic": "t", "clientid": "ghost"})[1]["code"] == 112
        assert call(b, "GET", "/api/v4/alarms")[1]["data"] == [{"node": "tern1", "alarms": []}]
    finally:
        b.stop()


def test_a_subscription_on_a_clients_behalf_meets_the_same_limits(tmp_path):
    """The API's subscribe-on-behalf used to skip max_subscriptions and the topic length
    and depth limits that the client's own SUBSCRIBE gets."""
    b = api_broker(tmp_path, "[limits]\nmax_subscriptions = 2\nmax_topic_levels = 3\n")
    try:
        Paho(b, "dev-3", protocol=V5)
        subscribe = lambda topic: call(b, "POST", "/api/v4/mqtt/subscribe",
                                       {"topic": topic, "clientid": "dev-3", "qos": 0})
        assert subscribe("a/b/c") == (200, {"code": 0})
        status, body = subscribe("a/b/c/d")
        assert (status, body["code"]) == (400, 115) and "max_topic_levels" in body["message"]
        assert subscribe("x") == (200, {"code": 0})
        assert subscribe("x") == (200, {"code": 0}), "replacing one is not a new one"
        status, body = subscribe("y")
        assert (status, body["code"]) == (400, 115) and "max_subscriptions" in body["message"]
        topics = sorted(s["topic"] for s in call(b, "GET", "/api/v4/subscriptions/dev-3")[1]["data"])
        assert topics == ["a/b/c", "x"]
    finally:
        b.stop()


def test_https_on_the_api_and_dashboard_ports(tmp_path, certs):
    import ssl
    b = api_broker(tmp_path, f'cert = "{certs}/server.crt"\nkey = "{certs}/server.key"\n'
                             f'[dashboard]\nbind = "127.0.0.1:0"\ncert = "{certs}/server.crt"\n'
                             f'key = "{certs}/server.key"\n')
    try:
        b.wait_for_log(r"listening name=api addr=\S+ \(https\)")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        for port, path in [(b.api_port, "/api/v4/brokers"), (b.dashboard_port, "/")]:
            req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
            req.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode())
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                assert r.status == 200
        # Plain HTTP on an HTTPS port is a failed handshake for that connection only.
        s = socket.create_connection(("127.0.0.1", b.api_port))
        s.sendall(b"GET /status HTTP/1.1\r\n\r\n")
        s.settimeout(5)
        assert not s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        b.stop()


def test_status_is_503_until_the_store_has_opened(tmp_path):
    """The API answers before the store has opened (the rename that puts the new
    store in place is held back for 1.5 s with strace), so a balancer sees 503, then
    200 once MQTT is served."""
    from conftest import BIN, free_port
    port = free_port()
    d = tmp_path / "tern"
    d.mkdir()
    cfg = d / "tern.toml"
    cfg.write_text('[listeners.tcp]\nbind = "127.0.0.1:0"\n[listeners.ws]\nbind = "127.0.0.1:0"\n'
                   f'[dashboard]\nenabled = false\n[api]\nbind = "127.0.0.1:{port}"\napp_secret = "x"\n')
    slow_open = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
                 "-e", "inject=rename,renameat,renameat2:delay_enter=1500000:when=1"]
    proc = subprocess.Popen([*slow_open, BIN, "--config", str(cfg)], cwd=d, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not seen or seen[-1] != 200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                    seen.append(r.status)
            except urllib.error.HTTPError as e:
                seen.append(e.code)
            except OSError:
                pass
            time.sleep(0.05)
        assert 503 in seen and seen[-1] == 200, seen
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
