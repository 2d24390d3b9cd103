"""MQTT.js (from npm, tests/browser/package-lock.json) in Debian's headless Chromium
against Tern's ws:// and wss:// listeners, talking to a paho client on plain TCP."""

import base64
import hashlib
import pathlib
import shutil
import subprocess
import threading

import pytest

from conftest import Broker, free_port
from paho_helpers import Paho

BROWSER_DIR = pathlib.Path(__file__).resolve().parents[1] / "browser"


def need_browser():
    if not shutil.which("chromium") or not (BROWSER_DIR / "node_modules" / "mqtt").is_dir():
        pytest.fail("needs Debian's chromium and `npm ci` in tests/browser (tests/setup installs both)")


def spki_pin(cert):
    """Chromium's --ignore-certificate-errors-spki-list value for this certificate."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], check=True,
                         capture_output=True).stdout
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der, check=True,
                          capture_output=True).stdout
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_mqttjs_in_headless_chromium(tmp_path, certs, scheme):
    need_browser()
    port = free_port()
    d = tmp_path / "tern"
    d.mkdir()
    if scheme == "ws":
        config = f'[listeners.ws]\nbind = "127.0.0.1:{port}"\n'
    else:
        config = (f'[listeners.wss]\nbind = "127.0.0.1:{port}"\ncert = "{certs}/server.crt"\n'
                  f'key = "{certs}/server.key"\n')
    b = Broker(d, config)
    try:
        watcher = Paho(b, "tcp-side")
        watcher.subscribe("browser/out", 1)
        args = ["node", str(BROWSER_DIR / "mqttjs.mjs"), f"{scheme}://127.0.0.1:{port}/mqtt"]
        if scheme == "wss":
            args.append(spki_pin(certs / "server.crt"))
        node = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors = []
        threading.Thread(target=lambda: errors.extend(node.stderr), daemon=True).start()
        try:
            assert node.stdout.readline().strip() == "ready", "".join(errors)
            got = watcher.expect(timeout=10)
            assert (got.topic, got.payload, got.retain) == ("browser/out", b"hello from chromium", False)
            watcher.publish("browser/in", b"hello from tcp", qos=1)
            assert node.stdout.readline().strip() == "received hello from tcp", "".join(errors)
            assert node.wait(timeout=20) == 0, "".join(errors)
        finally:
            node.kill()
        b.wait_for_log(rf"client connected client_id=chromium proto=5\.0 .*listener={scheme} ")
        watcher.disconnect()
    finally:
        b.stop()
