"""Password and ACL files compatible with Mosquitto's, through the real binary."""

import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN
from mqttraw import CONNACK, PUBACK, PUBLISH, PUBREC, RawClient, connect_packet


def mosquitto_passwd(path, user, password, create=False):
    args = ["mosquitto_passwd"] + (["-c"] if create else []) + ["-b", str(path), user, password]
    subprocess.run(args, check=True, capture_output=True)


def tern_passwd(path, user, password):
    subprocess.run([BIN, "passwd", "--stdin", str(path), user], input=password + "\n", text=True,
                   check=True, capture_output=True)


def raw_connect(broker, user, password, version=5, client_id="c"):
    c = RawClient(broker.host, broker.port, version=version)
    c.send(connect_packet(client_id, version=version, username=user, password=password))
    return c, c.recv()


@pytest.fixture
def secured(make_broker, tmp_path):
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, "alice", "secret1", create=True)
    mosquitto_passwd(pw, "bob", "hunter2")
    acl = tmp_path / "acl"
    acl.write_text(
        "topic read public/#\n"
        "user alice\n"
        "topic readwrite alice/#\n"
        "topic read shared/#\n"
        "topic deny alice/private\n"
        "user bob\n"
        "topic readwrite shared/#\n"
        "topic write alice/inbox\n"
        "pattern readwrite devices/%c/#\n")
    broker = make_broker(f'[auth]\nallow_anonymous = false\npassword_file = "{pw}"\nacl_file = "{acl}"\n')
    broker.pw, broker.acl = pw, acl
    return broker


def test_mosquitto_passwd_file_authenticates(secured):
    _, ack = raw_connect(secured, "alice", "secret1")
    assert ack.kind == CONNACK and ack.code == 0
    _, ack = raw_connect(secured, "bob", "hunter2", version=4)
    assert ack.code == 0


def test_wrong_password_gets_0x86_v5_and_0x04_v311_after_a_delay(secured):
    start = time.monotonic()
    _, ack = raw_connect(secured, "alice", "wrong")
    assert ack.code == 0x86
    assert time.monotonic() - start >= 0.4
    _, ack = raw_connect(secured, "nobody", "x", version=4)
    assert ack.code == 0x04
    secured.wait_for_log(r"refused client_id=\"c\" .*addr=127\.0\.0\.1:\d+ .*bad user name or password")


def test_anonymous_refused_when_not_allowed(secured):
    _, ack = raw_connect(secured, None, None)
    assert ack.code == 0x87


def test_mosquitto_clients_with_credentials(secured):
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(secured.port), "-u", "alice", "-P", "secret1",
                            "-t", "alice/#", "-C", "1", "-W", "10"], stdout=subprocess.PIPE, text=True)
    secured.wait_for_log(r"client connected .* proto=3\.1\.1")
    subprocess.run(["mosquitto_pub", "-p", str(secured.port), "-u", "bob", "-P", "hunter2",
                    "-t", "alice/inbox", "-m", "hi bob here", "-q", "1"], check=True, timeout=10)
    out, _ = sub.communicate(timeout=15)
    assert out.strip() == "hi bob here"
    bad = subprocess.run(["mosquitto_pub", "-p", str(secured.port), "-u", "bob", "-P", "nope",
                          "-t", "x", "-m", "y"], capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0


def test_tern_passwd_file_works_in_mosquitto(tmp_path):
    pw = tmp_path / "passwd"
    tern_passwd(pw, "carol", "c0rrect horse")
    tern_passwd(pw, "dave", "first")
    tern_passwd(pw, "dave", "second")  # replaces, keeps carol
    assert pw.read_text().count("\n") == 2
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = tmp_path / "mosquitto.conf"
    # `user root`: Mosquitto started as root otherwise drops to a user that cannot
    # read pytest's private temporary directory.
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n")
    mosq = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("mosquitto did not start")

        def pub(user, password):
            return subprocess.run(["mosquitto_pub", "-p", str(port), "-u", user, "-P", password, "-t", "t",
                                   "-m", "m"], capture_output=True, timeout=10).returncode
        assert pub("carol", "c0rrect horse") == 0
        assert pub("dave", "second") == 0
        assert pub("dave", "first") != 0
    finally:
        mosq.terminate()
        mosq.wait(10)


def test_publish_not_allowed_v5_gets_0x87_and_is_not_delivered(secured):
    watcher, _ = raw_connect(secured, "bob", "hunter2", client_id="watcher")
    watcher.subscribe("shared/#", qos=1)
    alice, _ = raw_connect(secured, "alice", "secret1", client_id="alice")
    alice.publish("shared/news", b"not allowed", qos=1, packet_id=5)
    ack = alice.recv()
    assert ack.kind == PUBACK and ack.code == 0x87
    alice.publish("shared/news", b"q2", qos=2, packet_id=6)
    assert alice.recv().code == 0x87
    watcher.expect_nothing(0.5)
    secured.wait_for_log(r"client_id=alice user=Some\(\"alice\"\) is not authorized to publish to \"shared/news\"")


def test_publish_not_allowed_v311_is_acknowledged_and_discarded(secured):
    watcher, _ = raw_connect(secured, "bob", "hunter2", client_id="watcher")
    watcher.subscribe("shared/#", qos=1)
    alice, _ = raw_connect(secured, "alice", "secret1", version=4, client_id="alice3")
    alice.publish("shared/news", b"x", qos=1, packet_id=9)
    ack = alice.recv()
    assert ack.kind == PUBACK and ack.packet_id == 9
    watcher.expect_nothing(0.5)


def test_subscribe_to_a_filter_never_readable_is_refused(secured):
    alice, _ = raw_connect(secured, "alice", "secret1", client_id="alice")
    assert alice.subscribe("bob/#").codes == [0x87]
    assert alice.subscribe("alice/private").codes == [0x87]
    assert alice.subscribe("alice/#", qos=1).codes == [1]
    alice3, _ = raw_connect(secured, "alice", "secret1", version=4, client_id="alice3")
    assert alice3.subscribe("bob/#").codes == [0x80]


def test_read_is_checked_at_delivery_and_deny_wins(secured):
    alice, _ = raw_connect(secured, "alice", "secret1", client_id="alice")
    assert alice.subscribe("#", qos=1).codes == [1]  # overlaps what alice may read
    bob, _ = raw_connect(secured, "bob", "hunter2", client_id="bob")
    bob.publish("shared/visible", b"1", qos=1, packet_id=1)
    bob.publish("alice/inbox", b"2", qos=1, packet_id=2)
    alice.publish("alice/private", b"3", qos=1, packet_id=3)  # write denied too
    seen = [alice.recv() for _ in range(3)]  # the refusal and two deliveries, in any order
    assert [p.code for p in seen if p.kind == PUBACK] == [0x87]
    assert sorted(p.topic for p in seen if p.kind == PUBLISH) == ["alice/inbox", "shared/visible"]
    alice.expect_nothing(0.5)


def test_pattern_rules_use_the_client_id(secured):
    dev, _ = raw_connect(secured, "bob", "hunter2", client_id="dev7")
    dev.publish("devices/dev7/state", b"ok", qos=1, packet_id=1)
    assert dev.recv().code in (0x00, 0x10)  # allowed (nobody subscribed)
    dev.publish("devices/dev8/state", b"no", qos=1, packet_id=2)
    assert dev.recv().code == 0x87


def test_will_to_a_forbidden_topic_is_not_published(secured):
    watcher, _ = raw_connect(secured, "bob", "hunter2", client_id="watcher")
    watcher.subscribe("shared/#", qos=1)
    c = RawClient(secured.host, secured.port)
    c.send(connect_packet("alice-will", username="alice", password="secret1",
                          will={"topic": "shared/gone", "payload": b"x", "qos": 1}))
    assert c.recv().code == 0
    c.close()
    watcher.expect_nothing(1.0)


def test_sighup_reloads_and_a_broken_file_keeps_the_old_rules(secured):
    _, ack = raw_connect(secured, "erin", "new")
    assert ack.code == 0x86
    mosquitto_passwd(secured.pw, "erin", "new")
    secured.proc.send_signal(signal.SIGHUP)
    secured.wait_for_log(r"SIGHUP: password and ACL files reloaded")
    _, ack = raw_connect(secured, "erin", "new")
    assert ack.code == 0
    mark = len(secured.lines)
    secured.acl.write_text("user erin\ntopic sideways erin/#\nbogus line\n")
    secured.proc.send_signal(signal.SIGHUP)
    secured.wait_for_log(r"kept the previous rules: .*acl: line 3: unknown keyword \"bogus\"", start=mark)
    alice, _ = raw_connect(secured, "alice", "secret1", client_id="alice")
    assert alice.subscribe("alice/#", qos=1).codes == [1], "old ACL still in force"


def test_listener_overrides_auth(make_broker, tmp_path):
    pw = tmp_path / "pw"
    mosquitto_passwd(pw, "alice", "secret1", create=True)
    broker = make_broker(f'[auth]\nallow_anonymous = false\npassword_file = "{pw}"\n'
                         '[listeners.open]\ntype = "tcp"\nbind = "127.0.0.1:0"\nallow_anonymous = true\n')
    _, ack = raw_connect(broker, None, None)
    assert ack.code == 0x87
    m = broker.wait_for_log(r"listening name=open addr=127.0.0.1:(\d+)")
    c = RawClient("127.0.0.1", int(m.group(1)))
    assert c.connect("anon").code == 0


def test_check_config_reports_a_broken_acl_file(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user a\ntopic read a/#/b\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[auth]\nacl_file = "acl"\n')
    r = subprocess.run([BIN, "check-config", str(conf)], capture_output=True, text=True)
    assert r.returncode != 0 and "acl: line 2" in r.stderr, r.stderr


def test_anonymous_on_a_public_address_is_warned_about(make_broker):
    broker = make_broker('[listeners.tcp]\nbind = "127.0.0.1:0"\n[listeners.pub]\ntype = "tcp"\nbind = "0.0.0.0:0"\n')
    broker.wait_for_log(r"anonymous access is open on listener pub")


def test_argon2id_lines_authenticate(make_broker, tmp_path):
    pw = tmp_path / "pw"
    # eve / "pw", hashed by the argon2 crate (argon2id, v=19, m=19456, t=2, p=1).
    pw.write_text("eve:$argon2id$v=19$m=19456,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$"
                  "qhGYb1MyPEE+aES/CN6NCQDLQrWvmzyI+WAxnX2ZLmI\n")
    broker = make_broker(f'[auth]\nallow_anonymous = false\npassword_file = "{pw}"\n')
    _, ack = raw_connect(broker, "eve", "pw")
    assert ack.code == 0
    _, ack = raw_connect(broker, "eve", "nope")
    assert ack.code == 0x86
