"""paho-mqtt (the reference Python client) against starling, MQTT 3.1.1
and 5.0, over TCP and WebSocket."""

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10


class Client:
    """A paho client with a queue of received messages and sync helpers."""

    def __init__(self, broker, client_id, protocol=mqtt.MQTTv311, transport="tcp", clean=True, props=None,
                 will=None, tls_ca=None, address=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                             transport=transport, clean_session=clean if protocol != mqtt.MQTTv5 else None)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subacks = queue.Queue()
        self.connack = None
        self.disconnect_reason = None
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        self.c.on_disconnect = self._on_disconnect
        if will:
            self.c.will_set(*will)
        host, port = address or (broker.ws if transport == "websockets" else broker.mqtt)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca)
        kwargs = {}
        if protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = props
        self.c.connect(host, port, keepalive=30, **kwargs)
        self.c.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"

    def _on_connect(self, c, u, flags, reason, props):
        self.connack = (flags, reason, props)
        self.connected.set()

    def _on_disconnect(self, c, u, flags, reason, props):
        self.disconnect_reason = reason
        self.disconnected.set()

    def subscribe(self, topic, qos=0, **kw):
        self.c.subscribe(topic, qos, **kw)
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
        return info

    def get(self, timeout=TIMEOUT):
        return self.messages.get(timeout=timeout)

    def none_within(self, secs):
        try:
            m = self.messages.get(timeout=secs)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {m.topic}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_v311_qos_levels_order_and_retained(broker):
    sub = Client(broker, "py-sub")
    assert [c.value for c in sub.subscribe("py/#", 2)] == [2]
    pub = Client(broker, "py-pub")
    for i in range(30):
        pub.publish("py/t", f"m{i}", qos=i % 3)
    got = [sub.get() for _ in range(30)]
    # Each message once, with its QoS; in order within each QoS level (the
    # spec's ordering guarantee). Across levels paho itself may reorder:
    # it hands a QoS 2 message to the application only at PUBREL, after a
    # QoS 0 one that arrived meanwhile.
    assert sorted((m.payload.decode(), m.qos) for m in got) == sorted((f"m{i}", i % 3) for i in range(30))
    for qos in range(3):
        assert [m.payload.decode() for m in got if m.qos == qos] == [f"m{i}" for i in range(30) if i % 3 == qos]
    pub.publish("py/retained", "kept", qos=1, retain=True)
    assert sub.get().payload == b"kept"
    late = Client(broker, "py-late")
    late.subscribe("py/retained", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"kept", True)
    for c in (sub, pub, late):
        c.close()


def test_v311_persistent_session_receives_while_offline(broker):
    sub = Client(broker, "py-persist", clean=False)
    sub.subscribe("persist/t", 1)
    sub.close()
    pub = Client(broker, "py-persist-pub")
    for i in range(5):
        pub.publish("persist/t", f"offline {i}", qos=1)
    sub = Client(broker, "py-persist", clean=False)
    assert sub.connack[0].session_present
    assert [sub.get().payload.decode() for _ in range(5)] == [f"offline {i}" for i in range(5)]
    sub.close()
    pub.close()


def test_v5_properties_round_trip(broker):
    sub = Client(broker, "py5-sub", protocol=mqtt.MQTTv5)
    sub.subscribe("py5/#", 1)
    pub = Client(broker, "py5-pub", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("room", "lobby"), ("lang", "en")]
    props.ResponseTopic = "py5/replies"
    props.CorrelationData = b"\x00\x01req"
    props.ContentType = "text/plain"
    props.MessageExpiryInterval = 60
    pub.publish("py5/chat", "hello", qos=1, props=props)
    m = sub.get()
    assert m.payload == b"hello"
    assert m.properties.UserProperty == [("room", "lobby"), ("lang", "en")]
    assert m.properties.ResponseTopic == "py5/replies"
    assert m.properties.CorrelationData == b"\x00\x01req"
    assert m.properties.ContentType == "text/plain"
    assert 0 < m.properties.MessageExpiryInterval <= 60
    sub.close()
    pub.close()


def test_v5_session_expiry_and_session_present(broker):
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    c = Client(broker, "py5-sess", protocol=mqtt.MQTTv5, clean=False, props=props)
    assert not c.connack[0].session_present
    c.subscribe("sess/t", 1)
    c.close()
    c = Client(broker, "py5-sess", protocol=mqtt.MQTTv5, clean=False, props=props)
    assert c.connack[0].session_present
    other = Client(broker, "py5-sess-pub", protocol=mqtt.MQTTv5)
    other.publish("sess/t", "still subscribed", qos=1)
    assert c.get().payload == b"still subscribed"
    c.close()
    other.close()


def test_v5_no_local_and_subscription_identifier(broker):
    c = Client(broker, "py5-nl", protocol=mqtt.MQTTv5)
    opts = mqtt.SubscribeOptions(qos=1, noLocal=True)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 12
    c.c.subscribe("nl/t", options=opts, properties=props)
    c.subacks.get(timeout=TIMEOUT)
    c.publish("nl/t", "mine", qos=1)
    assert c.none_within(0.5)
    other = Client(broker, "py5-nl-other", protocol=mqtt.MQTTv5)
    other.publish("nl/t", "theirs", qos=1)
    m = c.get()
    assert m.payload == b"theirs"
    assert m.properties.SubscriptionIdentifier == [12]
    c.close()
    other.close()


def test_websocket_v311_and_v5_interoperate_with_tcp(broker):
    ws3 = Client(broker, "py-ws3", transport="websockets")
    ws5 = Client(broker, "py-ws5", protocol=mqtt.MQTTv5, transport="websockets")
    ws3.subscribe("ws/#", 1)
    ws5.subscribe("ws/#", 1)
    tcp = Client(broker, "py-tcp")
    big = "x" * 100_000  # spans many TCP segments and WebSocket frames
    tcp.publish("ws/big", big, qos=1)
    tcp.publish("ws/small", "s", qos=1)
    for c in (ws3, ws5):
        assert c.get().payload.decode() == big
        assert c.get().payload == b"s"
    ws5.publish("ws/from-browser", "hi", qos=1)
    assert ws3.get().payload == b"hi"
    for c in (ws3, ws5, tcp):
        c.close()


def test_will_on_abnormal_disconnect(broker):
    watcher = Client(broker, "py-will-watch")
    watcher.subscribe("will/#", 1)
    doomed = Client(broker, "py-doomed", will=("will/doomed", "offline", 1, False))
    # Drop the socket without DISCONNECT.
    doomed.c.loop_stop()
    doomed.c.socket().close()
    m = watcher.get()
    assert (m.topic, m.payload) == ("will/doomed", b"offline")
    polite = Client(broker, "py-polite", will=("will/polite", "offline", 1, False))
    polite.close()
    assert watcher.none_within(1.0)
    watcher.close()


def test_takeover_disconnects_the_first_v5_client_with_0x8e(broker):
    first = Client(broker, "py-same", protocol=mqtt.MQTTv5)
    second = Client(broker, "py-same", protocol=mqtt.MQTTv5)
    assert first.disconnected.wait(TIMEOUT)
    assert first.disconnect_reason.value == 0x8E
    first.c.loop_stop()
    second.close()


def test_sigterm_sends_server_shutting_down_and_exits_cleanly(broker):
    c5 = Client(broker, "py-sd", protocol=mqtt.MQTTv5)
    c5.c.reconnect_delay_set(60, 120)
    started = time.time()
    code = broker.terminate()
    assert code == 0
    assert c5.disconnected.wait(TIMEOUT)
    assert c5.disconnect_reason.value == 0x8B
    assert time.time() - started < 10
    c5.c.loop_stop()
