"""Tern behind the real neighbours of the reference deployment: HAProxy and Nginx
terminate TLS and pass each device's address on with the PROXY protocol (v2 from
HAProxy, v1 from Nginx's stream module) to two Tern nodes."""

import contextlib
import queue
import ssl
import subprocess
import time

import paho.mqtt.client as mqtt
from conftest import Broker, free_port


@contextlib.contextmanager
def in_front_of(balancer, terns):
    """Stops the balancer and the Tern nodes behind it however the test ends."""
    try:
        yield
    finally:
        balancer.terminate()
        balancer.wait(5)
        for t in terns:
            t.stop()


def nodes(tmp_path, extra="", count=2):
    out = []
    for i in range(1, count + 1):
        port = free_port()
        d = tmp_path / f"node{i}"
        d.mkdir()
        out.append(Broker(d, f'[node]\nname = "node{i}"\n[listeners.tcp]\nbind = "127.0.0.1:{port}"\n'
                             "proxy_protocol = true\n" + extra))
    return out


def start_haproxy(tmp_path, terns, port, bind_options, server_options):
    cfg = tmp_path / "haproxy.cfg"
    servers = "\n".join(
        f"  server {t.dir.name} {t.host}:{t.port} {server_options} check check-send-proxy inter 200ms fall 2 rise 1"
        for t in terns)
    cfg.write_text(f"""global
  maxconn 100
defaults
  mode tcp
  timeout connect 2s
  # Above the clients' longest keep-alive (60 s), or the balancer cuts idle clients off.
  timeout client 90s
  timeout server 90s
frontend mqtts
  bind 127.0.0.1:{port} {bind_options}
  default_backend terns
backend terns
  balance source
  option redispatch
  retries 2
{servers}
""")
    haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    assert haproxy.poll() is None, haproxy.stdout.read()
    return haproxy


class Device:
    """A paho client over TLS from its own loopback address."""

    def __init__(self, port, source, client_id, ca, cert=None, key=None, transport="tcp"):
        self.messages = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport)
        self.c.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key),
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.on_message = lambda c, u, m: self.messages.put(m.payload)
        self.subacks = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        connected = queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: connected.put(rc)
        self.c.connect("127.0.0.1", port, bind_address=source)
        self.c.loop_start()
        assert not connected.get(timeout=10).is_failure

    def round_trip(self, topic):
        self.c.subscribe(topic, 1)
        time.sleep(0.2)
        self.c.publish(topic, b"hello " + topic.encode(), 1)
        assert self.messages.get(timeout=5) == b"hello " + topic.encode()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def serving(terns, client_id, source):
    """The node whose log shows `client_id` connecting from `source`."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for t in terns:
            if f"client connected client_id={client_id} " in t.log_text():
                assert f"addr={source}:" in t.log_text(), t.log_text()
                return t
        time.sleep(0.05)
    raise AssertionError(f"no node logged {client_id}")


def through_balancer(terns, port, certs, failover_wait):
    a = Device(port, "127.0.0.2", "device-a", certs / "ca.pem")
    b = Device(port, "127.0.0.3", "device-b", certs / "ca.pem")
    a.round_trip("devices/a")
    b.round_trip("devices/b")
    node_a = serving(terns, "device-a", "127.0.0.2")
    serving(terns, "device-b", "127.0.0.3")
    a.close()
    b.close()
    for t in terns:
        assert " WARN " not in t.log_text(), t.log_text()
    # One node stops: new connections from the same device reach the other.
    node_a.stop()
    other = next(t for t in terns if t is not node_a)
    time.sleep(failover_wait)
    again = Device(port, "127.0.0.2", "device-a-again", certs / "ca.pem")
    again.round_trip("devices/a")
    assert serving([other], "device-a-again", "127.0.0.2") is other
    again.close()


def test_haproxy_tls_termination_with_proxy_v2(tmp_path, certs):
    terns = nodes(tmp_path)
    port = free_port()
    haproxy = start_haproxy(tmp_path, terns, port, f"ssl crt {certs / 'server.pem'}", "send-proxy-v2")
    with in_front_of(haproxy, terns):
        through_balancer(terns, port, certs, failover_wait=0.6)


def test_haproxy_client_certificate_name_is_the_user_name(tmp_path, certs):
    acl = tmp_path / "acl"
    acl.write_text("user device-a\ntopic readwrite devices/a/#\n")
    terns = nodes(tmp_path, f'use_identity_as_username = true\n[auth]\nallow_anonymous = false\nacl_file = "{acl}"\n',
                  count=1)
    port = free_port()
    haproxy = start_haproxy(tmp_path, terns, port,
                            f"ssl crt {certs / 'server.pem'} ca-file {certs / 'ca.pem'} verify required",
                            "send-proxy-v2-ssl-cn")
    with in_front_of(haproxy, terns):
        d = Device(port, "127.0.0.2", "dev", certs / "ca.pem", certs / "device.crt", certs / "device.key")
        d.round_trip("devices/a/temp")
        d.c.subscribe("devices/b/#", 1)
        assert [c.value for c in d.subacks.get(timeout=5)] == [1]  # the round trip's SUBACK
        assert [c.value for c in d.subacks.get(timeout=5)] == [0x80], "the ACL gives device-a nothing of devices/b"
        d.close()
        terns[0].wait_for_log(r"client connected client_id=dev .*addr=127\.0\.0\.2:")


def start_nginx(tmp_path, upstreams, port, certs):
    """Nginx's stream module terminating TLS on `port` for `upstreams` (HOST:PORT),
    each connection handed on with a PROXY v1 header."""
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    cfg = prefix / "nginx.conf"
    cfg.write_text(f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 128; }}
stream {{
  upstream terns {{
    hash $remote_addr;
{servers}
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs / 'server.crt'};
    ssl_certificate_key {certs / 'server.key'};
    proxy_pass terns;
    # Nginx's open-source stream module sends PROXY v1 only.
    proxy_protocol on;
    proxy_timeout 90s;
  }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(cfg), "-e", str(prefix / "logs/error.log")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    assert nginx.poll() is None, nginx.stdout.read() + (prefix / "logs/error.log").read_text()
    return nginx


def test_nginx_in_front_of_the_websocket_listener(tmp_path, certs):
    """Browsers reach wss:// on Nginx, which hands plain WebSocket to Tern's ws listener
    with a PROXY header: the log shows the browser's own address."""
    ws = free_port()
    d = tmp_path / "node"
    d.mkdir()
    tern = Broker(d, f'[listeners.ws]\nbind = "127.0.0.1:{ws}"\nproxy_protocol = true\n')
    port = free_port()
    nginx = start_nginx(tmp_path, [f"127.0.0.1:{ws}"], port, certs)
    with in_front_of(nginx, [tern]):
        device = Device(port, "127.0.0.2", "ws-device", certs / "ca.pem", transport="websockets")
        device.round_trip("ws/via-nginx")
        device.close()
        tern.wait_for_log(r"client connected client_id=ws-device proto=3\.1\.1 addr=127\.0\.0\.2:\d+ listener=ws ")


def test_nginx_stream_tls_termination_with_proxy_v1(tmp_path, certs):
    terns = nodes(tmp_path)
    port = free_port()
    nginx = start_nginx(tmp_path, [f"{t.host}:{t.port}" for t in terns], port, certs)
    with in_front_of(nginx, terns):
        # Nginx has no active health checks: it learns a node is down from a failed
        # connect and tries the next one.
        through_balancer(terns, port, certs, failover_wait=0)
