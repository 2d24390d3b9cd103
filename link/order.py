#!/usr/bin/env python3
"""Writes link/hot-text.ld: the functions a broker runs, placed together ahead of .text.

Why: the kernel maps a program's code in 64 KiB blocks around each page it first touches
(fault-around). The linker lays functions out in no useful order, so starting the broker
touched 40 of the 52 blocks of its code, and all of them counted in its RSS. Placing
the functions that a start runs next to each other, then those that serving clients
runs, leaves the rest of the code unmapped until something needs it.

How: the release build runs under callgrind with its symbols, built by each compiler
there is here (see TOOLCHAINS), in a network namespace of its own so that it can take
the default ports. Each build starts with a configuration file that keeps only the
MQTT listener, with the .deb's configuration file and with the built-in defaults, on
an empty data directory and again over the store it made, idling through a few ticks; serves MQTT 3.1.1 and 5 clients at
QoS 0, 1 and 2, retained messages, a wrong password, the management API and a fleet of
devices that connect, subscribe and idle; and starts
once more over the sessions and messages that left. Every function of the tern binary that ran becomes one
input-section pattern, start-up functions first.

The patterns drop what changes between builds (crate hashes, back-references, LLVM's
clone numbers: see mangling.py), so the file keeps working as the code changes;
functions added later land in .text as before. Rust symbols must use v0 mangling
(.cargo/config.toml), whose names tell generic instances apart. The script augments
the linker's default one (INSERT), with GNU ld and lld alike; build.rs passes it to
release builds for Linux.

Run it again after large changes (it needs valgrind, mosquitto-clients, curl, and
unshare and ip to make the namespace):
    python3 link/order.py
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mangling import stable_pattern

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "link" / "hot-text.ld"
# The release build as it ships, with its symbols and without this script (valgrind
# reads symbols only in .text), from each compiler that builds Tern here: the default
# one and Debian's Rust 1.85 (/usr/bin), which the ARM builds use. Each compiler's
# LLVM inlines differently, so each leaves different functions; the profiling profile
# is no stand-in either, as its debug information changes what LLVM inlines.
TOOLCHAINS = {"default": ("cargo", "rustc"), "debian": ("/usr/bin/cargo", "/usr/bin/rustc")}
# A function's name as callgrind prints it; not its own entries such as "(below main)".
SYMBOL = re.compile(r"^[A-Za-z0-9_$.']+$")
MQTT, API = 1883, 8081
ONLY_MQTT = """[listeners.tcp]
bind = "127.0.0.1:1883"
[listeners.ws]
enabled = false
[api]
enabled = false
sys_interval = 0
[dashboard]
enabled = false
"""
PACKAGED = ROOT / "packaging" / "tern.toml"


def wait_for_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"order.py: the broker under callgrind never listened on port {port}")


def client(*args):
    subprocess.run(list(args), check=False, timeout=30, capture_output=True)


def fleet(count):
    """`count` devices connect (MQTT 3.1.1, keep-alive 60), each subscribes to its own
    command topic, and they stay through a few ticks: the paths that grow the session
    table, the router and the reactor, and the keep-alive sweep."""
    def packet(kind, body):
        return bytes([kind, len(body)]) + body

    def string(text):
        return len(text).to_bytes(2, "big") + text.encode()

    devices = []
    for i in range(count):
        device = socket.create_connection(("127.0.0.1", MQTT), timeout=5)
        device.sendall(packet(0x10, string("MQTT") + bytes([4, 2, 0, 60]) + string(f"dev-{i}"))
                       + packet(0x82, bytes([0, 1]) + string(f"fleet/{i}/cmd") + bytes([1])))
        devices.append(device)
    for device in devices:
        device.recv(64)  # CONNACK and SUBACK
    time.sleep(3)
    for device in devices:
        device.close()


def serve_clients():
    """What a small installation does in its first minute."""
    mqtt = str(MQTT)
    subscribers = [
        subprocess.Popen(["mosquitto_sub", "-p", mqtt, "-t", "a/#", "-q", "2", "-C", "6",
                          "-i", "keeper", "-c"], stdout=subprocess.DEVNULL),
        subprocess.Popen(["mosquitto_sub", "-p", mqtt, "-t", "a/#", "-q", "1", "-C", "6",
                          "-V", "mqttv5"], stdout=subprocess.DEVNULL),
    ]
    time.sleep(2)
    for qos in ("0", "1", "2"):
        client("mosquitto_pub", "-p", mqtt, "-t", "a/b", "-m", "hi", "-q", qos)
        client("mosquitto_pub", "-p", mqtt, "-t", "a/r", "-m", "kept", "-q", qos, "-r",
               "-V", "mqttv5")
    client("mosquitto_pub", "-p", mqtt, "-t", "a/b", "-m", "x", "-u", "nobody", "-P", "wrong")
    for sub in subscribers:
        sub.wait(timeout=30)
    client("mosquitto_sub", "-p", mqtt, "-t", "a/#", "-q", "1", "-C", "2", "-W", "3")
    client("curl", "-s", f"http://127.0.0.1:{API}/api/v5/status")
    fleet(300)
    time.sleep(1)


def binary(toolchain):
    return ROOT / "target" / f"hot-text-{toolchain}" / "release" / "tern"


def build(toolchain):
    cargo, rustc = TOOLCHAINS[toolchain]
    subprocess.run([cargo, "rustc", "--release", "-p", "tern", "--bin", "tern",
                    "--target-dir", str(binary(toolchain).parents[1]),
                    "--", "-C", "strip=none"],
                   cwd=ROOT, check=True, env={**os.environ, "RUSTC": rustc, "TERN_HOT_TEXT": "off"})


def toolchains():
    """The default compiler, and Debian's when it is installed and another version."""
    found = ["default"]
    debian = TOOLCHAINS["debian"][1]
    if os.path.exists(debian):
        versions = {subprocess.run([rustc, "-V"], capture_output=True, text=True).stdout
                    for rustc in ("rustc", debian)}
        if len(versions) == 2:
            found.append("debian")
    return found


def functions_run(profile_path, program):
    """Names of the binary's functions with cost in a callgrind profile, in file order."""
    objects, names, current, seen = {}, {}, None, []
    entry = re.compile(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$")
    with open(profile_path, errors="replace") as profile:
        for line in profile:
            match = entry.match(line.rstrip("\n"))
            if not match:
                continue
            kind, ident, name = match.groups()
            table = objects if kind.endswith("ob") else names
            if name:
                table[ident] = name
            if kind == "ob":
                current = objects[ident]
            elif kind == "fn" and current == str(program) and SYMBOL.match(names[ident]):
                seen.append(names[ident])
    return seen


def profile(program, workdir, config=None, serve=False):
    """The functions one run of the broker in `workdir` ran: a start (over whatever
    store an earlier run there left), a few ticks, clients if `serve`, a SIGINT."""
    out = Path(workdir) / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", "--demangle=no",
               f"--callgrind-out-file={out}", str(program)]
    if config is not None:
        (Path(workdir) / "tern.toml").write_text(config)
        command += ["--config", "tern.toml"]
    broker = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(MQTT, time.monotonic() + 60)
        time.sleep(6)  # a few of the broker's periodic ticks
        if serve:
            serve_clients()
    finally:
        broker.send_signal(signal.SIGINT)
        broker.wait(timeout=60)
    return functions_run(out, program)


def packaged_config(program, workdir):
    """The .deb's /etc/tern/tern.toml, its paths moved into `workdir`."""
    passwd = Path(workdir) / "passwd"
    subprocess.run([str(program), "passwd", "--stdin", str(passwd), "user"], input="secret\n",
                   text=True, check=True, capture_output=True)
    return (PACKAGED.read_text().replace("/var/lib/tern", workdir)
            .replace("/etc/tern/passwd", str(passwd)))


def runs(program):
    """(start-up runs, serving run) of one build. Each start is made twice, the second
    over the store the first made (as every boot after the first); the last start
    finds sessions and retained messages in it."""
    starting = []
    with tempfile.TemporaryDirectory() as minimal, tempfile.TemporaryDirectory() as packaged:
        for workdir, config in ((minimal, ONLY_MQTT),
                                (packaged, packaged_config(program, packaged))):
            for _ in range(2):
                starting.append(profile(program, workdir, config=config))
    with tempfile.TemporaryDirectory() as defaults:
        starting.append(profile(program, defaults))
        serving = profile(program, defaults, serve=True)
        starting.append(profile(program, defaults))
    return starting, serving


def pattern(symbol):
    """An input-section pattern for a function that survives rebuilds."""
    symbol = re.sub(r"'\d+$", "", symbol)  # callgrind's mark for a recursion level
    if symbol.startswith("_R"):
        symbol = stable_pattern(symbol)
    # C (SQLite, ring): GCC's clones keep their suffix (".isra.0"), which is stable.
    # LLVM puts a function it deems cold in .text.unlikely.NAME.
    return f".text.{symbol} .text.unlikely.{symbol}"


def unique_patterns(*symbol_lists):
    patterns = {}
    for symbols in symbol_lists:
        for symbol in symbols:
            patterns.setdefault(pattern(symbol), None)
    return list(patterns)


def write_script(starting, serving):
    start = unique_patterns(*starting)
    placed = set(start)
    serve = [p for p in unique_patterns(serving) if p not in placed]
    lines = [
        "/* Generated by link/order.py: the functions a start runs, then those that serving",
        "   clients runs, ahead of the rest of .text so that fewer pages of code are mapped.",
        f"   {len(start)} start-up patterns, {len(serve)} serving ones. */",
        "SECTIONS",
        "{",
        "  .text.hot :",
        "  {",
        # The C runtime's start-up code has no section of its own per function.
        "    *crt1.o(.text) *crti.o(.text) *crtbegin*.o(.text)",
    ]
    lines += [f"    *({p})" for p in start + serve]
    lines += ["  }", "}", "INSERT BEFORE .text;", ""]
    OUTPUT.write_text("\n".join(lines))
    print(f"order.py: wrote {OUTPUT.relative_to(ROOT)} ({len(start) + len(serve)} patterns)")


def main():
    if sys.argv[1:2] != ["--in-namespace"]:
        for tool in ("valgrind", "mosquitto_pub", "mosquitto_sub", "curl", "unshare", "ip"):
            if shutil.which(tool) is None:
                sys.exit(f"order.py: {tool} is not installed")
        built = toolchains()
        for toolchain in built:
            build(toolchain)
        # A network namespace with only its own loopback: the default ports are free.
        inner = (f"ip link set lo up && exec {sys.executable} {__file__} --in-namespace "
                 + " ".join(built))
        sys.exit(subprocess.run(["unshare", "--net", "--map-root-user", "sh", "-c", inner])
                 .returncode)
    starting, serving = [], []
    for toolchain in sys.argv[2:]:
        started, served = runs(binary(toolchain))
        starting += started
        serving += served
    write_script(starting, serving)


if __name__ == "__main__":
    main()
