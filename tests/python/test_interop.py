"""Mosquitto's and Paho's clients talk to Tern in every protocol version."""

import subprocess


import pytest

from paho_helpers import V5, V31, V311, Paho


def mosquitto_sub(broker, topic, version, count, qos=1, extra=()):
    return subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-t", topic,
         "-q", str(qos), "-C", str(count), "-W", "10", "-v", *extra],
        stdout=subprocess.PIPE, text=True)


def mosquitto_pub(broker, topic, message, version, qos=1, extra=()):
    subprocess.run(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-t", topic,
         "-m", message, "-q", str(qos), *extra], check=True, timeout=10)


@pytest.mark.parametrize("sub_version", ["31", "311", "5"])
@pytest.mark.parametrize("pub_version", ["31", "311", "5"])
def test_mosquitto_clients_every_version_pair(broker, sub_version, pub_version):
    sub = mosquitto_sub(broker, "interop/#", sub_version, 2, qos=2)
    broker.wait_for_log(r"client connected .* proto=%s" % {"31": "3.1 ", "311": "3.1.1", "5": "5.0"}[sub_version])
    mosquitto_pub(broker, "interop/a", "q1", pub_version, qos=1)
    mosquitto_pub(broker, "interop/b", "q2", pub_version, qos=2)
    out, _ = sub.communicate(timeout=15)
    assert out.splitlines() == ["interop/a q1", "interop/b q2"]
    assert sub.returncode == 0


def test_mosquitto_retained_message(broker):
    mosquitto_pub(broker, "ret/t", "kept", "311", qos=1, extra=["-r"])
    sub = mosquitto_sub(broker, "ret/#", "5", 1)
    out, _ = sub.communicate(timeout=15)
    assert out.strip() == "ret/t kept"


@pytest.mark.parametrize("protocol", [V31, V311, V5])
def test_paho_round_trip(broker, protocol):
    sub = Paho(broker, "paho-sub", protocol)
    sub.subscribe("paho/+", qos=2)
    pub = Paho(broker, "paho-pub", protocol)
    for qos in (0, 1, 2):
        pub.publish("paho/x", f"qos{qos}", qos=qos)
        m = sub.expect()
        assert (m.topic, m.payload, m.qos) == ("paho/x", f"qos{qos}".encode(), qos)
    pub.disconnect()
    sub.disconnect()


