"""The ARM builds from `boards/build-debian` (Debian's Rust 1.85 and cross compilers),
run under qemu-user on this machine: a real client round trip through each, across a
restart that must resume a persistent session from its SQLite file.

tests/run builds them before this file runs; elsewhere, build them with
`boards/build-debian --setup aarch64 armv7`. Without them the tests fail under CI=true
and are skipped otherwise."""

import os
import pathlib
import shutil

import pytest

from conftest import ROOT, Broker
from paho_helpers import V311, V5, Paho

CROSS_DIR = pathlib.Path(os.environ.get("TERN_CROSS_DIR", ROOT / "target" / "debian-cross"))
PROFILE = os.environ.get("TERN_CROSS_PROFILE", "release")
# The target triple, the qemu-user binary and the sysroot with that target's libc.
TARGETS = {
    "aarch64": ("aarch64-unknown-linux-gnu", "qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
    "armv7": ("armv7-unknown-linux-gnueabihf", "qemu-arm-static", "/usr/arm-linux-gnueabihf"),
}
CONFIG = "[node]\nthreads = 2\n[api]\nenabled = false\n[dashboard]\nenabled = false\n[listeners.ws]\nenabled = false\n"


def cross_binary(board):
    triple, qemu, sysroot = TARGETS[board]
    binary = CROSS_DIR / triple / PROFILE / "tern"
    missing = [str(p) for p in (binary, pathlib.Path(sysroot)) if not p.exists()]
    if not shutil.which(qemu):
        missing.append(qemu)
    if missing:
        message = f"missing {', '.join(missing)}: run boards/build-debian --setup {board}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary, (qemu, "-L", sysroot)


@pytest.mark.parametrize("board", sorted(TARGETS))
def test_round_trip_and_restart_under_qemu(tmp_path, board):
    binary, prefix = cross_binary(board)
    # Emulated, the start takes a second or two rather than milliseconds.
    b = Broker(tmp_path, CONFIG, prefix=prefix, binary=binary, start_timeout=60)
    try:
        assert "durability strict" in b.log_text()
        keeper = Paho(b, "qemu-keeper", protocol=V5, clean_start=False,
                      properties=session_expiry(3600))
        assert keeper.subscribe("qemu/#", qos=1)[0].value == 1
        keeper.expect_none(0.2)
        keeper.disconnect()

        pub = Paho(b, "qemu-pub", protocol=V311)
        pub.publish("qemu/retained", b"kept", qos=1, retain=True)
        pub.publish("qemu/queued", b"waiting", qos=1)
        pub.disconnect()

        b.restart(prefix=prefix)
        assert "store loaded: 1 sessions" in b.log_text(), b.log_text()

        keeper = Paho(b, "qemu-keeper", protocol=V5, clean_start=False,
                      properties=session_expiry(3600))
        assert keeper.flags.session_present
        got = sorted((m.topic, m.payload, m.qos) for m in (keeper.expect(10), keeper.expect(10)))
        assert got == [("qemu/queued", b"waiting", 1), ("qemu/retained", b"kept", 1)]
        keeper.disconnect()

        fresh = Paho(b, "qemu-fresh", protocol=V311)
        fresh.subscribe("qemu/retained", qos=1)
        m = fresh.expect(10)
        assert (m.topic, m.payload, m.retain) == ("qemu/retained", b"kept", True)
        fresh.disconnect()
    finally:
        b.stop()


def session_expiry(seconds):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = seconds
    return p
