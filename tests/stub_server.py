"""Fixtures of the local stub server, loaded with ``pytest_plugins = ["tests.stub_server"]``.

One server serves the whole run (closing one costs 0.5 s: http.server's shutdown poll); each test
gets it with an empty request log and a fresh :class:`~tests.replay_support.Script` responder.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_bclone.testing import OpenAIServer

from .replay_support import Script

_SCRIPT = Script()


@pytest.fixture(scope="session")
def _shared_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(_SCRIPT) as srv:
        yield srv


@pytest.fixture
def script() -> Script:
    """The shared server's responder, reset for each test."""
    _SCRIPT.reset()
    return _SCRIPT


@pytest.fixture
def server(_shared_server: OpenAIServer, script: Script) -> OpenAIServer:
    """The shared stub server with an empty request log and a fresh ``script``."""
    with _shared_server._lock:
        _shared_server.requests.clear()
    return _shared_server

