"""Shared fixtures: one private redis-server per test session, a namespace per test.

The session server is a :class:`exospherehost.testing.server.PrivateServer` on a free 127.0.0.1 port
in its own temp dir; no fixture ever connects to a server it did not start (so never
to one on 6379) and none empties a database. Tests isolate themselves by keeping every
key under their ``namespace``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from exospherehost import StateManager
from exospherehost.testing.server import PrivateServer, ServerInfo


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerInfo]:
    """A real redis-server started for this test session and stopped at its end."""
    server = PrivateServer()
    info = server.start()
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: ServerInfo) -> str:
    """URL of the session's private server."""
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A namespace unique to this test; all of the test's keys live under it."""
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client (bytes replies) to the session server, closed after the test."""
    client: Redis = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> AsyncIterator[StateManager]:
    """A StateManager of the test's namespace on the session server, closed after the test."""
    manager = StateManager(namespace, redis_url=redis_url)
    try:
        yield manager
    finally:
        await manager.close()
