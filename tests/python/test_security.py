"""TLS, password files and ACLs with paho-mqtt and the mosquitto clients."""

import os
import signal
import subprocess
import tempfile

import paho.mqtt.client as mqtt
import pytest

from conftest import make_pki
from test_paho import Client, TIMEOUT

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("STARLING_BIN", os.path.join(ROOT, "target", "debug", "starling"))


@pytest.fixture(scope="module")
def pki():
    """A throw-away CA and a server certificate for 127.0.0.1, via openssl."""
    d = tempfile.TemporaryDirectory(prefix="starling-pki-")
    yield make_pki(d.name)
    d.cleanup()


def tls_args(pki):
    return ["--set", f'tls.cert="{pki("server.pem")}"', "--set", f'tls.key="{pki("server.key")}"']


def test_paho_over_tls_and_secure_websocket(broker_factory, pki):
    b = broker_factory(*tls_args(pki))
    assert b.mqtts and b.wss
    sub = Client(b, "tls-sub", protocol=mqtt.MQTTv5, tls_ca=pki("ca.pem"), address=b.mqtts)
    sub.subscribe("tls/#", 1)
    wss = Client(b, "wss-pub", transport="websockets", tls_ca=pki("ca.pem"), address=b.wss)
    wss.publish("tls/x", "through wss", qos=1)
    assert sub.get().payload == b"through wss"
    sub.close()
    wss.close()


def test_mosquitto_clients_with_cafile(broker_factory, pki):
    b = broker_factory(*tls_args(pki))
    host, port = b.mqtts
    s = subprocess.Popen(["mosquitto_sub", "-h", host, "-p", str(port), "--cafile", pki("ca.pem"),
                          "-t", "cli/tls", "-C", "1", "-W", str(TIMEOUT)], stdout=subprocess.PIPE, text=True)
    # No "subscribed" signal from mosquitto_sub: publish until it has the
    # message (-C 1: it exits with it) rather than guess a delay.
    import time
    deadline = time.time() + TIMEOUT
    while True:
        subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", pki("ca.pem"),
                        "-t", "cli/tls", "-m", "secret", "-q", "1"], check=True, timeout=TIMEOUT)
        try:
            s.wait(timeout=0.3)
            break
        except subprocess.TimeoutExpired:
            assert time.time() < deadline, "mosquitto_sub over TLS never received the message"
    out, _ = s.communicate(timeout=TIMEOUT + 5)
    assert out.strip() == "secret"
    # Without the CA the handshake fails.
    r = subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "--capath", "/nonexistent",
                        "-t", "x", "-m", "y"], capture_output=True, timeout=TIMEOUT)
    assert r.returncode != 0


def test_mosquitto_passwd_file_and_sighup_reload(broker_factory):
    d = tempfile.TemporaryDirectory(prefix="starling-auth-")
    pwfile = os.path.join(d.name, "passwd")
    # A file written by Debian's mosquitto_passwd ($7$ PBKDF2-SHA512).
    subprocess.run(["mosquitto_passwd", "-c", "-b", pwfile, "bob", "builder"], check=True, capture_output=True)
    b = broker_factory("--set", f'auth.password_file="{pwfile}"', "--set", "auth.allow_anonymous=false")
    host, port = b.mqtt

    def pub(user, password):
        return subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "-u", user, "-P", password,
                               "-t", "auth/t", "-m", "x"], capture_output=True, timeout=TIMEOUT).returncode

    assert pub("bob", "builder") == 0
    assert pub("bob", "wrong") != 0
    assert pub("carol", "pw") != 0
    # Add carol with `starling passwd`, reload with SIGHUP.
    subprocess.run([BIN, "passwd", pwfile, "carol", "--password", "pw"], check=True)
    with open(pwfile) as f:
        assert any(line.startswith("carol:$argon2id$") for line in f)
    b.send_signal(signal.SIGHUP)
    assert b.wait_log("password and ACL files reloaded")
    assert pub("carol", "pw") == 0
    # Delete bob; reload; he is out.
    subprocess.run([BIN, "passwd", "-D", pwfile, "bob"], check=True)
    b.send_signal(signal.SIGHUP)
    import time
    deadline = time.time() + 10
    while sum("password and ACL files reloaded" in line for line in b.log) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert sum("password and ACL files reloaded" in line for line in b.log) == 2, "".join(b.log)
    assert pub("bob", "builder") != 0
    # Refused because bob is gone, not because the broker is: carol still works.
    assert b.proc.poll() is None
    assert pub("carol", "pw") == 0
    d.cleanup()
