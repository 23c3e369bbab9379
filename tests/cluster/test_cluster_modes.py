"""Issue 14: EXOSPHERE_REDIS_CLUSTER forced the wrong way round says so at once (instead
of MOVED errors with the word MOVED stripped, or a retry loop)."""

from __future__ import annotations

import pytest

from exospherehost import StateManager
from exospherehost.errors import ConnectionSetupError
from exospherehost.testing.cluster import PrivateCluster
from exospherehost.testing.server import ServerInfo
from tests.cluster.conftest import namespace_on

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
