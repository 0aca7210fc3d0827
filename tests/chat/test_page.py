"""The chat page's HTTP side: files, headers, the WebSocket settings it
reads, and `listeners.chat = false`."""

import json
import urllib.error
import urllib.request

from chatkit import chat_broker


def get(node, path):
    return urllib.request.urlopen(f"http://{node.http[0]}:{node.http[1]}{path}", timeout=5)


def test_files_and_settings(node):
    with get(node, "/chat") as r:  # redirected to /chat/
        assert r.url.endswith("/chat/") and b"<title>Starling chat</title>" in r.read()
    for path, kind in (("/chat/chat.js", "javascript"), ("/chat/chat.css", "css"),
                       ("/chat/vendor/mqtt.min.js", "javascript")):
        with get(node, path) as r:
            assert kind in r.headers["content-type"] and r.headers["x-content-type-options"] == "nosniff"
    with get(node, "/chat/config.json") as r:
        c = json.load(r)
    assert c == {"ws_port": node.ws[1], "wss_port": node.wss[1] if node.wss else None, "ws_path": "/mqtt"}


def test_chat_can_be_turned_off(tmp_path):
    node = chat_broker(str(tmp_path), "--set", "listeners.chat=false")
    try:
        try:
            get(node, "/chat/")
            raise AssertionError("the page is still served")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        with get(node, "/health/live") as r:
            assert r.status == 200
    finally:
        node.close()
