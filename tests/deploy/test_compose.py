"""The compose deployment as a user meets it: three nodes behind HAProxy on
localhost, real clients (paho-mqtt, mosquitto clients). Run by
scripts/compose-e2e, which builds and starts the stack first; the tests run
in file order and share it."""

import os
import re
import subprocess
import threading
import time
import queue

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

COMPOSE = os.environ.get("COMPOSE_CMD", "docker-compose -p starling-e2e").split()
HOST = "127.0.0.1"
TIMEOUT = 20


def compose(*args, check=True):
    return subprocess.run([*COMPOSE, *args], capture_output=True, text=True, check=check, timeout=300)


def container(service):
    return compose("ps", "-q", service).stdout.strip()


def node_http(service, path):
    """GET on a node's own HTTP port, from inside its container (bash)."""
    script = f'exec 3<>/dev/tcp/127.0.0.1/8080; printf "GET {path} HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3'
    r = subprocess.run(["docker", "exec", container(service), "bash", "-c", script],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def metric(service, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", node_http(service, "/metrics"), re.M)
    return float(m.group(1)) if m else 0.0


def status(via="node1"):
    import json
    r = compose("exec", "-T", via, "starling", "cluster", "status", "--json", "--server", f"{via}:7000", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait_for(pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """A paho client through HAProxy that reconnects by itself. MQTT 5
    persistent sessions (clean=False) ask for a 300 s session expiry."""

    def __init__(self, client_id, clean=True, transport="tcp", port=1883, protocol=mqtt.MQTTv311):
        v5 = protocol == mqtt.MQTTv5
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             transport=transport, protocol=protocol, **({} if v5 else {"clean_session": clean}))
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put((mid, codes))
        self.c.on_connect = lambda c, u, flags, rc, p: self.connacks.put((flags.session_present, rc))
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        self.c.reconnect_delay_set(1, 2)
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else 300
            self.c.connect(HOST, port, keepalive=10, clean_start=clean, properties=props)
        else:
            self.c.connect(HOST, port, keepalive=10)
        self.c.loop_start()
        present, rc = self.connacks.get(timeout=TIMEOUT)
        assert rc == 0, rc
        self.session_present = present

    def subscribe(self, topic, qos=1):
        """Subscribes and waits for the SUBACK, which must grant it."""
        r, mid = self.c.subscribe(topic, qos)
        assert r == 0
        got, codes = self.subacks.get(timeout=TIMEOUT)
        assert got == mid, (got, mid)
        assert all(not c.is_failure for c in codes), f"SUBACK {codes}"

    def publish(self, topic, payload, qos=1, retain=False, expiry=None):
        """Publishes and waits for the acknowledgement; True when the
        broker acknowledged (PUBACK, or PUBCOMP for QoS 2)."""
        props = None
        if expiry is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        info.wait_for_publish(TIMEOUT)
        return info.is_published()

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


NODES = ["node1", "node2", "node3"]


def test_1_pub_sub_across_nodes():
    clients = [Client(f"spread-{i}") for i in range(6)]
    per_node = {n: metric(n, "starling_connections") for n in NODES}
    print("connections per node:", per_node)
    assert sum(1 for v in per_node.values() if v > 0) >= 2, "HAProxy spread clients over several nodes"
    clients[0].subscribe("e2e/spread")
    for i, c in enumerate(clients):
        c.publish("e2e/spread", f"from {i}")
    got = sorted(clients[0].messages.get(timeout=TIMEOUT).payload.decode() for _ in range(6))
    assert got == sorted(f"from {i}" for i in range(6))
    # mosquitto clients through HAProxy too.
    sub = subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", "1883", "-t", "e2e/cli", "-C", "1", "-W", "30"],
                           stdout=subprocess.PIPE, text=True)
    # mosquitto_sub does not say when its SUBACK came: publish until it has
    # received one (it exits after the first, -C 1).
    deadline = time.time() + 25
    while sub.poll() is None and time.time() < deadline:
        subprocess.run(["mosquitto_pub", "-h", HOST, "-p", "1883", "-t", "e2e/cli", "-m", "via haproxy", "-q", "1"],
                       check=True, timeout=15)
        try:
            sub.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    assert sub.communicate(timeout=20)[0].strip() == "via haproxy"
    for c in clients:
        c.close()


def test_2_retained_and_persistent_sessions():
    p = Client("ret-pub")
    p.publish("e2e/retained", "kept", retain=True)
    ws = Client("ret-ws", transport="websockets", port=8083)
    ws.subscribe("e2e/retained")
    m = ws.messages.get(timeout=TIMEOUT)
    assert (m.payload, m.retain) == (b"kept", True)
    s = Client("e2e-persist", clean=False)
    s.subscribe("e2e/persist")
    s.close()
    for i in range(10):
        p.publish("e2e/persist", f"m{i}")
    s = Client("e2e-persist", clean=False)
    assert s.session_present
    got = [s.messages.get(timeout=TIMEOUT).payload.decode() for _ in range(10)]
    assert got == [f"m{i}" for i in range(10)]
    for c in (p, ws, s):
        c.close()


killed = {}


def test_3_kill_a_node_under_a_qos1_stream():
    # The subscriber connects first, alone: the node with one connection is its node.
    before = {n: metric(n, "starling_connections") for n in NODES}
    s = Client("e2e-stream", clean=False)
    s.subscribe("e2e/stream")
    after = {n: metric(n, "starling_connections") for n in NODES}
    victim = next(n for n in NODES if after[n] > before[n])
    print("subscriber is on", victim)
    p = Client("e2e-streamer")
    published = []
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            try:
                if p.publish("e2e/stream", str(i)):
                    published.append(i)
            except Exception:
                pass
            i += 1
            time.sleep(0.02)

    # A daemon: if an assertion below fails, the publisher must not keep
    # pytest from exiting.
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    time.sleep(2)
    kill_at = len(published)
    compose("kill", victim)
    killed["service"] = victim
    # The subscriber reconnects through HAProxy to a surviving node and
    # resumes its session there.
    present, rc = s.connacks.get(timeout=30)
    resumed_at = len(published)
    assert rc == 0 and present, "session resumed on a surviving node"
    time.sleep(8)
    stop.set()
    t.join()
    # Everything acknowledged is on its way: take deliveries until all have
    # come (or 30 s), then a second more for duplicates.
    seen = []
    deadline = time.time() + 30
    while not set(published) <= {v for v, _ in seen} and time.time() < deadline:
        try:
            m = s.messages.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append((int(m.payload), m.dup))
    time.sleep(1)
    while not s.messages.empty():
        m = s.messages.get()
        seen.append((int(m.payload), m.dup))
    unique = {v for v, _ in seen}
    dups = len(seen) - len(unique)
    missing = sorted(set(published) - unique)
    print(f"published and acknowledged {len(published)} (kill after {kill_at}, resumed after about "
          f"{resumed_at}); received {len(seen)}, duplicates {dups}, missing {len(missing)}: {missing[:40]}")
    # The session is persistent, so every acknowledged message arrives,
    # across the kill of its node, first copies in publisher order.
    assert not missing, "acknowledged messages were lost"
    acked = set(published)
    firsts, first_seen = [], set()
    for v, dup in seen:
        if v in first_seen:
            assert dup, f"{v} repeated without DUP"
        elif v in acked:
            firsts.append(v)
        first_seen.add(v)
    assert firsts == sorted(firsts), "publisher order"
    s.close()
    p.close()


def test_4_killed_node_restarts_and_rejoins():
    victim = killed.get("service", "node3")
    compose("start", victim)
    wait_for(lambda: "ready" in node_http(victim, "/health/ready"), f"{victim} ready", 90)
    wait_for(lambda: all(m["alive"] for m in status()["members"]) and len(status()["members"]) == 3,
             "three live members", 60)
    assert metric(victim, "starling_ready") == 1.0
    # It serves: a subscriber on it (reached through its own container) gets publishes.
    s = Client("after-restart")
    s.subscribe("e2e/back")
    Client("after-restart-pub").publish("e2e/back", "hello again")
    assert s.messages.get(timeout=TIMEOUT).payload == b"hello again"


def node_of_new_connection(connect):
    """Runs connect() and returns (its result, the node whose connection
    count went up)."""
    before = {n: metric(n, "starling_connections") for n in NODES}
    r = connect()
    after = {n: metric(n, "starling_connections") for n in NODES}
    grown = [n for n in NODES if after[n] > before[n]]
    assert len(grown) == 1, (before, after)
    return r, grown[0]


def test_5_queued_messages_outlive_their_node():
    """The durable-sessions scenario through HAProxy: an MQTT 5 persistent
    subscriber is away while QoS 1 and QoS 2 messages are acknowledged, the
    node that held its session is killed, and it comes back through the load
    balancer: all of them, in order, QoS 2 once; one with a 1 s expiry is
    gone."""
    s, owner = node_of_new_connection(lambda: Client("e2e-away", clean=False, protocol=mqtt.MQTTv5))
    s.subscribe("e2e/away/#", qos=2)
    s.close()
    p = Client("e2e-away-pub", protocol=mqtt.MQTTv5)
    assert p.publish("e2e/away/short", "expires", qos=1, expiry=1)
    for i in range(200):
        assert p.publish("e2e/away/q1", str(i), qos=1), f"q1 {i} acknowledged"
        assert p.publish("e2e/away/q2", str(i), qos=2), f"q2 {i} acknowledged"
    p.close()
    print("session was on", owner)
    compose("kill", owner)
    time.sleep(2)
    s = Client("e2e-away", clean=False, protocol=mqtt.MQTTv5)
    assert s.session_present, "session present after its node died"
    got = {"e2e/away/q1": [], "e2e/away/q2": []}
    deadline = time.time() + 60
    while len(set(got["e2e/away/q1"])) < 200 or len(got["e2e/away/q2"]) < 200:
        m = s.messages.get(timeout=max(0.1, deadline - time.time()))
        assert m.topic in got, f"unexpected {m.topic}: {m.payload!r}"
        got[m.topic].append(int(m.payload))
    time.sleep(1)
    while not s.messages.empty():
        m = s.messages.get()
        assert m.topic in got, f"unexpected {m.topic}: {m.payload!r}"
        got[m.topic].append(int(m.payload))
    q1_firsts = list(dict.fromkeys(got["e2e/away/q1"]))
    assert q1_firsts == list(range(200)), "QoS 1: all, in publisher order"
    assert got["e2e/away/q2"] == list(range(200)), "QoS 2: all, once each, in order"
    s.close()
    compose("start", owner)
    wait_for(lambda: "ready" in node_http(owner, "/health/ready"), f"{owner} ready", 90)
    wait_for(lambda: all(m["alive"] for m in status()["members"]) and len(status()["members"]) == 3,
             "three live members", 60)


def test_6_scale_out_with_a_fourth_node_then_leave():
    compose("--profile", "scale", "up", "-d", "node4")
    wait_for(lambda: compose("exec", "-T", "node4", "starling", "healthcheck", "--live", check=False).returncode == 0,
             "node4 alive", 60)
    r = compose("exec", "-T", "node1", "starling", "cluster", "add", "4", "node4:7000", "--server", "node1:7000",
                check=False)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(status()["members"]) == 4, "four members", 60)
    s = Client("scale-sub")
    s.subscribe("e2e/scale")
    p4 = Client("scale-pub", port=18834)  # straight to node4
    p4.publish("e2e/scale", "through node4")
    assert s.messages.get(timeout=TIMEOUT).payload == b"through node4"
    p4.close()
    r = compose("exec", "-T", "node4", "starling", "cluster", "leave", "--server", "node4:7000", check=False)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(status()["members"]) == 3, "three members after leave", 60)
    print(compose("exec", "-T", "node1", "starling", "cluster", "status", "--server", "node1:7000").stdout)
    compose("--profile", "scale", "stop", "node4")
    s.close()
