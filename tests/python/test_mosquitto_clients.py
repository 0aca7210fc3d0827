"""Debian's mosquitto_pub / mosquitto_sub against starling."""

import subprocess
import time

TIMEOUT = 10


def sub(broker, *args, count=1, version="mqttv311"):
    host, port = broker.mqtt
    return subprocess.Popen(
        ["mosquitto_sub", "-h", host, "-p", str(port), "-V", version, "-C", str(count), "-W", str(TIMEOUT), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pub(broker, *args, version="mqttv311"):
    host, port = broker.mqtt
    subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "-V", version, *args], check=True, timeout=TIMEOUT)


def pub_until_received(broker, s, *args, version="mqttv311"):
    """Publishes until mosquitto_sub (-C 1) got a message and exited.

    mosquitto_sub has no "subscribed" signal; a message published before
    its SUBACK reaches no one, so publish again until it arrives instead of
    guessing how long subscribing takes."""
    deadline = time.time() + TIMEOUT
    while True:
        pub(broker, *args, version=version)
        try:
            s.wait(timeout=0.3)
            return
        except subprocess.TimeoutExpired:
            assert time.time() < deadline, "mosquitto_sub never received a message"


def test_pub_sub_every_version_and_qos(broker):
    for version in ("mqttv31", "mqttv311", "mqttv5"):
        for qos in ("0", "1", "2"):
            topic = f"cli/{version}/{qos}"
            s = sub(broker, "-t", topic, "-q", qos, "-v", version=version)
            pub_until_received(broker, s, "-t", topic, "-m", f"hello {qos}", "-q", qos, version=version)
            out, err = s.communicate(timeout=TIMEOUT + 5)
            assert s.returncode == 0, err
            assert out.strip() == f"{topic} hello {qos}"


def test_retained_message_and_clear(broker):
    pub(broker, "-t", "cli/ret", "-m", "kept", "-r", "-q", "1")
    s = sub(broker, "-t", "cli/ret", "-F", "%r %p")
    out, _ = s.communicate(timeout=TIMEOUT + 5)
    assert out.strip() == "1 kept"
    pub(broker, "-t", "cli/ret", "-n", "-r")
    # Cleared: a new subscriber to it and to a marker topic gets the marker
    # first (the broker is alive and answering) and nothing retained.
    s = sub(broker, "-t", "cli/ret", "-t", "cli/marker", "-v")
    pub_until_received(broker, s, "-t", "cli/marker", "-m", "marker")
    out, err = s.communicate(timeout=TIMEOUT + 5)
    assert s.returncode == 0, err
    assert out.strip() == "cli/marker marker"


def test_v5_user_properties_reach_mosquitto_sub(broker):
    s = sub(broker, "-t", "cli/props", "-F", "%P %p", version="mqttv5")
    pub_until_received(broker, s, "-t", "cli/props", "-m", "body", "-D", "publish", "user-property", "k", "v",
                       version="mqttv5")
    out, err = s.communicate(timeout=TIMEOUT + 5)
    assert s.returncode == 0, err
    assert out.strip() == "k:v body"


def test_persistent_session_with_mosquitto_sub(broker):
    # Subscribe with a fixed id and no clean session, then disconnect.
    s = sub(broker, "-t", "cli/persist", "-q", "1", "-i", "cli-persist", "-c", "-W", "1")
    s.communicate(timeout=TIMEOUT + 5)
    pub(broker, "-t", "cli/persist", "-m", "while away", "-q", "1")
    s = sub(broker, "-t", "cli/persist", "-q", "1", "-i", "cli-persist", "-c")
    out, err = s.communicate(timeout=TIMEOUT + 5)
    assert out.strip() == "while away", err
