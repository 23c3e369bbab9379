"""Scenario 1: a kill -9 storm. Worker processes draining graph runs are SIGKILLed at
random-ish (seeded) moments and restarted, again and again; at the end every run SUCCEEDED,
each leaf result exists exactly once, nothing is pending and the streams are empty."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from exospherehost import StateManager
from exospherehost.broker.keys import GROUP, Keys
from tests.chaos.apps import WorkerConfig
from tests.chaos.harness import (
    assert_runs_succeeded_once,
    assert_settled,
    fleet,
    held_by,
    long_only,
    squares_leaves,
    until,
)
from tests.integration.helpers import squares_graph

NODES = ("Split", "Square", "Label")
# squares_leaves' default: split fans out to 3 squares, each feeding one label (7 states)
ITEMS = 3
# A state can be caught by every kill of a storm: the poison-message limit must not
# mistake that for a state killing its workers.
CFG = WorkerConfig(nodes=NODES, visibility=1.0, max_deliveries=50)


async def storm(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    log_dir: Path,
    *,
    runs_per_wave: int,
    kills: int,
    workers: int,
    seed: int,
) -> None:
    rng = random.Random(seed)
    async with fleet(redis_url, namespace, CFG, log_dir) as f:
        await f.start_ready(redis, workers)
        await sm.upsert_graph("storm", squares_graph(namespace, ITEMS), validation_timeout=30)
        runs: list[str] = []
        caught = 0  # states held by the workers at the moments they were killed
        keys = Keys(namespace)
        held: dict[int, int] = {}

        async def holding() -> bool:
            nonlocal held
            held = await held_by(redis, namespace, NODES)
            return any(pid in held for pid in (w.pid for w in f.alive()))

        async def drained() -> bool:  # nothing queued, nothing held by anyone
            lengths = [await redis.xlen(keys.queue(n)) for n in NODES]
            return not any(lengths) and not any(held.values())

        async def load() -> None:
            wave = [{"items": ITEMS, "base": len(runs) + k} for k in range(runs_per_wave)]
            runs.extend(await sm.trigger_many("storm", wave))
            await asyncio.sleep(rng.uniform(0, 0.05))

        for _ in range(kills):
            # Load first, then kill a worker while it holds read, unsettled states. Three
            # workers can drain a wave before the first look (tens of ms): load again then.
            await load()
            deadline = time.monotonic() + 30
            while not await holding():
                assert time.monotonic() < deadline, "no live worker took any state of a wave"
                if await drained():
                    await load()
                else:
                    await asyncio.sleep(0.005)
            victim = rng.choice([w for w in f.alive() if w.pid in held])
            f.kill(victim)
            caught += held[victim.pid]
            f.start()  # a supervisor restarts it (not waited for: the storm goes on)
        await assert_runs_succeeded_once(
            sm,
            runs,
            squares_leaves,
            timeout=180,
            succeeded={"split": 1, "square": ITEMS, "label": ITEMS},
        )
        codes = await f.stop_all()
    assert caught >= kills, f"the kills caught only {caught} states in flight"
    assert set(codes.values()) == {0}, codes
    dead = await assert_settled(redis, namespace, NODES)
    assert dead == [], [d.error for d in dead[:5]]


async def test_kill_9_storm_3000_runs(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    await storm(
        redis_url, namespace, sm, redis, tmp_path, runs_per_wave=500, kills=6, workers=3, seed=1
    )


@long_only
@pytest.mark.slow
async def test_kill_9_storm_15000_runs_25_kills(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    await storm(
        redis_url, namespace, sm, redis, tmp_path, runs_per_wave=600, kills=25, workers=3, seed=7
    )


async def test_consumers_of_killed_workers_are_removed(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    """A killed worker never retires its consumer; the live ones must remove it once it holds
    nothing, or every crash leaves a ghost consumer in each group forever."""
    # Consumers idle past 2 s and holding nothing count as dead (the default is minutes).
    cfg = WorkerConfig(nodes=("Square",), visibility=1.0, consumer_idle=2.0)
    keys = Keys(namespace)
    async with fleet(redis_url, namespace, cfg, tmp_path) as f:
        victim, survivor = await f.start_ready(redis, 2)
        states = await sm.enqueue_many("Square", [{"value": v} for v in range(200)])
        f.kill(victim)
        await sm.wait_for_states("Square", states, timeout=30)

        async def names() -> list[str]:
            rows = await redis.xinfo_consumers(keys.queue("Square"), GROUP)
            return [r["name"].decode() for r in rows]

        async def only_survivor() -> bool:
            return all(f":{survivor.pid}:" in n for n in await names())

        async def left() -> str:
            return f"consumers still in the group: {await names()} (survivor {survivor.pid})"

        await until(only_survivor, 30, left, poll=0.5)
        assert await f.stop_all() == {survivor.pid: 0}
    assert await assert_settled(redis, namespace, ["Square"]) == []
