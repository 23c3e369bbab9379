"""Issue 17 item 2: a Runtime refuses a Redis that evicts any key (allkeys-*), unless told
to start anyway, and warns on volatile-* (which can evict only finished runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from exospherehost import Runtime, StateManager
from exospherehost.broker.keys import Keys
from exospherehost.config import ConfigError
from exospherehost.testing import PrivateServer, ServerInfo
from tests.integration.apps.nodes import SampleNode
from tests.integration.helpers import running
from tests.integration.test_cli import one_line_error, run_cli

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def evicting_server() -> Iterator[ServerInfo]:
    """Its own server: the policy is server-wide, the session's server stays noeviction."""
    with PrivateServer() as server:
        assert server.info is not None
        yield server.info


@pytest.fixture
async def policy(evicting_server: ServerInfo) -> AsyncIterator[Redis]:
    client = Redis.from_url(evicting_server.url)
    try:
        yield client
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()


def _runtime(url: str, namespace: str) -> Runtime:
    return Runtime(namespace=namespace, name="ev", nodes=[SampleNode], redis_url=url)


async def test_allkeys_lru_is_refused_with_the_fix_named(
    evicting_server: ServerInfo, policy: Redis, namespace: str
) -> None:
    await policy.config_set("maxmemory-policy", "allkeys-lru")
    task = _runtime(evicting_server.url, namespace).start()
    assert task is not None
    with pytest.raises(ConfigError, match=r"allkeys-lru.*noeviction"):
        await asyncio.wait_for(task, 10)
    assert await policy.exists(Keys(namespace).nodes()) == 0, "it registered anyway"


async def test_allow_eviction_starts_with_a_warning(
    evicting_server: ServerInfo,
    policy: Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await policy.config_set("maxmemory-policy", "allkeys-lfu")
    monkeypatch.setenv("EXOSPHERE_ALLOW_EVICTION", "1")
    with caplog.at_level(logging.WARNING, "exospherehost"):
        async with running(_runtime(evicting_server.url, namespace)):
            pass
    assert any("allkeys-lfu" in r.getMessage() for r in caplog.records)


async def test_volatile_policy_warns_and_serves(
    evicting_server: ServerInfo, policy: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    await policy.config_set("maxmemory-policy", "volatile-lru")
    with caplog.at_level(logging.WARNING, "exospherehost"):
        async with running(_runtime(evicting_server.url, namespace)):
            pass
    assert any("volatile-lru" in r.getMessage() for r in caplog.records)


async def test_noeviction_says_nothing(
    evicting_server: ServerInfo, policy: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "exospherehost"):
        async with running(_runtime(evicting_server.url, namespace)):
            pass
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]


def test_a_write_refused_for_memory_says_so_in_one_line(evicting_server: ServerInfo) -> None:
    """Issue 17 item 3: a refused enqueue says Redis is out of memory (redis-py strips the
    OOM code, leaving "command not allowed when used memory > 'maxmemory'")."""
    import redis

    admin = redis.Redis.from_url(evicting_server.url)
    admin.config_set("maxmemory", 1)
    try:
        result = run_cli(evicting_server.url, "oom", "enqueue", "SampleNode", "-i", "name=a")
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    assert "is out of memory (maxmemory reached; nothing was written)" in one_line_error(result)


async def test_a_state_manager_warns_once_before_writing_to_an_evicting_redis(
    evicting_server: ServerInfo,
    policy: Redis,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await policy.config_set("maxmemory-policy", "allkeys-lru")
    sm = StateManager(namespace, redis_url=evicting_server.url)
    try:
        with caplog.at_level(logging.WARNING, "exospherehost"):
            await sm.enqueue("SampleNode", {"name": "a", "data": {}})
            await sm.enqueue("SampleNode", {"name": "b", "data": {}})
    finally:
        await sm.close()
    said = [r for r in caplog.records if "allkeys-lru" in r.getMessage()]
    assert len(said) == 1, "warn once per StateManager, before its first write"
