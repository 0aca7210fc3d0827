"""Fixtures for the chat app tests (helpers in chatkit.py)."""

import pytest

from chatkit import chat_broker


@pytest.fixture
def node(tmp_path):
    """A node with the users alice, bob, carol and dave and the chat ACL."""
    b = chat_broker(str(tmp_path))
    yield b
    b.close()
