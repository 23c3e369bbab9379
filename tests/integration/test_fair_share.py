"""Slow nodes and workers that join late (issue 11), on real Redis: a worker holds little
more than its executors can run, so a worker started later gets a fair share of the
backlog at once; fast nodes served beside a slow one are still read in full batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, Runtime, StateManager
from exospherehost.broker.keys import GROUP
from tests.integration.helpers import running

pytestmark = pytest.mark.slow

WORKERS = 3


class Slow(BaseNode):
    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        await asyncio.sleep(0.15)
        return self.Outputs(i=self.inputs.i)


class Quick(BaseNode):
    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        return self.Outputs(i=self.inputs.i)


def _runtime(namespace: str, redis_url: str, name: str, nodes: list[type[BaseNode]]) -> Runtime:
    return Runtime(
        namespace=namespace,
        name=name,
        nodes=nodes,
        redis_url=redis_url,
        workers=WORKERS,
        grace_period=5,
    )


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.02)


async def _held_by(redis: Redis, stream: str, consumer: str) -> int:
    summary = await redis.xpending(stream, GROUP)
    for c in summary["consumers"]:
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0


async def test_a_worker_started_later_gets_a_fair_share_of_a_slow_backlog(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """The first worker, 40 slow states in front of it, holds about its executors
    (not the whole backlog, which the fixed 4 x batch_size window took); a
    second one started then runs its first state within a bound and ends with a fair
    share of what was left. Bug: a fixed read-ahead (prefetch=400): the first worker
    holds all 40, the second never gets one."""
    n = 40
    stream = sm.keys.queue("Slow")
    ids = await sm.enqueue_many("Slow", [{"i": i} for i in range(n)])
    first = _runtime(namespace, redis_url, "first", [Slow])
    second = _runtime(namespace, redis_url, "second", [Slow])
    async with running(first):
        # Two rounds done: the first worker knows the node is slow.
        await _until("the first worker settles 6", _settled(first, 6), 10)
        held = await _held_by(redis, stream, first.consumer)
        # Running, plus finished ones whose settle is on its way (a read replaces them at
        # once), plus the headroom (none at 0.15 s): at most 2 x workers.
        assert held <= 2 * WORKERS, f"the first worker holds {held} of the backlog"
        async with running(second):
            at_join = first.settled
            await _until("the second worker settles a state", _settled(second, 1), 3)
            done = await sm.wait_for_states("Slow", ids, timeout=30)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert first.settled + second.settled == n
    left = n - at_join
    assert second.settled >= 0.35 * left, (
        f"the second worker ran {second.settled} of the {left} left when it joined"
    )


def _settled(rt: Runtime, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return rt.settled >= count

    return check


async def test_fast_and_slow_nodes_in_one_worker_both_drain(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A fast node beside a slow one: the reads are split per node (one XREADGROUP COUNT
    applies to every stream) and both backlogs drain, the slow one held about its
    executors at a time (at most twice: finished ones may wait for their settle).
    Bug: one COUNT for both (the slow node's small one would starve the fast node, a
    large one would hoard slow states)."""
    slow_ids = await sm.enqueue_many("Slow", [{"i": i} for i in range(12)])
    quick_ids = await sm.enqueue_many("Quick", [{"i": i} for i in range(600)])
    rt = _runtime(namespace, redis_url, "both", [Slow, Quick])
    stream = sm.keys.queue("Slow")
    peak = 0
    async with running(rt):

        async def slow_done() -> bool:
            nonlocal peak
            if (stats := rt.stats) is not None and stats.nodes["Slow"].executed >= 3:
                peak = max(peak, await _held_by(redis, stream, rt.consumer))
            return rt.settled >= 612

        await _until("both backlogs drain", slow_done, 20)
        quick = await sm.wait_for_states("Quick", quick_ids, timeout=10)
        slow = await sm.wait_for_states("Slow", slow_ids, timeout=10)
    assert {r.status for r in [*quick.values(), *slow.values()]} == {"SUCCEEDED"}
    assert peak <= 2 * WORKERS, f"{peak} slow states held by one worker"
