"""The terminal chat client (`starling chat`) against a real node with users
and the chat ACL (deploy/chat/acl.toml), talking with paho-mqtt clients that
use the web app's topics and payloads."""

import json
import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from chatkit import USERS, Terminal

TIMEOUT = 10


class Web:
    """A paho MQTT 5 client speaking the web app's protocol as `user`."""

    def __init__(self, node, user, password=None, client_id=None, clean=True):
        self.user = user
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{user}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, USERS[user] if password is None else password)
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.connected = threading.Event()
        self.reason = None
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)

        def on_connect(c, u, flags, reason, props):
            self.reason = reason
            self.connected.set()
        self.c.on_connect = on_connect
        props = None
        if not clean:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.c.connect(node.mqtt[0], node.mqtt[1], keepalive=30, clean_start=clean, properties=props)
        self.c.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"

    def subscribe(self, topic, qos=1):
        self.c.subscribe(topic, qos)
        return [c.value for c in self.subacks.get(timeout=TIMEOUT)]

    def say(self, topic, text):
        body = json.dumps({"id": f"{self.user}-{time.time_ns()}", "text": text, "ts": int(time.time() * 1000)})
        info = self.c.publish(topic, body, qos=1)
        info.wait_for_publish(TIMEOUT)
        return info

    def expect(self, topic, timeout=TIMEOUT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if m.topic == topic:
                return m
        raise AssertionError(f"no message on {topic}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def server(node):
    return f"{node.mqtt[0]}:{node.mqtt[1]}"


def test_terminal_and_mqtt_client_chat_both_ways(node):
    alice = Web(node, "alice")
    assert alice.subscribe("chat/rooms/general/+") == [1]
    carol = Terminal(server(node), "carol", USERS["carol"])
    try:
        carol.wait_for("* connected")
        carol.type("hello from the terminal")
        # Shown once the broker acknowledged it.
        carol.wait_for("#general carol: hello from the terminal ✓")
        m = alice.expect("chat/rooms/general/carol")
        body = json.loads(m.payload)
        assert body["text"] == "hello from the terminal" and body["id"] and body["ts"] > 0
        alice.say("chat/rooms/general/alice", "hi carol")
        carol.wait_for("#general alice: hi carol")
        # Rooms: join another, talk there.
        carol.type("/join ops")
        carol.wait_for("* now in #ops")
        carol.wait_for("* joined #ops")  # its SUBACK: in force
        assert alice.subscribe("chat/rooms/ops/+") == [1]
        alice.say("chat/rooms/ops/alice", "ops room works")
        carol.wait_for("#ops alice: ops room works")
        carol.type("in ops")
        assert json.loads(alice.expect("chat/rooms/ops/carol").payload)["text"] == "in ops"
        assert carol.count("ops room works") == 1
        assert carol.quit() == 0
    finally:
        carol.kill()
        alice.close()


def test_presence_online_and_will_offline(node):
    alice = Web(node, "alice")
    carol = Terminal(server(node), "carol", USERS["carol"])
    try:
        carol.wait_for("* connected")
        alice.subscribe("chat/presence/+")
        m = alice.expect("chat/presence/carol")
        assert m.payload == b"online"
        # Retained: whoever subscribes later learns it too.
        bob = Web(node, "bob")
        bob.subscribe("chat/presence/carol")
        m = bob.expect("chat/presence/carol")
        assert m.payload == b"online" and m.retain
        # The terminal sees others come and go.
        bob.c.publish("chat/presence/bob", "online", qos=1, retain=True).wait_for_publish(TIMEOUT)
        carol.wait_for("* bob is online")
        carol.kill()  # no DISCONNECT: the will says offline
        m = alice.expect("chat/presence/carol")
        assert m.payload == b"offline"
        bob.close()
    finally:
        carol.kill()
        alice.close()


def test_direct_message_waits_for_a_signed_out_user(node):
    carol = Terminal(server(node), "carol", USERS["carol"])
    try:
        carol.wait_for("* connected")
        assert carol.quit() == 0
    finally:
        carol.kill()
    alice = Web(node, "alice")
    alice.say("chat/inbox/carol/alice", "are you there?")
    alice.close()
    carol = Terminal(server(node), "carol", USERS["carol"])
    try:
        carol.wait_for("* connected (session resumed)")
        carol.wait_for("@alice → you: are you there?")
        # And back: a DM from the terminal into alice's inbox.
        alice = Web(node, "alice")
        assert alice.subscribe("chat/inbox/alice/+") == [1]
        carol.type("/dm alice yes, here")
        carol.wait_for("@you → alice: yes, here ✓")
        assert json.loads(alice.expect("chat/inbox/alice/carol").payload)["text"] == "yes, here"
        alice.close()
        assert carol.quit() == 0
    finally:
        carol.kill()


def test_acl_stops_impersonation_and_reading_other_inboxes(node):
    alice = Web(node, "alice")
    bob = Web(node, "bob")
    try:
        assert bob.subscribe("chat/rooms/general/+") == [1]
        # Posting as someone else: refused (MQTT 5 PUBACK 0x87), not delivered.
        info = alice.c.publish("chat/rooms/general/bob", json.dumps({"text": "I am bob"}), qos=1)
        info.wait_for_publish(TIMEOUT)
        alice.say("chat/rooms/general/alice", "I am alice")
        m = bob.expect("chat/rooms/general/alice")
        assert json.loads(m.payload)["text"] == "I am alice"
        assert bob.messages.empty()
        # Reading another inbox, or everything: refused in the SUBACK.
        assert alice.subscribe("chat/inbox/bob/+") == [0x87]
        assert alice.subscribe("chat/#") == [0x87]
        assert alice.subscribe("chat/inbox/alice/+") == [1]
        # Writing into bob's inbox as alice is fine; as carol it is not.
        assert bob.subscribe("chat/inbox/bob/+") == [1]
        alice.c.publish("chat/inbox/bob/carol", "forged", qos=1).wait_for_publish(TIMEOUT)
        alice.say("chat/inbox/bob/alice", "real")
        assert json.loads(bob.expect("chat/inbox/bob/alice").payload)["text"] == "real"
        assert bob.messages.empty()
    finally:
        alice.close()
        bob.close()


def test_wrong_password_is_a_clear_error(node):
    t = Terminal(server(node), "carol", "not-the-password")
    try:
        assert t.proc.wait(TIMEOUT) != 0
        t.wait_for("wrong user name or password")
    finally:
        t.kill()


def test_terminal_reconnects_and_sends_what_was_typed_offline(tmp_path):
    from chatkit import chat_broker
    node = chat_broker(str(tmp_path / "a"))
    port = node.mqtt[1]
    carol = Terminal(server(node), "carol", USERS["carol"])
    try:
        carol.wait_for("* connected")
        node.terminate()
        carol.wait_for("* connection lost")
        carol.type("typed while the broker was down")
        carol.wait_for("* offline: will send when connected")
        # The same node comes back on the same port with its data.
        node2 = restart(node, port, str(tmp_path / "a"))
        try:
            alice = Web(node2, "alice")
            # carol's session (and its subscription) survived the restart.
            carol.wait_for("* connected (session resumed)", timeout=30)
            carol.wait_for("#general carol: typed while the broker was down ✓")
            alice.say("chat/rooms/general/alice", "welcome back")
            carol.wait_for("#general alice: welcome back")
            alice.close()
        finally:
            carol.kill()
            node2.close()
    finally:
        carol.kill()
        node.close()



def restart(node, port, tmpdir):
    """The same node again: same data directory, same MQTT port."""
    from chatkit import chat_broker
    return chat_broker(tmpdir, data_dir=node.data_dir, mqtt_listen=f"127.0.0.1:{port}")


def test_terminal_over_tls(tmp_path):
    from chatkit import chat_broker, make_pki
    pki = make_pki(str(tmp_path), "good")
    other = make_pki(str(tmp_path), "other")
    node = chat_broker(str(tmp_path), "--set", f'tls.cert="{pki("server.pem")}"',
                       "--set", f'tls.key="{pki("server.key")}"')
    tls_server = f"127.0.0.1:{node.mqtts[1]}"
    untrusting = Terminal(tls_server, "bob", USERS["bob"], extra=["--tls", "--ca", other("ca.pem")])
    carol = Terminal(tls_server, "carol", USERS["carol"], extra=["--tls", "--ca", pki("ca.pem")])
    alice = Web(node, "alice")
    try:
        assert alice.subscribe("chat/rooms/general/+") == [1]
        carol.wait_for("* connected")
        carol.type("over TLS")
        assert json.loads(alice.expect("chat/rooms/general/carol").payload)["text"] == "over TLS"
        alice.say("chat/rooms/general/alice", "back over plain TCP")
        carol.wait_for("#general alice: back over plain TCP")
        # A server certificate from a CA the client does not trust: refused.
        untrusting.wait_for("cannot connect")
        assert any("TLS" in line for line in untrusting.lines), untrusting.lines
        assert not any("* connected" in line for line in untrusting.lines)
    finally:
        untrusting.kill()
        carol.kill()
        alice.close()
        node.close()
