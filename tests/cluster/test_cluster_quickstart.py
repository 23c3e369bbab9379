"""Issue 14: the SDK on a real 3-master Redis Cluster, through the URL of one node."""

from __future__ import annotations

import pytest

from exospherehost import Runtime, StateManager
from exospherehost.testing.cluster import PrivateCluster
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import running, squares_graph

pytestmark = [pytest.mark.redis]


async def test_a_graph_runs_in_a_namespace_on_every_master(
    cluster: PrivateCluster, spread: list[str]
) -> None:
    url = cluster.url
    for ns in spread:
        rt = Runtime(namespace=ns, name="graphs", nodes=[Split, Square, Label], redis_url=url)
        async with running(rt), StateManager(ns, redis_url=url) as sm:
            graph = await sm.upsert_graph("g", squares_graph(ns, items=4), secrets={})
            assert graph["validation_status"] == "VALID"
            run = await sm.trigger("g", inputs={"base": 10})
            status = await sm.wait(run, timeout=10)
            assert status.status == "SUCCEEDED", (ns, status)
            assert len(await sm.results(run)) == 4
