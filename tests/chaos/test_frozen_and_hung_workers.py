"""Scenario 2: a worker frozen mid-batch (SIGSTOP) while another takes its states over; once
continued its late settles emit nothing. Scenario 7: a worker killed while holding a hung
state and many slow ones: the slow ones are finished elsewhere without waiting behind each
other or behind the hung one, and the hung one ends with a timeout."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from exospherehost import StateManager
from tests.chaos.apps import WorkerConfig, chain_graph
from tests.chaos.harness import (
    all_outputs,
    assert_each_once,
    assert_runs_succeeded_once,
    assert_settled,
    by_state,
    fleet,
    held_by,
    leaf_summary,
    results_of,
    until,
)


def leaf_of(k: int) -> list[Any]:
    return [leaf_summary({"outputs": {"i": k}})]


async def test_frozen_worker_settles_late_and_emits_nothing(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    nodes = ("Nap", "Leaf")
    n = 40  # more than the 32 executions in flight: some wait in the frozen queue too
    # A read-ahead of 16 beyond the executors (the adaptive one holds a slow node's states
    # to about the executors): the frozen worker holds all 40, 8 of them not started.
    cfg = WorkerConfig(nodes=nodes, prefetch=16)
    async with fleet(redis_url, namespace, cfg, tmp_path) as f:
        [frozen] = await f.start_ready(redis)
        await sm.upsert_graph("chain", chain_graph(namespace, 200), validation_timeout=30)
        runs = await sm.trigger_many("chain", [{"i": k, "ms": 200} for k in range(n)])

        async def holds_all() -> bool:
            return (await held_by(redis, namespace, nodes)).get(frozen.pid, 0) >= n

        await until(holds_all, 20, "the first worker did not take every nap state", poll=0.005)
        f.freeze(frozen)  # mid-batch: executions asleep, more states queued behind them
        [helper] = await f.start_ready(redis)
        # Everything is finished by the helper, through reclaiming what the frozen one holds.
        await assert_runs_succeeded_once(
            sm, runs, leaf_of, timeout=90, succeeded={"nap": 1, "leaf": 1}
        )
        f.thaw(frozen)
        # A clean stop settles everything it still holds before exiting: its late settles.
        assert await f.stop(frozen) == 0, frozen.tail()
        assert "late settles skipped" in frozen.output(), frozen.tail()
        assert await f.stop(helper) == 0, helper.tail()
    # The late settles emitted nothing: still one leaf per run, one transition per stage.
    await assert_runs_succeeded_once(sm, runs, leaf_of, timeout=5, succeeded={"nap": 1, "leaf": 1})
    assert await assert_settled(redis, namespace, nodes) == []


async def test_killed_worker_with_a_hung_and_30_slow_states(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    nodes = ("LongHanger", "Sleeper")
    cfg = WorkerConfig(nodes=nodes, visibility=1.0, retries=0)
    slow_s, slow_n = 2.5, 30
    async with fleet(redis_url, namespace, cfg, tmp_path) as f:
        [victim] = await f.start_ready(redis)
        hung = await sm.enqueue("LongHanger", {"i": 1})  # first: the oldest pending entry
        slow = await sm.enqueue_many("Sleeper", [{"seconds": slow_s}] * slow_n)

        async def holds_all() -> bool:
            return (await held_by(redis, namespace, nodes)).get(victim.pid, 0) == slow_n + 1

        await until(holds_all, 20, "the victim did not take all 31 states", poll=0.005)
        f.kill(victim)
        killed_at = time.monotonic()
        [survivor] = await f.start_ready(redis)
        # Run one after another (or behind the hung one) they would take 30 x 2.5 s or
        # forever; the bound leaves room for start-up and the visibility timeout only.
        bound = 25.0
        done = await results_of(sm, "Sleeper", slow, timeout=bound, watch=[survivor])
        took = time.monotonic() - killed_at
        assert {r.status for r in done.values()} == {"SUCCEEDED"}
        assert {r.outputs["pid"] for r in done.values()} == {survivor.pid}
        ended = await results_of(sm, "LongHanger", [hung], timeout=30, watch=[survivor])
        hung_result = ended[hung]
        assert await f.stop(survivor) == 0, survivor.tail()
    assert took < bound
    assert hung_result.status == "FAILED"
    assert re.search(r"tim(e|ed) ?out", hung_result.error or "", re.I), hung_result.error
    assert_each_once(await all_outputs(sm, "Sleeper"), slow)
    assert_each_once(await all_outputs(sm, "LongHanger"), [hung])
    dead = by_state(await assert_settled(redis, namespace, nodes))
    assert set(dead) == {hung}
    assert re.search(r"tim(e|ed) ?out", dead[hung].error, re.I), dead[hung].error
