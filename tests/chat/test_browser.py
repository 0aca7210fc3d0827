"""The chat web app in a real browser (headless Chromium via Selenium),
served by a node at /chat/ and talking MQTT 5 over WebSocket to it, with
the terminal client in the same rooms. Screenshots go to
target/chat-screenshots/ (docs/chat.md shows them)."""

import urllib.request

import pytest

from chatkit import USERS, Terminal
from browser import Page, wait


def url(node):
    return f"http://{node.http[0]}:{node.http[1]}/chat/"


@pytest.fixture
def pages(node):
    made = []

    def make():
        p = Page(url(node))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_the_page_is_served_with_its_bundle(node):
    with urllib.request.urlopen(url(node)) as r:
        assert r.status == 200 and "text/html" in r.headers["content-type"]
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert b"vendor/mqtt.min.js" in r.read()
    with urllib.request.urlopen(url(node) + "vendor/mqtt.min.js") as r:
        assert b"MQTT.js" in r.read(400)


def test_wrong_password_shows_a_clear_message(node, pages):
    p = pages()
    p.sign_in("alice", "wrong", expect_ok=False)
    wait(lambda: "Wrong user name or password" in p.login_error(), what="login error")
    p.shot("login-wrong-password")
    # The right password then works from the same page.
    p.sign_in("alice", USERS["alice"])


def test_two_browsers_and_a_terminal_chat(node, pages):
    alice, bob = pages(), pages()
    alice.sign_in("alice", USERS["alice"])
    bob.sign_in("bob", USERS["bob"])
    carol = Terminal(f"{node.mqtt[0]}:{node.mqtt[1]}", "carol", USERS["carol"])
    try:
        carol.wait_for("* connected")
        # Presence: everyone sees everyone online.
        wait(lambda: alice.roster().get("bob") == "online" and alice.roster().get("carol") == "online",
             what="alice's roster")
        # Room messages both ways, with the delivery state of one's own.
        alice.send("hello from alice's browser")
        bob.wait_text("hello from alice's browser")
        wait(lambda: alice.messages()[-1][3] == "acknowledged", what="acknowledged")
        carol.wait_for("#general alice: hello from alice's browser")
        bob.send("bob here")
        alice.wait_text("bob here")
        carol.wait_for("#general bob: bob here")
        carol.type("carol from the terminal")
        alice.wait_text("carol from the terminal")
        bob.wait_text("carol from the terminal")
        # Typing indicator (QoS 0).
        bob.type_only("half a thou")
        wait(lambda: "bob is typing" in alice.typing(), what="typing indicator")
        alice.shot("room-general-alice")
        bob.shot("room-general-bob")
        # Each message shown once.
        for p in (alice, bob):
            ids = [m[0] for m in p.messages()]
            assert len(ids) == len(set(ids)) == 3
        # bob's browser goes away without signing out: the will says offline.
        bob.close()
        wait(lambda: alice.roster().get("bob") == "offline", what="bob offline")
        carol.wait_for("* bob is offline")
        # A direct message to bob, who is away; he gets it at his next sign-in.
        alice.open_dm("bob")
        alice.send("see you later, bob")
        wait(lambda: alice.messages()[-1][3] == "acknowledged", what="DM acknowledged")
        alice.shot("dm-alice-to-bob")
        bob = pages()
        bob.sign_in("bob", USERS["bob"])
        wait(lambda: bob.unread_dm("alice") == "1", what="bob's unread DM count")
        bob.shot("dm-unread-bob")
        bob.click('#dms li[data-peer="alice"]')
        bob.wait_text("see you later, bob")
        assert bob.unread_dm("alice") == ""
        # The terminal's DM lands in the page, and the page's in the terminal.
        carol.type("/dm bob from carol's terminal")
        wait(lambda: bob.unread_dm("carol") == "1", what="DM from the terminal")
        bob.open_dm("carol")
        bob.send("got it, carol")
        carol.wait_for("@bob → you: got it, carol")
        assert carol.quit() == 0
    finally:
        carol.kill()


def test_sign_out_keeps_direct_messages_waiting(node, pages):
    bob = pages()
    bob.sign_in("bob", USERS["bob"])
    bob.d.find_element("id", "logout-btn").click()
    wait(lambda: bob.js("return !document.querySelector('#login').hidden"), what="login form")
    alice = pages()
    alice.sign_in("alice", USERS["alice"])
    wait(lambda: alice.roster().get("bob") == "offline", what="bob signed out")
    alice.open_dm("bob")
    alice.send("while you were out")
    wait(lambda: alice.messages()[-1][3] == "acknowledged", what="DM acknowledged")
    bob.sign_in("bob", USERS["bob"])
    wait(lambda: bob.unread_dm("alice") == "1", what="DM waiting")


def test_pages_reconnect_and_send_what_was_typed_meanwhile(tmp_path):
    """The node restarts under two open pages: both show the connection
    state, reconnect by themselves (back-off), resume their sessions, and
    the messages typed while it was down are sent, acknowledged, and shown
    once each."""
    from chatkit import chat_broker
    node = chat_broker(str(tmp_path))
    ports = {k: f"127.0.0.1:{getattr(node, k)[1]}" for k in ("mqtt", "ws", "http")}
    alice, bob = Page(url(node)), Page(url(node))
    node2 = None
    try:
        alice.sign_in("alice", USERS["alice"])
        bob.sign_in("bob", USERS["bob"])
        alice.send("before the restart")
        bob.wait_text("before the restart")
        node.terminate()
        wait(lambda: alice.state() in ("reconnecting", "connecting"), what="alice sees the loss")
        alice.send("typed while the node was down")
        wait(lambda: alice.messages()[-1][3] == "queued", what="queued")
        alice.shot("reconnecting-alice")
        node2 = chat_broker(str(tmp_path), data_dir=node.data_dir, mqtt_listen=ports["mqtt"],
                            ws_listen=ports["ws"], http_listen=ports["http"])
        wait(lambda: alice.state() == "online" and bob.state() == "online", 40, "both back online")
        bob.wait_text("typed while the node was down", 30)
        wait(lambda: alice.messages()[-1][3] == "acknowledged", what="acknowledged after the reconnect")
        bob.send("welcome back")
        alice.wait_text("welcome back")
        for p in (alice, bob):
            ids = [m[0] for m in p.messages()]
            assert len(ids) == len(set(ids)) == 3, p.texts()
    finally:
        alice.close()
        bob.close()
        if node2:
            node2.close()
        node.close()


def test_rooms_created_joined_and_left(node, pages):
    alice, bob = pages(), pages()
    alice.sign_in("alice", USERS["alice"])
    bob.sign_in("bob", USERS["bob"])
    # alice creates a room: everyone's room list shows it (retained).
    alice.d.find_element("id", "room-name").send_keys("ops")
    alice.d.find_element("css selector", "#room-form button").click()
    wait(lambda: alice.js("return document.querySelector('#conversation-title').textContent") == "# ops",
         what="alice in #ops")
    wait(lambda: bob.js("""const e = document.querySelector('#rooms li[data-room="ops"]');
        return e && e.dataset.joined === 'no'"""), what="#ops listed for bob, not joined")
    alice.settled()
    alice.send("first in ops")
    # Not joined: bob gets nothing from #ops.
    bob.send("in general")
    alice.open_room("general")
    alice.wait_text("in general")
    # bob joins by clicking the room; then messages flow there.
    bob.open_room("ops")
    wait(lambda: bob.js("""return document.querySelector('#rooms li[data-room="ops"]').dataset.joined""") == "yes",
         what="bob joined #ops")
    bob.settled()
    wait(lambda: "first in ops" not in bob.texts(), what="no history before joining")
    alice.open_room("ops")
    alice.send("second in ops")
    bob.wait_text("second in ops")
    assert "first in ops" not in bob.texts()
    # Unread counts for a room not open.
    bob.open_room("general")
    alice.send("third in ops")
    wait(lambda: bob.js("""return document.querySelector('#rooms li[data-room="ops"] .unread').textContent""") == "1",
         what="bob's unread count for #ops")
    # bob leaves #ops: alice's next message there does not reach him.
    bob.open_room("ops")
    bob.d.find_element("id", "leave-btn").click()
    wait(lambda: bob.js("""const e = document.querySelector('#rooms li[data-room="ops"]');
        return e && e.dataset.joined === 'no'"""), what="bob left #ops")
    bob.settled()
    alice.send("after bob left")
    alice.open_room("general")
    alice.send("marker in general")
    bob.wait_text("marker in general")
    bob.open_room("ops")  # joins again; what was said meanwhile is not delivered
    assert "after bob left" not in bob.texts()
