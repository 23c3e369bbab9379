"""Issue 14: on a Redis Cluster, `exosphere status` and the dashboard's memory line show
every master (used, maxmemory, ratio, policy), not the one node a plain INFO reaches;
the ratio is the fullest master's, the one that refuses writes first."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest
import redis as redis_py

from exospherehost import StateManager
from exospherehost.broker.serverinfo import ClusterMemory, Memory
from exospherehost.dashboard import create_app
from exospherehost.testing.cluster import PrivateCluster
from exospherehost.testing.server import HOST
from tests.cluster.conftest import namespace_on
from tests.integration.test_cli import arun
from tests.integration.test_dashboard import _call, dashboard_server

pytestmark = [pytest.mark.redis]

LIMIT = 512 * 1024 * 1024


@pytest.fixture
def one_limited(cluster: PrivateCluster) -> Iterator[str]:
    """Master 1 with a maxmemory (the others none); its "host:port"."""
    info = cluster.infos[1]
    with redis_py.Redis.from_url(info.url) as master:
        master.config_set("maxmemory", LIMIT)
        try:
            yield f"{HOST}:{info.port}"
        finally:
            master.config_set("maxmemory", 0)


def test_the_summary_names_each_master_and_the_fullest_ratio() -> None:
    mem = ClusterMemory(
        (
            ("h:1", Memory("noeviction", 1024 * 1024, 4 * 1024 * 1024)),
            ("h:2", Memory("noeviction", 3 * 1024 * 1024, 4 * 1024 * 1024)),
        )
    )
    assert mem.summary() == (
        "Redis memory (2 masters): 4.0 MiB used; h:1 1.0 MiB of 4.0 MiB maxmemory (25%), "
        "h:2 3.0 MiB of 4.0 MiB maxmemory (75%); policy noeviction"
    )
    view = mem.as_dict()
    assert (view["used_bytes"], view["maxmemory_bytes"], view["used_ratio"]) == (
        4 * 1024 * 1024, 8 * 1024 * 1024, 0.75,
    )  # fmt: skip
    mixed = ClusterMemory(
        (("h:1", Memory("noeviction", 1, 0)), ("h:2", Memory("allkeys-lru", 1, 9)))
    )
    assert mixed.limit == 0 and mixed.policy == "noeviction on h:1, allkeys-lru on h:2"


async def test_status_and_dashboard_show_every_master(
    cluster: PrivateCluster, one_limited: str
) -> None:
    ns = namespace_on(2)
    url = cluster.infos[0].url
    async with StateManager(ns, redis_url=url) as sm:
        await sm.broker.registry.register({"Square": "{}"})
    names = [f"{HOST}:{i.port}" for i in cluster.infos]

    as_json = await arun(url, ns, "status", "--json", "--interval", "0.1")
    assert as_json.exit_code == 0, as_json.output
    mem = json.loads(as_json.stdout.strip().splitlines()[-1])["redis_memory"]
    assert sorted(mem["masters"]) == sorted(names)
    masters = mem["masters"]
    assert mem["used_bytes"] == sum(m["used_bytes"] for m in masters.values())
    assert all(m["used_bytes"] > 0 for m in masters.values())
    assert masters[one_limited]["maxmemory_bytes"] == LIMIT
    assert mem["maxmemory_bytes"] == 0  # the other masters have no limit
    assert mem["used_ratio"] == masters[one_limited]["used_ratio"] > 0

    table = await arun(url, ns, "status", "--interval", "0.1")
    assert table.exit_code == 0, table.output
    last = table.stdout.strip().splitlines()[-1]
    assert last.startswith("Redis memory (3 masters): "), table.stdout
    assert re.search(rf"{re.escape(one_limited)} [0-9.]+ [KMG]i?B of 512\.0 MiB maxmemory", last)
    assert all(name in last for name in names) and last.endswith("policy noeviction")

    app = create_app(url, None, namespace=ns)
    with dashboard_server(app) as base:
        status, body = await asyncio.to_thread(_call, f"{base}api/ns/{ns}")
    assert status == 200, body
    assert sorted(body["redis_memory"]["masters"]) == sorted(names)
    assert body["redis_memory"]["summary"].startswith("Redis memory (3 masters)")
