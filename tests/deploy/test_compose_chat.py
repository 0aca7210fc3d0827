"""The chat app on the compose cluster, as its users meet it: pages loaded
through HAProxy (8080) in headless Chromium, MQTT over WebSocket through
HAProxy (8083), two browser users on different nodes plus the terminal
client through HAProxy (1883); rooms both ways, presence and wills, a DM to
a signed-out user, and a node killed mid-conversation. Run by
scripts/compose-e2e after test_compose.py (it adds users and the chat ACL,
which deny everything else, so it runs last)."""

import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(__file__)
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
# The terminal client of the host build the images were made from.
os.environ.setdefault("STARLING_BIN", os.path.join(ROOT, "target", "release", "starling"))
sys.path.insert(0, os.path.join(HERE, "..", "chat"))
from browser import Page, wait  # noqa: E402
from chatkit import Terminal  # noqa: E402
from test_compose import NODES, compose, metric, node_http, status, wait_for  # noqa: E402

URL = "http://127.0.0.1:8080/chat/"
USERS = {"alice": "alice-pw-1", "bob": "bob-pw-1", "carol": "carol-pw-1"}


def connections():
    return {n: metric(n, "starling_connections") for n in NODES}


def sign_in_on_new_node(user, avoid=None, tries=6):
    """Signs `user` in on a fresh page; returns (page, node it landed on),
    trying again (new page) while it lands on `avoid`."""
    for _ in range(tries):
        before = connections()
        p = Page(URL)
        p.sign_in(user, USERS[user])
        after = connections()
        grown = [n for n in NODES if after[n] > before[n]]
        if len(grown) == 1 and grown[0] != avoid:
            return p, grown[0]
        p.d.find_element("id", "logout-btn").click()
        p.close()
        time.sleep(0.5)
    raise AssertionError(f"{user} did not land on a node other than {avoid}")


@pytest.fixture(scope="module")
def setup():
    for user, pw in USERS.items():
        r = compose("exec", "-T", "node1", "starling", "user", "add", user, "--password", pw,
                    "--server", "node1:7000", check=False)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([os.path.join(ROOT, "scripts", "chat-acl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield


def test_chat_across_nodes_with_a_node_killed(setup):
    pages = []
    carol = None
    killed = None
    try:
        alice, alice_node = sign_in_on_new_node("alice")
        pages.append(alice)
        bob, bob_node = sign_in_on_new_node("bob", avoid=alice_node)
        pages.append(bob)
        print("alice on", alice_node, "bob on", bob_node)
        carol = Terminal("127.0.0.1:1883", "carol", USERS["carol"])
        carol.wait_for("* connected", timeout=30)
        wait(lambda: alice.roster().get("bob") == "online" and alice.roster().get("carol") == "online",
             30, "roster")

        # Rooms, both ways, across nodes; the terminal too.
        alice.send("hi bob, from " + alice_node)
        bob.wait_text("hi bob, from " + alice_node)
        bob.send("hi alice, from " + bob_node)
        alice.wait_text("hi alice, from " + bob_node)
        carol.wait_for("#general bob: hi alice, from " + bob_node, timeout=30)
        carol.type("carol via haproxy:1883")
        alice.wait_text("carol via haproxy:1883")
        bob.wait_text("carol via haproxy:1883")
        alice.shot("cluster-general-alice")

        # bob's browser is closed: his will tells everyone.
        bob.close()
        wait(lambda: alice.roster().get("bob") == "offline", 30, "bob offline")
        carol.wait_for("* bob is offline", timeout=30)
        alice.open_dm("bob")
        alice.send("a DM while you were away")
        wait(lambda: alice.messages()[-1][3] == "acknowledged", 30, "DM acknowledged")
        alice.open_room("general")

        bob, bob_node = sign_in_on_new_node("bob", avoid=alice_node)
        pages.append(bob)
        wait(lambda: bob.unread_dm("alice") == "1", 30, "bob's waiting DM")

        # The node alice's WebSocket is on dies mid-conversation.
        killed = alice_node
        compose("kill", killed)
        print("killed", killed)
        sent_by_bob = [f"bob during the failover {i}" for i in range(8)]
        sent_by_alice = [f"alice during the failover {i}" for i in range(4)]
        for i, text in enumerate(sent_by_bob):
            bob.send(text)
            if i < len(sent_by_alice):
                alice.send(sent_by_alice[i])
            time.sleep(0.5)
        wait(lambda: alice.state() in ("reconnecting", "connecting") or alice.state() == "online", 10, "state")
        wait(lambda: alice.state() == "online", 90, "alice back online through another node")
        for text in sent_by_bob:
            alice.wait_text(text, 60)
        for text in sent_by_alice:
            bob.wait_text(text, 60)
        # Every message acknowledged, each shown once, in the sender's order.
        wait(lambda: all(m[3] == "acknowledged" for m in alice.messages() if m[1] == "alice"), 60, "alice's acks")
        wait(lambda: all(m[3] == "acknowledged" for m in bob.messages() if m[1] == "bob"), 60, "bob's acks")
        for p in (alice, bob):
            msgs = p.messages()
            ids = [m[0] for m in msgs]
            assert len(ids) == len(set(ids)), "a message shown twice"
            texts = [m[2] for m in msgs]
            for sent in (sent_by_bob, sent_by_alice):
                assert [t for t in texts if t in sent] == sent, "in the sender's order"
        alice.shot("cluster-after-node-kill-alice")
        bob.shot("cluster-after-node-kill-bob")
        carol.wait_for("bob during the failover 7", timeout=60)
    finally:
        for p in pages:
            p.close()
        if carol:
            carol.kill()
        if killed:
            compose("start", killed)
            wait_for(lambda: "ready" in node_http(killed, "/health/ready"), f"{killed} ready", 90)
            wait_for(lambda: all(m["alive"] for m in status()["members"]) and len(status()["members"]) == 3,
                     "three live members", 60)
