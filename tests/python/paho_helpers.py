"""A thin synchronous wrapper around paho-mqtt 2.x for readable tests."""

import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5


class Paho:
    def __init__(self, broker, client_id="", protocol=V5, clean_start=True, properties=None,
                 will=None, keepalive=60, username=None, expect_refusal=False,
                 transport="tcp", port=None, ws_path="/mqtt", ca=None):
        """`transport` "websockets" with `port` for the ws/wss listeners; `ca` turns on TLS."""
        kwargs = {"transport": transport}
        if protocol != V5:
            kwargs["clean_session"] = clean_start
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if ca:
            self.c.tls_set(ca_certs=str(ca))
        self.messages = queue.Queue()
        self.connack = threading.Event()
        self.subacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        self.c.on_unsubscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        self.c.on_disconnect = lambda c, u, flags, rc, p: self.disconnects.put(rc)
        if will:
            self.c.will_set(**will)
        if username:
            self.c.username_pw_set(username, "pw")
        ckw = {}
        if protocol == V5:
            ckw["clean_start"] = clean_start
            ckw["properties"] = properties
        self.c.connect(broker.host, port or broker.port, keepalive=keepalive, **ckw)
        self.c.loop_start()
        assert self.connack.wait(5), "no CONNACK"
        if not expect_refusal:
            assert not self.reason_code.is_failure, f"refused: {self.reason_code}"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.flags, self.reason_code, self.connack_properties = flags, reason_code, properties
        self.connack.set()

    def subscribe(self, topic, qos=0, options=None, properties=None):
        if options is not None:
            self.c.subscribe(topic, options=options, properties=properties)
        else:
            self.c.subscribe(topic, qos, properties=properties)
        return self.subacks.get(timeout=5)

    def unsubscribe(self, topic):
        self.c.unsubscribe(topic)
        return self.subacks.get(timeout=5)

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(5)
        return info

    def expect(self, timeout=5):
        return self.messages.get(timeout=timeout)

    def expect_none(self, timeout=1.0):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")

    def disconnect(self, properties=None, reasoncode=None):
        self.c.disconnect(reasoncode=reasoncode, properties=properties)
        self.c.loop_stop()


def props(packet_type=PacketTypes.PUBLISH, **values):
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


CONNECT_PROPS = PacketTypes.CONNECT
SUBSCRIBE_PROPS = PacketTypes.SUBSCRIBE
