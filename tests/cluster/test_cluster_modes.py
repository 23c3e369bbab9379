"""Issue 14: EXOSPHERE_REDIS_CLUSTER forced the wrong way round says so at once (instead
of MOVED errors with the word MOVED stripped, or a retry loop); the start-up eviction
check asks every master (a namespace's lanes land on all of them)."""

from __future__ import annotations

import asyncio

import pytest
import redis as redis_py

from exospherehost import Runtime, StateManager
from exospherehost.errors import ConfigError, ConnectionSetupError
from exospherehost.testing.cluster import PrivateCluster
from exospherehost.testing.server import ServerInfo
from tests.cluster.conftest import namespace_on
from tests.integration.apps.nodes import Square

pytestmark = [pytest.mark.redis]


async def test_told_no_on_a_cluster_node_names_the_setting(
    cluster: PrivateCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOSPHERE_REDIS_CLUSTER", "no")
    ns = namespace_on(1)
    # Not the master of ns: it answers MOVED.
    async with StateManager(ns, redis_url=cluster.infos[0].url) as sm:
        with pytest.raises(ConnectionSetupError, match="EXOSPHERE_REDIS_CLUSTER=no"):
            await sm.node_names()


async def test_told_yes_on_a_single_server_names_the_setting(
    redis_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOSPHERE_REDIS_CLUSTER", "yes")
    async with StateManager("single", redis_url=redis_server.url) as sm:
        with pytest.raises(ConnectionSetupError, match="EXOSPHERE_REDIS_CLUSTER=yes"):
            await sm.node_names()


@pytest.mark.parametrize("home", [2, 0])
async def test_the_eviction_check_asks_every_master(cluster: PrivateCluster, home: int) -> None:
    """Master 2 evicts: a Runtime refuses to start for a namespace on master 2, and for one
    on master 0 too (its lanes land on every master), naming master 2, through master 0's
    URL (a plain INFO there sees its noeviction)."""
    ns = namespace_on(home)
    evicting = cluster.infos[2]
    master = redis_py.Redis.from_url(evicting.url)
    master.config_set("maxmemory-policy", "allkeys-lru")
    try:
        rt = Runtime(namespace=ns, name="evict", nodes=[Square], redis_url=cluster.infos[0].url)
        task = rt.start()
        assert task is not None
        with pytest.raises(
            ConfigError, match=rf"master 127\.0\.0\.1:{evicting.port}: .*allkeys-lru"
        ):
            await asyncio.wait_for(task, 10)
    finally:
        master.config_set("maxmemory-policy", "noeviction")
        master.close()
