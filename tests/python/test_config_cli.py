"""The command line, the configuration file and start/stop, through the real binary."""

import os
import pathlib
import signal
import socket
import subprocess
import time

from conftest import BIN, Broker
from mqttraw import DISCONNECT, RawClient
from paho_helpers import Paho


def run(*args, cwd=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=10, cwd=cwd)


def test_version_flag():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("tern ")


def test_check_config_accepts_a_valid_file(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text('[node]\nname = "edge"\n[limits]\nreceive_maximum = 10\n')
    r = run("check-config", str(f))
    assert r.returncode == 0, r.stderr


def test_check_config_names_file_line_and_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[node]\nname = "edge"\n\n[limits]\nrecieve_maximum = 10\n')
    r = run("check-config", str(f))
    assert r.returncode != 0
    assert str(f) in r.stderr and "line 5" in r.stderr and "recieve_maximum" in r.stderr, r.stderr


def test_check_config_wrong_type(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[limits]\nmax_packet_size = "big"\n')
    r = run("check-config", str(f))
    assert r.returncode != 0 and "line 2" in r.stderr and "max_packet_size" in r.stderr, r.stderr


def test_check_config_duplicate_listener_address(tmp_path):
    f = tmp_path / "dup.toml"
    f.write_text('[listeners.tcp]\nbind = "127.0.0.1:1999"\n[listeners.other]\ntype = "tcp"\nbind = "127.0.0.1:1999"\n')
    r = run("check-config", str(f))
    assert r.returncode != 0 and "tcp" in r.stderr and "other" in r.stderr, r.stderr


def test_broken_config_refuses_to_start(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[listeners.tcp\n")
    r = run("--config", str(f))
    assert r.returncode != 0 and str(f) in r.stderr


def test_port_in_use_fails_the_start_with_a_clear_error(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    f = tmp_path / "c.toml"
    f.write_text(f'[listeners.tcp]\nbind = "127.0.0.1:{port}"\n')
    r = run("--config", str(f))
    assert r.returncode != 0 and "cannot bind" in r.stderr


def test_no_config_starts_on_1883_with_defaults(tmp_path):
    proc = subprocess.Popen([BIN], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 10
        while "listening name=tcp" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "addr=0.0.0.0:1883" in line, line
        c = RawClient("127.0.0.1", 1883)
        assert c.connect("default").code == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_a_port_held_by_another_broker_is_named_as_such(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    conf = tmp_path / "tern.toml"
    conf.write_text(f'[listeners.tcp]\nbind = "127.0.0.1:{port}"\n[listeners.ws]\nenabled = false\n'
                    '[api]\nenabled = false\n[dashboard]\nenabled = false\n')
    done = subprocess.run([BIN, "--config", str(conf)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=20)
    holder.close()
    assert done.returncode != 0
    assert f"listener tcp cannot bind 127.0.0.1:{port}" in done.stderr
    assert "another MQTT broker may hold it" in done.stderr, done.stderr


def test_extra_listener_from_config(make_broker):
    broker = make_broker('[listeners.second]\ntype = "tcp"\nbind = "127.0.0.1:0"\n')
    m = broker.wait_for_log(r"listening name=second addr=127.0.0.1:(\d+)")
    c = RawClient("127.0.0.1", int(m.group(1)))
    assert c.connect("via-second").code == 0


def test_sigterm_sends_v5_clients_0x8b_and_exits_0(broker):
    c = RawClient(broker.host, broker.port)
    c.connect("at-shutdown")
    broker.proc.send_signal(signal.SIGTERM)
    assert [p.code for p in c.closed() if p.kind == DISCONNECT] == [0x8B]
    assert broker.proc.wait(10) == 0


def test_connect_and_disconnect_are_logged_with_id_version_and_address(broker):
    c = Paho(broker, "logged")
    broker.wait_for_log(r"client connected client_id=logged proto=5.0 addr=127.0.0.1:\d+")
    c.disconnect()
    broker.wait_for_log(r"client disconnected client_id=logged addr=127.0.0.1:\d+")


def test_open_file_limit_is_raised_and_logged(tmp_path):
    """Raised to the hard limit when the soft one is lower; when they are equal the log
    says the limit, not "raised from N to N"."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    for name in ("raised", "same"):
        (tmp_path / name).mkdir()
    b = Broker(tmp_path / "raised", prefix=("prlimit", f"--nofile={low}:{hard}", "--"))
    try:
        if low < hard:
            b.wait_for_log(rf"open-file limit raised from {low} to {hard}")
        else:
            b.wait_for_log(rf"open-file limit is {hard}")
    finally:
        b.stop()
    same = Broker(tmp_path / "same", prefix=("prlimit", f"--nofile={hard}:{hard}", "--"))
    try:
        same.wait_for_log(rf"open-file limit is {hard}$")
        assert not any("raised from" in line for line in same.lines)
    finally:
        same.stop()


def notify_socket(tmp_path, timeout=10):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, and its path."""
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(timeout)
    return server, str(path)


def two_threads_tcp_only(tmp_path):
    """A config with two executor threads and only the MQTT/TCP listener, on a free port."""
    conf = tmp_path / "c.toml"
    conf.write_text('[node]\nthreads = 2\n[listeners.tcp]\nbind = "127.0.0.1:0"\n[listeners.ws]\nenabled = false\n'
                    '[api]\nenabled = false\n[dashboard]\nenabled = false\n')
    return conf


def test_systemd_notify_ready_watchdog_and_stopping(tmp_path):
    server, notify = notify_socket(tmp_path)
    conf = tmp_path / "c.toml"
    conf.write_text('[listeners.tcp]\nbind = "127.0.0.1:0"\n[listeners.ws]\nbind = "127.0.0.1:0"\n'
                    '[api]\nbind = "127.0.0.1:0"\n[dashboard]\nbind = "127.0.0.1:0"\n')
    env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="200000")
    proc = subprocess.Popen([BIN, "--config", str(conf)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = server.recv(1024).decode()
        assert "READY=1" in ready, ready
        # READY=1 is sent once the listener is bound: its address is logged, and it accepts.
        line = ""
        while "listening name=tcp" not in line:
            line = proc.stderr.readline()
        port = int(line.rsplit(":", 1)[1])
        assert RawClient("127.0.0.1", port).connect("after-ready").code == 0
        watchdog = [server.recv(1024).decode() for _ in range(3)]
        assert all(w == "WATCHDOG=1" for w in watchdog), watchdog
        proc.send_signal(signal.SIGTERM)
        while True:
            message = server.recv(1024).decode()
            if message != "WATCHDOG=1":
                break
        assert message == "STOPPING=1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()


# The stall hook exists only in debug builds (`cargo build`); tests/run builds one.
DEBUG_BIN = os.environ.get("TERN_DEBUG_BIN", str(pathlib.Path(BIN).parents[1] / "debug" / "tern"))


def test_watchdog_pings_stop_when_an_executor_thread_stalls(tmp_path):
    assert os.path.exists(DEBUG_BIN), f"no debug build at {DEBUG_BIN}: run `cargo build` first"
    server, notify = notify_socket(tmp_path)
    conf = two_threads_tcp_only(tmp_path)
    # Pings every 0.5 s; worker 1 blocks for good 2.5 s after start.
    env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000",
               TERN_DEBUG_STALL="1 2500", RUST_LOG="info")
    proc = subprocess.Popen([DEBUG_BIN, "--config", str(conf)], stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        messages = []
        started = time.monotonic()
        while time.monotonic() - started < 6:
            server.settimeout(max(0.01, 6 - (time.monotonic() - started)))
            try:
                messages.append((time.monotonic() - started, server.recv(1024).decode()))
            except socket.timeout:
                break
        pings = [t for t, m in messages if m == "WATCHDOG=1"]
        assert any(m.startswith("READY=1") for _, m in messages), messages
        assert len(pings) >= 3, messages  # healthy: pinged before the stall
        # The stall starts at 2.5 s and is noticed within one interval after the probe
        # missed a whole interval; no ping after that.
        assert pings[-1] < 4.2, messages
        assert any("STATUS=executor thread stalled: tern-worker-1" in m for _, m in messages), messages
    finally:
        proc.kill()
        log = proc.stderr.read()
        server.close()
    assert "executor thread stalled" in log and "tern-worker-1" in log, log


def test_the_release_build_has_no_stall_hook(tmp_path):
    server, notify = notify_socket(tmp_path, timeout=5)
    conf = two_threads_tcp_only(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="400000", TERN_DEBUG_STALL="1 0")
    proc = subprocess.Popen([BIN, "--config", str(conf)], stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        messages = [server.recv(1024).decode() for _ in range(12)]
        assert messages.count("WATCHDOG=1") >= 10, messages
    finally:
        proc.kill()
        proc.wait(10)
        server.close()


def test_board_profiles_from_the_command_line(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[listeners.tcp]\nbind = "127.0.0.1:0"\n[listeners.ws]\nenabled = false\n'
                    '[api]\nenabled = false\n[dashboard]\nenabled = false\n[limits]\nmax_connections = 3\n')
    proc = subprocess.Popen([BIN, "--config", str(conf), "--board", "rpi-zero2w"], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("started node=" in l for l in lines):
            lines.append(proc.stderr.readline())
        text = "".join(lines)
        assert "board rpi-zero2w: its runtime defaults apply" in text, text
        assert "threads=2" in text, text  # from the board
        assert "cache 1024 KiB" in text, text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    r = run("--config", str(conf), "--board", "toaster")
    assert r.returncode != 0 and 'unknown board "toaster"' in r.stderr and "rpi4" in r.stderr
