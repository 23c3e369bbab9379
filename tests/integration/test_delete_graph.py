"""sm.delete_graph (issue 12.4): refused while runs are in flight unless forced; forced,
they finish on their version; a deleted graph takes no runs, fires no cron, is not found;
upserted again it gets a newer version."""

from __future__ import annotations

import pytest

from exospherehost import (
    CronTrigger,
    GraphNotFound,
    InvalidArgument,
    StateManager,
    StoreConfigModel,
    UnitesStrategyEnum,
)
from tests.integration.helpers import worker_processes
from tests.integration.promises_support import until
from tests.integration.test_unites import fan_graph

STORE = StoreConfigModel(required_keys=["n"])


async def test_delete_refused_in_flight_then_forced_runs_finish(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    graph = fan_graph(namespace, UnitesStrategyEnum.ALL_DONE)
    with worker_processes(redis_url, namespace, 1):
        first = await sm.upsert_graph("fan", graph, store_config=STORE, validation_timeout=20)
    runs = await sm.trigger_many("fan", [None] * 3, store={"n": 4})  # no worker: in flight
    with pytest.raises(InvalidArgument, match="has 3 run\\(s\\) in flight"):
        await sm.delete_graph("fan")
    assert (await sm.get_graph("fan"))["version"] == first["version"]

    assert await sm.delete_graph("fan", force=True) == 3
    with pytest.raises(GraphNotFound):
        await sm.get_graph("fan")
    with pytest.raises(GraphNotFound):
        await sm.trigger("fan", store={"n": 1})
    assert "fan" not in await sm.graph_names()
    with pytest.raises(GraphNotFound):
        await sm.delete_graph("fan")
    with worker_processes(redis_url, namespace, 1):
        done = await sm.wait_all(runs, timeout=60)
    assert {s.status for s in done.values()} == {"SUCCEEDED"}, done
    assert {r.run_id for r in await sm.list_runs("fan")} == set(runs), "forced: still listed"
    everywhere = {r.run_id for r in await sm.list_runs()}
    assert everywhere == set(runs), "and in the namespace-wide listing"

    again = await sm.upsert_graph("fan", graph, store_config=STORE, validation_timeout=0)
    assert again["version"] > first["version"]
    assert (await sm.delete_graph("fan")) == 0  # nothing in flight: no force needed
    assert (await sm.list_runs("fan")).total == 0, "deleted without force: index gone"


async def test_a_deleted_graph_fires_no_cron(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Two graphs fire every second; one is deleted: while the other fires three more
    times, the deleted one fires at most the one fire that may have been under way."""
    graph = fan_graph(namespace, UnitesStrategyEnum.ALL_DONE)
    cfg = StoreConfigModel(default_values={"n": 1})
    every_second = [CronTrigger(expression="* * * * * *")]
    with worker_processes(redis_url, namespace, 1):
        for name in ("tick", "tock"):
            await sm.upsert_graph(
                name, graph, store_config=cfg, triggers=every_second, validation_timeout=20
            )

        async def fired(name: str, at_least: int) -> bool:
            return (await sm.list_runs(name, count=1)).total >= at_least

        await until(lambda: fired("tick", 2), "tick fired twice", timeout=20)
        await sm.delete_graph("tick", force=True)
        tick = (await sm.list_runs("tick", count=1)).total
        tock = (await sm.list_runs("tock", count=1)).total
        await until(lambda: fired("tock", tock + 3), "tock fired three more times", timeout=20)
        assert (await sm.list_runs("tick", count=1)).total <= tick + 1


async def test_deleting_a_graph_drops_its_run_index_on_every_lane(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """With lanes each lane keeps its own run index (its own slot on a cluster): a delete
    without runs in flight drops all of them, not lane 0's only."""
    from exospherehost import Runtime
    from exospherehost.broker.keys import run_lane
    from tests.integration.apps.nodes import Collect, Split, Work
    from tests.integration.helpers import running

    tags = await sm.set_lanes(3)
    rt = Runtime(namespace=namespace, name="p", nodes=[Split, Work, Collect], redis_url=redis_url)
    graph = fan_graph(namespace, UnitesStrategyEnum.ALL_DONE)
    async with running(rt):
        await sm.upsert_graph("fan", graph, store_config=STORE)
        runs = await sm.trigger_many("fan", [None] * 3, store={"n": 2})
        await sm.wait_all(runs, timeout=30)
    assert {run_lane(r) for r in runs} == set(tags), "one run on each lane"
    assert (await sm.list_runs()).total == 3
    assert await sm.delete_graph("fan") == 0
    assert (await sm.list_runs("fan")).total == 0 and (await sm.list_runs()).total == 0
    for tag in tags:
        assert not await sm.broker.client.exists(sm.keys.on_lane(tag).runs("fan")), tag
