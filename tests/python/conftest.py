"""Fixtures that run the real `tern` binary on a free loopback port."""

import os
import pathlib
import re
import signal
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern"))


class Broker:
    """A running broker process with its log captured line by line."""

    def __init__(self, tmp_path, config=""):
        self.dir = tmp_path
        self.config_path = tmp_path / "tern.toml"
        text = config
        if "[listeners.tcp]" not in text:
            text = '[listeners.tcp]\nbind = "127.0.0.1:0"\n' + text
        self.config_path.write_text(text)
        self.lines = []
        self._cond = threading.Condition()
        env = dict(os.environ, RUST_LOG=os.environ.get("TERN_TEST_LOG", "debug"))
        self.proc = subprocess.Popen(
            [BIN, "--config", str(self.config_path)],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        m = self.wait_for_log(r"listening name=tcp addr=([\d.]+):(\d+)")
        self.host, self.port = m.group(1), int(m.group(2))

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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
