"""Issue 14: a namespace's slot, or one of its lanes', moved to another master while its
states flow (as `redis-cli --cluster reshard` moves it: IMPORTING / MIGRATING, MIGRATE
batches, SETSLOT NODE): every run completes, each leaf once, nothing left pending. (A
worker killed with SIGKILL on the cluster: tests/crash/test_crash.py, which runs on the
cluster too.)"""

from __future__ import annotations

import asyncio

import pytest

from exospherehost import Runtime, StateManager
from exospherehost.broker.keys import Keys, run_lane, tag_slot
from exospherehost.testing.cluster import PrivateCluster
from tests.cluster.conftest import namespace_on
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import (
    running,
    squares_graph,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RUNS = 400
ITEMS = 3


@pytest.mark.parametrize("lanes", [1, 3])
async def test_moving_the_namespace_slot_under_load_loses_and_doubles_nothing(
    cluster: PrivateCluster, lanes: int
) -> None:
    """k = 1: the namespace's slot moves; k = 3: lane 1's (a third of the runs), while
    the runs of the other lanes go on on their masters."""
    ns = namespace_on(0)
    url = cluster.url
    async with StateManager(ns, redis_url=url) as setup:
        tag = (await setup.set_lanes(lanes))[1] if lanes > 1 else 0
    keys = Keys(ns).on_lane(tag)
    slot = tag_slot(ns if tag == 0 else f"{ns}/{tag}")
    source = cluster.owner(slot)
    target = 2 if source != 2 else 1
    rt = Runtime(
        namespace=ns, name="reshard", nodes=[Split, Square, Label], redis_url=url, workers=4
    )
    async with running(rt), StateManager(ns, redis_url=url) as sm:
        await sm.upsert_graph("g", squares_graph(ns, items=ITEMS), secrets={})
        runs = await sm.trigger_many("g", [{"base": k} for k in range(RUNS)])
        loop = asyncio.get_running_loop()
        finished_during: list[int] = []

        def between() -> None:  # after each MIGRATE batch, from the migrating thread
            if not finished_during:  # how far the runs were when the first keys had moved
                done = asyncio.run_coroutine_threadsafe(_finished(sm, runs), loop).result(10)
                finished_during.append(done)

        # The node streams first: from then on to the end of the move, every read and
        # settle (keys in the slot on both masters) is refused with TRYAGAIN, then MOVED.
        streams = [keys.queue(n) for n in ("Split", "Square", "Label")]
        moved = await asyncio.to_thread(
            cluster.migrate_slot, slot, target, batch=5, between=between, first=streams
        )
        statuses = await sm.wait_all(runs, timeout=60)
        assert cluster.owner(slot) == target
        assert moved > RUNS // lanes, f"only {moved} keys moved"
        assert finished_during and finished_during[0] < RUNS, (
            f"the runs were finished before the slot moved: {finished_during[:3]}"
        )
        assert {s.status for s in statuses.values()} == {"SUCCEEDED"}
        for k, run in enumerate(runs):
            nodes = statuses[run].nodes
            counts = {i: (c.succeeded, c.pending, c.failed) for i, c in nodes.items()}
            assert counts == {
                "split": (1, 0, 0),
                "square": (ITEMS, 0, 0),
                "label": (ITEMS, 0, 0),
            }, (k, counts)
            leaves = sorted(r["outputs"]["square"] for r in await sm.results(run))
            assert leaves == sorted((k + i) ** 2 for i in range(ITEMS)), (k, leaves)
        for node in ("Split", "Square", "Label"):
            assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
        if lanes > 1:  # the moved lane's runs were among them
            assert len([r for r in runs if run_lane(r) == tag]) >= RUNS // lanes - 1


async def _finished(sm: StateManager, runs: list[str]) -> int:
    done = 0
    for run in runs:
        done += (await sm.status(run)).status == "SUCCEEDED"
    return done
