"""Tests written for mutmut's survivors in the worker's start and stop (runtime/worker.py:
run, _start_upkeep, _shut_down; README, Testing), on the session's redis-server."""

from __future__ import annotations

import asyncio

from exospherehost import Runtime, StateManager
from exospherehost.broker.keys import GROUP
from tests.integration.apps.nodes import Square
from tests.integration.helpers import running


async def test_a_serving_worker_names_its_tasks(redis_url: str, namespace: str) -> None:
    """A hung worker's task dump (py-spy, asyncio's debug) says what each task is: the
    settler, each upkeep loop, every executor, the lane and its watch."""
    rt = Runtime(namespace=namespace, name="names", nodes=[Square], redis_url=redis_url, workers=3)
    async with running(rt):
        names = {t.get_name() for t in asyncio.all_tasks()}
    want = {"exo-settler", "exo-promoter", "exo-reclaimer", "exo-heartbeat", "exo-cancelled"}
    want |= {"exo-exec-0", "exo-exec-1", "exo-exec-2", "exo-lane-0", "exo-lanes"}
    assert want <= names, sorted(want - names)
    assert "exo-exec-3" not in names
    async with StateManager(namespace, redis_url=redis_url) as sm:
        # A clean stop left the group (retire).
        assert not await sm.client.xinfo_consumers(sm.keys.queue("Square"), GROUP)
