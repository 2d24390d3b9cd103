"""Fixtures that run the real `tern` binary on a free loopback port."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern"))


class Broker:
    """A running broker process with its log captured line by line."""

    binary = BIN
    start_timeout = 10.0

    def __init__(self, tmp_path, config="", prefix=(), env=None, binary=BIN, start_timeout=10.0):
        """`prefix`: a command the broker runs under (strace, faketime, unshare, qemu);
        `binary`: another build of tern (a cross-compiled one under qemu)."""
        self.dir = tmp_path
        self.binary = str(binary)
        self.start_timeout = start_timeout
        self.config_path = tmp_path / "tern.toml"
        text = config
        # Every listener a test does not set itself goes to a free loopback port, so
        # brokers running side by side (a bridge and its centre) do not collide.
        for table in ("[listeners.tcp]", "[listeners.ws]", "[api]", "[dashboard]"):
            if table not in text:
                text = f'{table}\nbind = "127.0.0.1:0"\n' + text
        self.config_path.write_text(text)
        self.start(prefix, env)

    def start(self, prefix=(), env=None):
        """Starts the broker (again) in the same directory with the same config."""
        self.lines = []
        self._cond = threading.Condition()
        full_env = dict(os.environ, RUST_LOG=os.environ.get("TERN_TEST_LOG", "debug"))
        full_env.update(env or {})
        # A process group of its own, so that stopping it also stops a broker running
        # under a wrapper (strace, faketime, unshare) that does not pass signals on.
        self.proc = subprocess.Popen(
            [*prefix, self.binary, "--config", str(self.config_path)],
            cwd=self.dir,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        m = self.wait_for_log(r"listening name=tcp addr=([\d.]+):(\d+)", self.start_timeout)
        self.host, self.port = m.group(1), int(m.group(2))


    @property
    def api_port(self):
        """The management API's port (it is bound after the MQTT listeners)."""
        return int(self.wait_for_log(r"listening name=api addr=[\d.]+:(\d+)").group(1))

    def restart(self, sig=signal.SIGTERM, prefix=(), env=None):
        self.stop(sig)
        self.start(prefix, env)

    def _read_log(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_log(self, pattern, timeout=10.0, start=0):
        """The first log line (from index `start`) matching `pattern`, waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.1))

    def _reader_alive(self):
        return any(t.is_alive() for t in threading.enumerate() if t.name != "MainThread")

    def log_text(self):
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signals the broker's whole process group and waits until all of it is gone."""
        group = self.proc.pid
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.proc.wait(max(0.01, min(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
                deadline = time.monotonic() + 5
        return self.proc.returncode


def free_port():
    """A loopback port free right now, for brokers that must keep theirs across restarts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_tern(args, cwd, timeout=20, prefix=()):
    """Runs the binary to completion: (exit code, stderr)."""
    done = subprocess.run([*prefix, BIN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, RUST_LOG="info"))
    return done.returncode, done.stderr


@pytest.fixture
def make_broker(tmp_path):
    brokers = []

    def make(config=""):
        sub = tmp_path / f"broker{len(brokers)}"
        sub.mkdir()
        b = Broker(sub, config)
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.stop()
        assert "panicked" not in b.log_text(), b.log_text()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def certs(tmp_path):
    """A throwaway CA and a server certificate for 127.0.0.1."""
    d = tmp_path / "certs"
    d.mkdir()

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=Tern test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    (d / "server.pem").write_text((d / "server.crt").read_text() + (d / "server.key").read_text())
    client_cert(d, "device")
    return d


def client_cert(d, name, cn="device-a", ca="ca", prefix=()):
    """`name`.crt/.key: a client certificate for `cn` signed by `ca`.pem (run under
    `prefix`, faketime say, to make one that has expired)."""
    def run(*args):
        subprocess.run([*prefix, "openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={cn}")
    # Extensions make it an X.509 v3 certificate, which webpki insists on.
    (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                   "extendedKeyUsage=clientAuth\n")
    run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
