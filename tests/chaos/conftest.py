"""Fixtures of the chaos suite. Every test here carries the `chaos` marker (`-m chaos`
selects the suite, `-m "not chaos"` leaves it out)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exospherehost.testing.server import PrivateServer

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def own_server() -> Iterator[PrivateServer]:
    """A private redis-server of this test alone, with AOF `appendfsync always`: scenarios
    that kill, restart or pause Redis never touch the session's shared server."""
    server = PrivateServer(appendonly=True, appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()
