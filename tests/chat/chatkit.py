"""Helpers for the chat app tests: a node with users and the chat ACL, and
the terminal client (`starling chat`) as a process. The fixtures are in
conftest.py."""

import importlib.util
import os
import queue
import subprocess
import threading
import time

# The node fixture of the client-compatibility suite (tests/python/conftest.py),
# loaded under another name.
_spec = importlib.util.spec_from_file_location(
    "starling_python_suite", os.path.join(os.path.dirname(__file__), "..", "python", "conftest.py"))
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
BIN, ROOT, Broker, make_pki = _suite.BIN, _suite.ROOT, _suite.Broker, _suite.make_pki

ACL = os.path.join(ROOT, "deploy", "chat", "acl.toml")
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}


def chat_broker(tmpdir, *extra, **kw):
    """A node with the users alice, bob and carol and the chat ACL (the
    password file is made once per `tmpdir`)."""
    os.makedirs(tmpdir, exist_ok=True)
    passwd = os.path.join(tmpdir, "passwd")
    if not os.path.exists(passwd):
        for user, pw in USERS.items():
            subprocess.run([BIN, "passwd", passwd, user, "--password", pw], check=True, capture_output=True)
    return Broker(["--set", "auth.allow_anonymous=false", "--set", f'auth.password_file="{passwd}"',
                   "--set", f'auth.acl_file="{ACL}"', *extra], **kw)


class Terminal:
    """`starling chat` with a pipe for its input and its output collected."""

    def __init__(self, server, user, password=None, room="general", extra=()):
        env = dict(os.environ, NO_COLOR="1")
        env.pop("STARLING_CHAT_PASSWORD", None)
        if password is not None:
            env["STARLING_CHAT_PASSWORD"] = password
        self.proc = subprocess.Popen([BIN, "chat", "--server", server, "--user", user, "--room", room, *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env=env)
        self.lines = []
        self._new = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(None)

    def type(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, text, timeout=15, after=0):
        """Waits for an output line containing `text` (from line `after` on)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, line in enumerate(self.lines[after:], after):
                if text in line:
                    return i
            try:
                self._new.get(timeout=0.1)
            except queue.Empty:
                pass
        raise AssertionError(f"no line with {text!r}; output:\n" + "\n".join(self.lines))

    def count(self, text):
        return sum(text in line for line in self.lines)

    def quit(self, timeout=15):
        self.type("/quit")
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
