"""Issue 14: a namespace's slot moved to another master while its states flow (as
`redis-cli --cluster reshard` moves it: IMPORTING / MIGRATING, MIGRATE batches, SETSLOT
NODE): every run completes, each leaf once, nothing left pending. (A worker killed with
SIGKILL on the cluster: tests/crash/test_crash.py, which runs on the cluster too.)"""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from exospherehost import Runtime, StateManager
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


async def test_moving_the_namespace_slot_under_load_loses_and_doubles_nothing(
    cluster: PrivateCluster,
) -> None:
    ns = namespace_on(0)
    slot = key_slot(ns.encode())
    assert cluster.owner(slot) == 0
    url = cluster.url
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
        streams = [sm.keys.queue(n) for n in ("Split", "Square", "Label")]
        moved = await asyncio.to_thread(
            cluster.migrate_slot, slot, 2, batch=5, between=between, first=streams
        )
        statuses = await sm.wait_all(runs, timeout=60)
        assert cluster.owner(slot) == 2
        assert moved > RUNS, f"only {moved} keys moved"
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


async def _finished(sm: StateManager, runs: list[str]) -> int:
    done = 0
    for run in runs:
        done += (await sm.status(run)).status == "SUCCEEDED"
    return done
