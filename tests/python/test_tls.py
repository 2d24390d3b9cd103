"""Tern's own MQTT/TLS listener (issue 5, in part): Mosquitto's clients and paho over
TLS, client certificates, bad handshakes, and certificates reloaded on SIGHUP."""

import signal
import socket
import ssl
import subprocess
import time

from conftest import Broker, client_cert, free_port, run_tern
from mqttraw import connect_packet


def tls_broker(tmp_path, certs, extra=""):
    port = free_port()
    d = tmp_path / "tern"
    d.mkdir()
    b = Broker(d, f'[listeners.tls]\nbind = "127.0.0.1:{port}"\ncert = "{certs}/server.crt"\n'
                  f'key = "{certs}/server.key"\n{extra}')
    b.tls_port = port
    b.wait_for_log(r"listening name=tls ")
    return b


def mosquitto(tool, b, certs, *args, cert=None):
    cmd = [tool, "-h", "127.0.0.1", "-p", str(b.tls_port), "--cafile", str(certs / "ca.pem"), *args]
    if cert:
        cmd += ["--cert", str(certs / f"{cert}.crt"), "--key", str(certs / f"{cert}.key")]
    return cmd


def round_trip(b, certs, cert=None, topic="tls/t"):
    sub = subprocess.Popen(mosquitto("mosquitto_sub", b, certs, "-t", topic, "-C", "1", "-W", "5",
                                     cert=cert), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    pub = subprocess.run(mosquitto("mosquitto_pub", b, certs, "-t", topic, "-m", "over tls", "-q", "1",
                                   cert=cert), capture_output=True, text=True, timeout=10)
    out, err = sub.communicate(timeout=10)
    return pub.returncode, out.strip(), pub.stderr + err


def test_mosquitto_clients_over_tls(tmp_path, certs):
    b = tls_broker(tmp_path, certs)
    try:
        rc, out, err = round_trip(b, certs)
        assert rc == 0 and out == "over tls", err
        b.wait_for_log(r"client connected .*listener=tls")
    finally:
        b.stop()


def test_client_certificates_required(tmp_path, certs):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue-ca.key",
                    "-out", "rogue-ca.pem", "-days", "2", "-subj", "/CN=Rogue CA"],
                   cwd=certs, check=True, capture_output=True)
    client_cert(certs, "stranger", ca="rogue-ca")
    # Valid from 2020-01-01 for two days: long expired.
    client_cert(certs, "expired", prefix=["faketime", "2020-01-01 00:00:00"])
    b = tls_broker(tmp_path, certs, f'ca = "{certs}/ca.pem"\nrequire_client_cert = true\n')
    try:
        rc, out, err = round_trip(b, certs, cert="device")
        assert rc == 0 and out == "over tls", err
        for cert, why in [(None, "CertificateRequired|certificate"), ("stranger", "UnknownIssuer|issuer"),
                          ("expired", "Expired|expired")]:
            start = len(b.lines)
            pub = subprocess.run(mosquitto("mosquitto_pub", b, certs, "-t", "x", "-m", "no", cert=cert),
                                 capture_output=True, text=True, timeout=10)
            assert pub.returncode != 0, cert
            b.wait_for_log(rf"WARN .*refused connection addr=127\.0\.0\.1:\d+ listener=tls: TLS handshake failed: .*({why})",
                           start=start)
    finally:
        b.stop()


def test_garbage_and_plain_mqtt_on_the_tls_port(tmp_path, certs):
    b = tls_broker(tmp_path, certs)
    try:
        for data in [b"GET / HTTP/1.1\r\n\r\n" + bytes(300), connect_packet("plain", version=4)]:
            start = len(b.lines)
            s = socket.create_connection(("127.0.0.1", b.tls_port))
            s.sendall(data)
            s.settimeout(5)
            try:
                while s.recv(1000):
                    pass
            except ConnectionResetError:
                pass
            s.close()
            b.wait_for_log(r"refused connection addr=127\.0\.0\.1:\d+ listener=tls: TLS handshake failed", start=start)
        rc, out, err = round_trip(b, certs)
        assert rc == 0 and out == "over tls", err
    finally:
        b.stop()


def test_sighup_reloads_the_certificate_and_keeps_clients(tmp_path, certs):
    b = tls_broker(tmp_path, certs)
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        kept = ctx.wrap_socket(socket.create_connection(("127.0.0.1", b.tls_port)), server_hostname="127.0.0.1")
        kept.sendall(connect_packet("kept", version=4))
        assert kept.recv(4)[0] == 0x20
        # A new certificate from another CA replaces the files.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                        "-out", "server.crt", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], cwd=certs, check=True, capture_output=True)
        b.proc.send_signal(signal.SIGHUP)
        b.wait_for_log(r"listener tls reloaded its TLS certificate")
        fresh = ssl.create_default_context(cafile=str(certs / "server.crt"))
        s = fresh.wrap_socket(socket.create_connection(("127.0.0.1", b.tls_port)), server_hostname="127.0.0.1")
        s.sendall(connect_packet("fresh", version=4))
        assert s.recv(4)[0] == 0x20, "the new certificate is served"
        kept.sendall(b"\xc0\x00")
        assert kept.recv(2) == b"\xd0\x00", "the client connected before the reload is still served"
        # A broken file on the next SIGHUP keeps the certificate in use.
        (certs / "server.key").write_text("not a key")
        b.proc.send_signal(signal.SIGHUP)
        b.wait_for_log(r"reload on SIGHUP kept listener tls's previous TLS certificate: .*server.key")
    finally:
        b.stop()


def test_broken_tls_settings_are_config_errors(tmp_path, certs):
    cfg = tmp_path / "tern.toml"
    cfg.write_text('[listeners.tls]\nbind = "127.0.0.1:0"\ncert = "missing.crt"\nkey = "missing.key"\n')
    rc, err = run_tern(["check-config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "missing.crt" in err, err
    cfg.write_text('[listeners.tls]\nbind = "127.0.0.1:0"\n')
    rc, err = run_tern(["check-config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "needs cert and key" in err, err
    cfg.write_text(f'[listeners.tls]\nbind = "127.0.0.1:0"\ncert = "{certs}/server.crt"\nkey = "{certs}/device.key"\n')
    rc, err = run_tern(["check-config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "does not fit" in err, err


def test_the_client_certificate_name_is_the_user_name(tmp_path, certs):
    acl = tmp_path / "acl"
    acl.write_text("user device-a\ntopic readwrite devices/a/#\n")
    b = tls_broker(tmp_path, certs, f'ca = "{certs}/ca.pem"\nrequire_client_cert = true\n'
                                    f'use_identity_as_username = true\n[auth]\nallow_anonymous = false\n'
                                    f'acl_file = "{acl}"\n')
    try:
        rc, out, err = round_trip(b, certs, cert="device", topic="devices/a/t")
        assert rc == 0 and out == "over tls", err
        denied = subprocess.run(mosquitto("mosquitto_sub", b, certs, "-t", "devices/b/#", "-C", "1", "-W", "3",
                                          cert="device"), capture_output=True, text=True, timeout=10)
        assert "denied" in denied.stderr.lower() or denied.returncode != 0, denied
        b.wait_for_log(r"user=Some\(\"device-a\"\) subscription refused filter=\"devices/b/#\"")
    finally:
        b.stop()


def test_identity_needs_a_certificate_source(tmp_path):
    cfg = tmp_path / "tern.toml"
    cfg.write_text('[listeners.tcp]\nbind = "127.0.0.1:0"\nuse_identity_as_username = true\n')
    rc, err = run_tern(["check-config", str(cfg)], cwd=tmp_path)
    assert rc != 0 and "use_identity_as_username needs client certificates" in err, err
