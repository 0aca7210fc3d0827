"""The Java example of docs/chat.md (deploy/chat/java/ChatExample.java, the
FuseSource MQTT client from Debian's libmqtt-client-java, MQTT 3.1.1) in the
same room as the terminal client and an MQTT 5 client."""

import json
import os
import subprocess
import threading

from chatkit import ROOT, USERS, Terminal
from test_terminal import Web

JARS = ["mqtt-client", "hawtbuf", "hawtdispatch", "hawtdispatch-transport"]
CLASSPATH = ":".join(f"/usr/share/java/{j}.jar" for j in JARS)
EXAMPLE = os.path.join(ROOT, "deploy", "chat", "java", "ChatExample.java")


def test_java_example_chats_with_the_others(node):
    alice = Web(node, "alice")
    assert alice.subscribe("chat/rooms/general/+") == [1]
    carol = Terminal(f"{node.mqtt[0]}:{node.mqtt[1]}", "carol", USERS["carol"])
    java = subprocess.Popen(["java", "-cp", CLASSPATH, EXAMPLE, node.mqtt[0], str(node.mqtt[1]), "dave",
                             USERS["dave"], 'hello from "Java"', "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    sent = threading.Event()

    def pump():
        for line in java.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("sent "):
                sent.set()
    threading.Thread(target=pump, daemon=True).start()
    try:
        carol.wait_for("* connected")
        assert sent.wait(60), "\n".join(out)
        # Java → MQTT 5 client and terminal.
        m = alice.expect("chat/rooms/general/dave", timeout=30)
        assert json.loads(m.payload)["text"] == 'hello from "Java"'
        carol.wait_for('#general dave: hello from "Java"')
        # Terminal and MQTT 5 client → Java: a room message and a DM.
        carol.type("hi dave")
        alice.say("chat/inbox/dave/alice", "a DM for dave")
        assert java.wait(60) == 0, "\n".join(out)
        got = [line.split(" ", 1) for line in out[1:] if line.startswith("chat/")]
        topics = {t: json.loads(p)["text"] for t, p in got}
        assert topics.get("chat/rooms/general/carol") == "hi dave", out
        assert topics.get("chat/inbox/dave/alice") == "a DM for dave", out
    finally:
        if java.poll() is None:
            java.kill()
        carol.kill()
        alice.close()
