"""Fixtures for the client-compatibility suite: a real `starling` process on
ephemeral ports, and helpers for paho-mqtt and the mosquitto command-line
clients."""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import queue
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("STARLING_BIN", os.path.join(ROOT, "target", "debug", "starling"))


class Broker:
    """A starling node started for one test."""

    def __init__(self, extra_args=(), data_dir=None, mqtt_listen="127.0.0.1:0", ws_listen="127.0.0.1:0",
                 http_listen="127.0.0.1:0"):
        self.dir = tempfile.TemporaryDirectory(prefix="starling-py-")
        self.data_dir = data_dir or os.path.join(self.dir.name, "data")
        args = [
            BIN, "serve",
            "--mqtt-listen", mqtt_listen,
            "--ws-listen", ws_listen,
            "--http-listen", http_listen,
            "--grpc-listen", "127.0.0.1:0",
            "--set", 'listeners.mqtts="127.0.0.1:0"',
            "--set", 'listeners.wss="127.0.0.1:0"',
            "--data-dir", self.data_dir,
            *extra_args,
        ]
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log = []
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.time() + 20
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                raise RuntimeError("starling did not start:\n" + "".join(self.log))
            m = re.search(r"starling listening.*mqtt=(\S+) ws=(\S+) http=(\S+) grpc=(\S+) mqtts=(\S+) wss=(\S+)", line)
            if m:
                self.mqtt = self._split(m.group(1))
                self.ws = self._split(m.group(2))
                self.http = self._split(m.group(3))
                self.grpc = self._split(m.group(4))
                self.mqtts = self._split(m.group(5)) if m.group(5) != "off" else None
                self.wss = self._split(m.group(6)) if m.group(6) != "off" else None
                break
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("starling did not start:\n" + "".join(self.log))
        # Ready once the node's one-member cluster has elected itself.
        while not self.ready():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("starling did not become ready:\n" + "".join(self.log))
            time.sleep(0.05)

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.http[0]}:{self.http[1]}/health/ready", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    @staticmethod
    def _split(addr):
        host, port = addr.rsplit(":", 1)
        return host, int(port)

    def _pump(self):
        for line in self.proc.stderr:
            self.log.append(line)
            self._lines.put(line)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_log(self, text, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.log):
                return True
            time.sleep(0.05)
        return False

    def terminate(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()


def make_pki(directory, name="Test"):
    """A throw-away CA and, signed by it, a server certificate for 127.0.0.1
    and localhost, via openssl. Returns path(file) for "ca.pem",
    "server.pem", "server.key" (prefixed with `name`, so several CAs can
    share a directory)."""
    p = lambda n: os.path.join(directory, f"{name}-{n}")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} CA",
        "-keyout", p("ca.key"), "-out", p("ca.pem"))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", p("server.key"), "-out", p("server.csr"))
    with open(p("ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
        "-CAcreateserial", "-days", "2", "-extfile", p("ext.cnf"), "-out", p("server.pem"))
    return p


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.close()


@pytest.fixture
def broker_factory():
    made = []

    def make(*args):
        b = Broker(args)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
