"""Durable sessions: what outlives a connection survives a restart, `kill -9` and power
loss, and bad store files or a full disk cost nobody else their data."""

import json
import os
import signal
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker, free_port, run_tern
from mqttraw import (PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RawClient, ack_packet,
                     publish_packet)

EXPIRY = (0x11, 3600)


def db_path(broker):
    return broker.dir / "data" / "tern.db"


def raw(broker, client_id, version=5, clean=False, **kw):
    c = RawClient(broker.host, broker.port, version=version)
    if version == 5 and not clean:
        kw.setdefault("properties", [EXPIRY])
    ack = c.connect(client_id, clean=clean, **kw)
    return c, ack


def subscribe_and_leave(broker, client_id, topic_filter, qos=1, version=5, **kw):
    """A persistent subscriber that subscribes and goes away, leaving its session."""
    c, _ = raw(broker, client_id, version=version, **kw)
    c.subscribe(topic_filter, qos=qos)
    c.close()


def collect(c, n, timeout=5.0):
    out = []
    while len(out) < n:
        p = c.recv(timeout)
        assert p is not None, f"closed after {len(out)} of {n}"
        if p.kind == PUBLISH:
            out.append(p)
            if p.qos == 1:
                c.send(ack_packet(PUBACK, p.packet_id))
            elif p.qos == 2:
                c.send(ack_packet(PUBREC, p.packet_id))
        elif p.kind == PUBREL:
            c.send(ack_packet(PUBCOMP, p.packet_id))
    return out


def finish_flows(c, timeout=0.5):
    """Completes the QoS 2 flows still open and asserts that no further PUBLISH comes."""
    while True:
        try:
            p = c.recv(timeout)
        except TimeoutError:
            return
        assert p is not None and p.kind == PUBREL, f"unexpected {p!r}"
        c.send(ack_packet(PUBCOMP, p.packet_id))


@pytest.mark.parametrize("version", [4, 5])
def test_a_persistent_session_and_its_queue_survive_a_restart(make_broker, version):
    b = make_broker()
    sub, _ = raw(b, "keeper", version=version)
    sub.subscribe("d/#", qos=2, properties=[(0x0B, 7)] if version == 5 else ())
    sub.close()
    pub, _ = raw(b, "pub", version=version, clean=True)
    for i in range(5):
        pub.publish("d/x", f"m{i}", qos=1 + i % 2, packet_id=i + 1)
        assert pub.recv().kind in (PUBACK, PUBREC)
    pub.close()
    b.restart()
    assert "store loaded: 1 sessions" in b.log_text()
    sub, ack = raw(b, "keeper", version=version)
    assert ack.session_present
    got = collect(sub, 5)
    assert [p.payload for p in got] == [f"m{i}".encode() for i in range(5)]
    assert [p.qos for p in got] == [1 + i % 2 for i in range(5)]
    if version == 5:
        assert all(p.props.get(0x0B) == [7] or p.props.get(0x0B) == 7 for p in got), got[0].props
    finish_flows(sub)
    # The subscription came back too: a new message still reaches it.
    pub, _ = raw(b, "pub", version=version, clean=True)
    pub.publish("d/y", "after", qos=1)
    assert collect(sub, 1)[0].payload == b"after"
    # The reader that loaded the queue closes before the writer, whose close
    # checkpoints the WAL and removes it: a clean stop leaves one file.
    b.stop()
    assert not (db_path(b).parent / "tern.db-wal").exists()


def test_in_flight_qos2_is_resent_under_its_packet_id_after_kill_9(make_broker):
    b = make_broker()
    sub, _ = raw(b, "inflight")
    sub.subscribe("q/#", qos=2)
    pub, _ = raw(b, "pub", clean=True)
    pub.publish("q/1", "first", qos=2, packet_id=1)
    pub.publish("q/2", "second", qos=2, packet_id=2)
    first = sub.recv_kind(PUBLISH)
    second = sub.recv_kind(PUBLISH)
    # Acknowledge the first half-way (PUBREC), the second not at all.
    sub.send(ack_packet(PUBREC, first.packet_id))
    assert sub.recv_kind(PUBREL).packet_id == first.packet_id
    b.restart(signal.SIGKILL)
    sub, ack = raw(b, "inflight")
    assert ack.session_present
    seen = [sub.recv(), sub.recv()]
    rel = [p for p in seen if p.kind == PUBREL]
    pubs = [p for p in seen if p.kind == PUBLISH]
    assert [p.packet_id for p in rel] == [first.packet_id], seen
    assert [(p.packet_id, p.payload, p.dup) for p in pubs] == [(second.packet_id, b"second", True)]


def test_inbound_qos2_ids_survive_kill_9_so_a_resend_is_delivered_once(make_broker):
    b = make_broker()
    subscribe_and_leave(b, "listener", "once/#", qos=2)
    pub, _ = raw(b, "sender")
    pub.publish("once/x", "exactly", qos=2, packet_id=9)
    assert pub.recv_kind(PUBREC).packet_id == 9
    b.restart(signal.SIGKILL)
    pub, ack = raw(b, "sender")
    assert ack.session_present
    # The sender does not know whether its PUBREL arrived: it sends the PUBLISH again
    # (DUP) before releasing; the broker must recognise it.
    pub.send(publish_packet("once/x", "exactly", qos=2, packet_id=9, dup=True))
    assert pub.recv_kind(PUBREC).packet_id == 9
    pub.send(ack_packet(PUBREL, 9))
    assert pub.recv_kind(PUBCOMP).packet_id == 9
    sub, _ = raw(b, "listener")
    got = collect(sub, 1)
    assert got[0].payload == b"exactly"
    finish_flows(sub, 1.0)


def _load_through_kill_9(tmp_path, qos, n=1500):
    """Publishes n messages at `qos` with paho while the broker is killed with SIGKILL
    and restarted on the same port; returns (acknowledged, received) payload lists."""
    port = free_port()
    b = Broker(tmp_path, f'[listeners.tcp]\nbind = "127.0.0.1:{port}"\n')
    received = []
    lock = threading.Lock()

    def on_message(c, u, m):
        with lock:
            received.append(m.payload.decode())

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="durable-sub", clean_session=False)
    sub.on_message = on_message
    sub.reconnect_delay_set(0.05, 0.2)
    sub.connect("127.0.0.1", port)
    sub.subscribe("load/#", qos)
    sub.loop_start()
    time.sleep(0.3)
    acked = []
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="durable-pub", clean_session=False)
    pub.on_publish = lambda c, u, mid, rc, p: acked.append(mid)
    pub.max_inflight_messages_set(50)
    pub.max_queued_messages_set(0)
    pub.reconnect_delay_set(0.05, 0.2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    mids = {}
    for i in range(n):
        info = pub.publish("load/x", f"{i}", qos=qos)
        mids[info.mid] = str(i)
    deadline = time.monotonic() + 30
    while len(acked) < n // 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(acked) >= n // 3, f"only {len(acked)} acknowledged before the kill"
    acked_before_kill = [mids[m] for m in list(acked)]
    b.restart(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(acked) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(acked) == n, f"{len(acked)} of {n} acknowledged after the restart"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if set(mids.values()) <= set(received):
                break
        time.sleep(0.05)
    time.sleep(0.5)
    pub.loop_stop()
    sub.loop_stop()
    b.stop()
    assert "panicked" not in b.log_text()
    return acked_before_kill, [mids[m] for m in acked], received


def test_kill_9_under_qos1_load_loses_nothing_acknowledged(tmp_path):
    before, acked, received = _load_through_kill_9(tmp_path, qos=1)
    missing = set(acked) - set(received)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    duplicates = len(received) - len(set(received))
    print(f"QoS 1 through kill -9: {len(before)} acknowledged before the kill, "
          f"{len(acked)} in all, {len(received)} received, {duplicates} duplicates")


def test_kill_9_under_qos2_load_delivers_exactly_once(tmp_path):
    before, acked, received = _load_through_kill_9(tmp_path, qos=2)
    missing = set(acked) - set(received)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    duplicates = len(received) - len(set(received))
    assert duplicates == 0, f"{duplicates} QoS 2 messages delivered twice"
    print(f"QoS 2 through kill -9: {len(before)} acknowledged before the kill, {len(received)} received once each")


def _trace_publish(make_broker, durability):
    """Runs the broker under strace, publishes one QoS 1 message that a persistent
    offline subscriber must keep, and returns the trace's lines."""
    b = make_broker(f'[storage]\ndurability = "{durability}"\n')
    subscribe_and_leave(b, "traced", "s/#", version=4)
    trace = b.dir / "strace.txt"
    b.restart(prefix=["strace", "-f", "-y", "-s", "64", "-o", str(trace),
                      "-e", "trace=read,recvfrom,write,writev,sendto,sendmsg,pwrite64,fsync,fdatasync"])
    pub, _ = raw(b, "pub", version=4, clean=True)
    time.sleep(0.3)
    pub.publish("s/x", "durable-payload-1", qos=1, packet_id=0x4242)
    ack = pub.recv_kind(PUBACK)
    assert ack.packet_id == 0x4242
    time.sleep(0.3)
    b.stop()
    return trace.read_text().splitlines()


def _index(lines, predicate, start=0):
    for i in range(start, len(lines)):
        if predicate(lines[i]):
            return i
    return None


def _completed(lines, i):
    """Where the call on line i returned: strace -f splits a call another thread
    interrupts into `NAME(... <unfinished ...>` and a later `<... NAME resumed>` line."""
    if i is None or "<unfinished ...>" not in lines[i]:
        return i
    pid, call = lines[i].split()[0], lines[i].split()[1].split("(")[0]
    return _index(lines, lambda l: l.startswith(pid + " ") and f"<... {call} resumed>" in l, i + 1)


def _syscall(line):
    """The call's name, for a whole line or either half of a split one."""
    words = line.split()
    if len(words) > 2 and words[1] == "<...":
        return words[2]
    return words[1].split("(")[0] if len(words) > 1 else ""


def _order(lines):
    """Indexes at which the PUBLISH was read, the WAL written, the WAL synced (the
    call returned) and the PUBACK written."""
    publish = _index(lines, lambda l: "durable-payload-1" in l and _syscall(l) in ("read", "recvfrom"))
    assert publish is not None, "the PUBLISH was not read?"
    wal_write = _index(lines, lambda l: _syscall(l) == "pwrite64" and "tern.db-wal" in l, publish)
    wal_sync = _completed(lines, _index(
        lines, lambda l: _syscall(l) in ("fsync", "fdatasync") and "tern.db-wal" in l, publish))
    # PUBACK for packet id 0x4242 as strace prints it: "@\2BB".
    puback = _index(lines, lambda l: _syscall(l) in ("sendto", "write", "writev")
                    and '"@\\2BB"' in l, publish)
    assert puback is not None, "no PUBACK in the trace"
    return publish, wal_write, wal_sync, puback


def test_strict_syncs_the_wal_before_the_puback_is_written(make_broker):
    lines = _trace_publish(make_broker, "strict")
    publish, wal_write, wal_sync, puback = _order(lines)
    assert wal_write is not None and wal_sync is not None, "\n".join(lines[publish:puback + 1])
    assert publish < wal_write < wal_sync < puback, "\n".join(lines[publish:puback + 1])


def test_batched_acknowledges_before_it_syncs(make_broker):
    lines = _trace_publish(make_broker, "batched")
    publish, wal_write, wal_sync, puback = _order(lines)
    assert wal_write is None or puback < wal_write, "\n".join(lines[publish:puback + 3])
    assert wal_sync is None or puback < wal_sync


def test_memory_durability_writes_no_file(make_broker):
    b = make_broker('[storage]\ndurability = "memory"\n')
    sub, _ = raw(b, "mem")
    sub.subscribe("m/#", qos=1)
    b.restart()
    _, ack = raw(b, "mem")
    assert not ack.session_present
    assert not (b.dir / "data").exists()


def test_clean_traffic_never_touches_the_database(make_broker):
    b = make_broker()
    sub, _ = raw(b, "clean-sub", clean=True)
    sub.subscribe("c/#", qos=1)
    pub, _ = raw(b, "clean-pub", clean=True)
    time.sleep(0.2)
    wal = b.dir / "data" / "tern.db-wal"
    before = wal.stat().st_size
    for i in range(300):
        pub.publish("c/x", f"{i}", qos=1, packet_id=i + 1)
    got = collect(sub, 300)
    assert len(got) == 300
    time.sleep(0.2)
    assert wal.stat().st_size == before


def _make_store(make_broker):
    b = make_broker()
    subscribe_and_leave(b, "survivor", "z/#")
    pub, _ = raw(b, "p", clean=True)
    for i in range(50):
        pub.publish("z/x", "x" * 200, qos=1, packet_id=i + 1)
        pub.recv_kind(PUBACK)
    b.stop()
    return b


def test_a_store_deleted_by_hand_is_made_anew_and_its_leftover_log_moved_aside(make_broker):
    b = make_broker()
    subscribe_and_leave(b, "keeper", "d/#")
    b.stop(signal.SIGKILL)
    path = db_path(b)
    assert (path.parent / "tern.db-wal").exists(), "a kill leaves the write-ahead log"
    path.unlink()
    b.start()
    b.wait_for_log(r"WARN.*store .*tern.db was missing but not all of its files: "
                   r"moved aside as .*tern.db-wal.orphan-")
    names = sorted(p.name for p in path.parent.iterdir())
    assert "tern.db" in names and "tern.db.new" not in names, names
    assert any(n.startswith("tern.db-wal.orphan-") for n in names), names
    # The old log was not replayed into the new store: the session is gone ...
    _, ack = raw(b, "keeper")
    assert not ack.session_present
    # ... and the new store keeps what it is given.
    b.restart()
    _, ack = raw(b, "keeper")
    assert ack.session_present


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2 + 100]))
    elif how == "random":
        data[4096 : 4096 * 3] = os.urandom(4096 * 2)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(len(data)))


@pytest.mark.parametrize("how", ["truncated", "random", "zeroed"])
def test_a_corrupt_store_is_moved_aside_loudly(make_broker, how):
    b = _make_store(make_broker)
    path = db_path(b)
    _corrupt(path, how)
    b.start()
    b.wait_for_log(r"ERROR.*store .*tern.db is corrupt .*moved aside as .*tern.db.corrupt-")
    kept = sorted(p.name for p in path.parent.iterdir() if ".corrupt-" in p.name)
    assert kept and kept[0].startswith("tern.db.corrupt-"), kept
    # Loud: a retained $SYS alarm ...
    c, _ = raw(b, "ops", clean=True)
    c.subscribe("$SYS/tern/alarms/#", qos=0)
    alarm = c.recv_kind(PUBLISH)
    assert alarm.topic == "$SYS/tern/alarms/store-corrupt" and alarm.retain
    body = json.loads(alarm.payload)
    assert body["alarm"] == "store-corrupt" and kept[0] in body["message"], body
    # ... and it serves, with an empty store that works.
    _, ack = raw(b, "survivor")
    assert not ack.session_present
    b.restart()
    _, ack = raw(b, "survivor")
    assert ack.session_present


def test_on_corrupt_refuse_keeps_tern_stopped(make_broker):
    b = _make_store(make_broker)
    _corrupt(db_path(b), "zeroed")
    with open(b.config_path, "a") as f:
        f.write('[storage]\non_corrupt_store = "refuse"\n')
    rc, err = run_tern(["--config", str(b.config_path)], cwd=b.dir)
    assert rc != 0
    assert "is corrupt" in err and 'on_corrupt_store = "refuse"' in err, err
    assert not [p for p in db_path(b).parent.iterdir() if ".corrupt-" in p.name]


def test_a_store_from_a_newer_tern_is_never_touched(make_broker):
    b = _make_store(make_broker)
    path = db_path(b)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    rc, err = run_tern(["--config", str(b.config_path)], cwd=b.dir)
    assert rc != 0
    assert "schema version 99" in err and "newer" in err, err
    assert path.read_bytes() == before


def test_data_directory_is_created_or_refused_clearly(tmp_path):
    cfg = tmp_path / "tern.toml"
    cfg.write_text('[node]\ndata_dir = "deep/er/data"\n[listeners.tcp]\nbind = "127.0.0.1:0"\n')
    b = Broker.__new__(Broker)
    b.dir, b.config_path = tmp_path, cfg
    b.start()
    assert (tmp_path / "deep" / "er" / "data" / "tern.db").exists()
    b.stop()
    (tmp_path / "blocker").write_text("a file, not a directory")
    cfg.write_text('[node]\ndata_dir = "blocker/data"\n[listeners.tcp]\nbind = "127.0.0.1:0"\n')
    rc, err = run_tern(["--config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "cannot create the data directory" in err and "blocker" in err, err


def test_a_second_tern_on_the_same_store_is_refused(make_broker):
    b = make_broker()
    rc, err = run_tern(["--config", str(b.config_path)], cwd=b.dir)
    assert rc != 0 and "in use by another Tern" in err, err
    _, ack = raw(b, "still-fine", clean=True)
    assert ack.code == 0


def _in_tmpfs(tmp_path, size, script):
    """Runs `script` (bash) in a private mount namespace with a tmpfs of `size` at
    tmp_path/mnt; the broker's binary is $TERN."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    from conftest import BIN
    return ["unshare", "-m", "--propagation", "private", "bash", "-c",
            f"mount -t tmpfs -o size={size} tmpfs {mnt} && TERN={BIN} MNT={mnt} && {script}"]


def test_a_read_only_data_directory_is_a_clear_error(tmp_path):
    import subprocess
    cfg = tmp_path / "tern.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path}/mnt/data"\n[listeners.tcp]\nbind = "127.0.0.1:0"\n')
    cmd = _in_tmpfs(tmp_path, "1m", f'mkdir $MNT/data && mount -o remount,ro $MNT && RUST_LOG=info $TERN --config {cfg}')
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert done.returncode != 0, done.stderr
    assert "is not writable" in done.stderr and "Read-only file system" in done.stderr, done.stderr


def _fill_until_refused(b, most):
    """Publishes 4 KB QoS 1 messages for an offline persistent subscriber until the
    store cannot keep one: that publisher gets no PUBACK but DISCONNECT 0x97 (or a
    close), and the broker logs why."""
    subscribe_and_leave(b, "keeper", "full/#")
    pub, _ = raw(b, "filler", clean=True)
    for i in range(1, most):
        pub.publish("full/x", os.urandom(4000), qos=1, packet_id=i)
        p = pub.recv(10)
        if p is None:
            break
        if p.kind != PUBACK:
            assert p.code == 0x97, p
            break
    else:
        raise AssertionError(f"{most} messages of 4 KB all acknowledged")
    b.wait_for_log(r"ERROR.*cannot write to the store .*full")


def test_a_full_disk_refuses_durable_messages_and_keeps_serving_clean_sessions(tmp_path):
    port = free_port()
    out = tmp_path / "after"
    out.mkdir()
    cfg = tmp_path / "tern.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path}/mnt/data"\n'
                   f'[listeners.tcp]\nbind = "127.0.0.1:{port}"\n')
    script = (f'mkdir $MNT/data; RUST_LOG=info $TERN --config {cfg} & pid=$!; '
              f'trap "kill -TERM $pid" TERM; wait $pid; wait $pid; rc=$?; cp -a $MNT/data/. {out}/; exit $rc')
    b = Broker.__new__(Broker)
    b.dir, b.config_path = tmp_path, cfg
    b.start(prefix=_in_tmpfs(tmp_path, "600k", script))
    clean_sub, _ = raw(b, "clean-sub", clean=True)
    clean_sub.subscribe("clean/#", qos=1)
    _fill_until_refused(b, 400)
    # Clean sessions are not affected.
    other, _ = raw(b, "clean-pub", clean=True)
    for i in range(20):
        other.publish("clean/x", f"{i}", qos=1, packet_id=i + 1)
    assert len(collect(clean_sub, 20)) == 20
    b.stop()
    # The database is intact after the failed writes.
    with sqlite3.connect(out / "tern.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = conn.execute("SELECT count(*) FROM delivery").fetchone()[0]
    assert stored > 0


def test_the_store_size_limit_refuses_like_a_full_disk(make_broker):
    import urllib.error
    import urllib.request
    b = make_broker("[storage]\nmax_store_bytes = 262144\n")
    status = f"http://127.0.0.1:{b.api_port}/status"
    b.wait_for_log(r"tern \S+ started node=")
    assert urllib.request.urlopen(status, timeout=5).status == 200
    _fill_until_refused(b, 200)
    assert os.path.getsize(db_path(b)) <= 262144 + 8192
    # A balancer's health check now sends new clients elsewhere.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(status, timeout=5)
    assert refused.value.code == 503
    assert "store cannot write" in refused.value.read().decode()


def test_retained_messages_survive_and_are_bounded(make_broker):
    b = make_broker("[storage]\nmax_retained_messages = 3\n")
    pub, _ = raw(b, "r", clean=True)
    for i in range(5):
        pub.publish(f"ret/{i}", f"v{i}", qos=1, retain=True, packet_id=i + 1)
        pub.recv_kind(PUBACK)
    pub.publish("ret/0", "replaced", qos=1, retain=True, packet_id=9)
    pub.recv_kind(PUBACK)
    b.wait_for_log(r"retained message on \"ret/3\" not kept: max_retained_messages 3")
    b.restart()
    c, _ = raw(b, "reader", clean=True)
    c.subscribe("ret/#", qos=0)
    got = {}
    for _ in range(3):
        p = c.recv_kind(PUBLISH)
        got[p.topic] = p.payload
    assert got == {"ret/0": b"replaced", "ret/1": b"v1", "ret/2": b"v2"}
    c.expect_nothing(0.5)


def test_retained_and_queued_messages_expire_on_the_store_clock(make_broker):
    b = make_broker()
    subscribe_and_leave(b, "late", "x/#")
    pub, _ = raw(b, "p", clean=True)
    pub.publish("x/short", "gone soon", qos=1, retain=True, packet_id=1, properties=[(0x02, 1)])
    pub.publish("x/long", "stays", qos=1, retain=True, packet_id=2, properties=[(0x02, 3600)])
    assert pub.recv_kind(PUBACK) and pub.recv_kind(PUBACK)
    b.stop()
    time.sleep(2.2)
    b.start()
    b.wait_for_log(r"store loaded: 1 sessions, 1 retained messages \(0 expired sessions and 1 expired")
    sub, ack = raw(b, "late")
    assert ack.session_present
    got = collect(sub, 1)
    assert got[0].payload == b"stays" and 0 < got[0].props[0x02] <= 3600
    finish_flows(sub)


def test_queue_qos0_keeps_qos0_for_offline_persistent_sessions(make_broker):
    b = make_broker("[storage]\nqueue_qos0 = true\n")
    subscribe_and_leave(b, "q0", "q0/#", qos=0)
    pub, _ = raw(b, "p", clean=True)
    for i in range(3):
        pub.publish("q0/x", f"{i}", qos=0)
    # Packets are handled in order: once this is acknowledged, the three are queued.
    pub.publish("elsewhere", "sync", qos=1, packet_id=9)
    pub.recv_kind(PUBACK)
    b.restart()
    sub, _ = raw(b, "q0")
    got = [sub.recv_kind(PUBLISH) for _ in range(3)]
    assert [p.payload for p in got] == [b"0", b"1", b"2"] and {p.qos for p in got} == {0}


def test_session_expiry_limits(make_broker):
    b = make_broker("[storage]\nmax_session_expiry = 60\npersistent_client_expiration = 1\n")
    _, ack = raw(b, "v5", properties=[(0x11, 100000)])
    assert ack.props.get(0x11) == 60, ack.props
    subscribe_and_leave(b, "v3", "e/#", version=4)
    time.sleep(2.5)
    b.wait_for_log(r"session expired client_id=v3")
    b.restart()
    _, ack = raw(b, "v3", version=4)
    assert not ack.session_present


def test_a_pending_will_survives_a_restart(make_broker):
    b = make_broker()
    watcher, _ = raw(b, "watcher")
    watcher.subscribe("will/#", qos=1)
    will = {"topic": "will/gone", "payload": "bye", "qos": 1, "properties": [(0x18, 2)]}
    c, _ = raw(b, "mortal", will=will)
    c.close()
    time.sleep(0.3)
    b.restart()
    watcher, _ = raw(b, "watcher")
    got = collect(watcher, 1, timeout=6)
    assert got[0].topic == "will/gone" and got[0].payload == b"bye"


# Only the wall clock jumps on a board without a real-time clock; the monotonic one
# (which the kernel's timeouts use) does not.
FAKE_WALL_CLOCK_ONLY = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_stored_expiries_ignore_a_wall_clock_that_went_back(make_broker):
    b = make_broker()
    c, _ = raw(b, "sleeper", properties=[(0x11, 600)])
    c.subscribe("t/#", qos=1)
    c.close()
    # A board that boots with an old clock: no time counts as passed.
    b.restart(prefix=["faketime", "-f", "-3d"], env=FAKE_WALL_CLOCK_ONLY)
    b.wait_for_log("the wall clock .* is behind the time the store last saw")
    c, ack = raw(b, "sleeper", properties=[(0x11, 600)])
    assert ack.session_present
    c.close()
    time.sleep(0.2)
    # A wall clock that moved on by more than the expiry while Tern was stopped ends it.
    b.restart(prefix=["faketime", "-f", "-70h"], env=FAKE_WALL_CLOCK_ONLY)
    _, ack = raw(b, "sleeper", properties=[(0x11, 600)])
    assert not ack.session_present
