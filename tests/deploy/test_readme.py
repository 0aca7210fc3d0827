"""The README's quick start, run exactly as written.

The command under "## Run a node" is taken from README.md and run in the
repository root, as a new user would: it must build and start one node
with its state in ./data, serve MQTT on 1883 (WebSocket 8083, HTTP 8080,
gRPC 7000), print Starling's own concise start-up lines (not openraft's
state dumps), stop on Ctrl-C, and keep retained messages across a restart.

It refuses to run if ./data already exists (somebody's node state) or if
one of those ports is taken, rather than touch either.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "data")
PORTS = {"MQTT": 1883, "WebSocket": 8083, "HTTP": 8080, "gRPC": 7000}
# A fresh clone builds the release binary first.
BUILD_AND_START = 1800


def readme_run_command():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Run a node", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's 'Run a node' section has no ```sh block"
    lines = [l for l in block.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(lines) == 1, f"expected one command, found {lines}"
    return lines[0]


def ready():
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Node:
    def __init__(self, command, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        # Its own process group: Ctrl-C reaches cargo and the node, as in a
        # terminal.
        self.proc = subprocess.Popen(
            shlex.split(command), cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, NO_COLOR="1", RUST_LOG=""), start_new_session=True)

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()}"
            assert time.time() < deadline, f"not ready within {timeout} s:\n{self.output()}"
            time.sleep(0.5)

    def ctrl_c(self):
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.log.close()

    def output(self):
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path).read()


def sub_one(topic, timeout=10):
    out = subprocess.run(["mosquitto_sub", "-h", "localhost", "-t", topic, "-C", "1", "-W", str(timeout), "-v"],
                         capture_output=True, text=True, timeout=timeout + 5)
    return out.stdout.strip()


def test_readme_run_command_as_written(tmp_path):
    command = readme_run_command()
    assert not os.path.exists(DATA), f"{DATA} exists (a node's state?): move it away to run this test"
    taken = [f"{name} {port}" for name, port in PORTS.items() if port_open(port)]
    assert not taken, f"ports in use: {taken}"
    try:
        node = Node(command, tmp_path / "first.log")
        try:
            node.wait_ready(BUILD_AND_START)
            for name, port in PORTS.items():
                assert port_open(port), f"{name} not listening on {port}"
            assert os.path.isdir(DATA), "state is kept in ./data"
            # Starling's own lines; openraft stays at warn by default.
            log = node.output()
            assert "starling listening" in log and "initialized a new one-member cluster" in log, log
            assert re.search(r"INFO starling_cluster::liveness: ready .*role=leader", log), log
            chatter = re.findall(r"^\S+Z +(?:INFO|DEBUG|TRACE) openraft.*$", log, re.M)
            assert not chatter, "openraft's internals at the default level:\n" + "\n".join(chatter)
            # The README's try-it, with a retained message.
            subprocess.run(["mosquitto_pub", "-h", "localhost", "-t", "chat/lobby", "-m", "hello", "-r", "-q", "1"],
                           check=True, timeout=10)
            assert sub_one("chat/#") == "chat/lobby hello"
            # The README's chat page, and where it will find the WebSocket.
            with urllib.request.urlopen("http://localhost:8080/chat/", timeout=5) as r:
                assert b"<title>Starling chat</title>" in r.read()
            with urllib.request.urlopen("http://localhost:8080/chat/config.json", timeout=5) as r:
                assert json.load(r) == {"ws_port": 8083, "wss_port": None, "ws_path": "/mqtt"}
        finally:
            rc = node.ctrl_c()
        assert rc == 0, f"Ctrl-C: exit {rc}\n{node.output()}"
        assert "stopped" in node.output()

        # Restarted, it is the same node with the same state.
        node = Node(command, tmp_path / "second.log")
        try:
            node.wait_ready(120)
            assert "member of an existing cluster" in node.output()
            assert sub_one("chat/#") == "chat/lobby hello", "retained message kept across a restart"
        finally:
            assert node.ctrl_c() == 0
    finally:
        shutil.rmtree(DATA, ignore_errors=True)
