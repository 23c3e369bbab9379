"""Issue 17.5: cron runs on one clock, Redis's. Schedulers whose host clocks are off (an
injected clock) fire each fire time once, never before it is due by Redis's clock and
never for a time still in the future; a host clock off Redis's is warned about once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, CronTrigger, GraphNodeModel, Runtime, StateManager
from exospherehost.broker.runstart import RunStart
from exospherehost.broker.streams import Broker
from exospherehost.graph.runplan import plan_run, run_store
from exospherehost.graphstore import GraphStore
from exospherehost.runtime.cron import CronScheduler
from tests.integration.helpers import running

EVERY_SECOND = "* * * * * *"


class Beat(BaseNode):
    class Inputs(BaseModel):
        x: int = 0

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def cron_graph(redis_url: str, ns: str, sm: StateManager) -> None:
    async with running(Runtime(namespace=ns, name="clock", nodes=[Beat], redis_url=redis_url)):
        pass  # registers Beat; its own scheduler is gone before the graph exists
    nodes = [GraphNodeModel(node_name="Beat", namespace=ns, identifier="b", inputs={"x": 1})]
    await sm.upsert_graph("c", nodes, triggers=[CronTrigger(expression=EVERY_SECOND)])


async def redis_now(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds + micros / 1e6


async def fired(redis: Redis, ns: str) -> list[tuple[int, int]]:
    """(fire_ts, created_ms) of every cron run of graph c."""
    out = []
    for raw in await redis.zrange(f"exo:{{{ns}}}:runs:c", 0, -1):
        fields = await redis.hgetall(f"exo:{{{ns}}}:run:{raw.decode()}")
        out.append((int(fields[b"fire_ts"]), int(fields[b"created_ms"])))
    return sorted(out)


async def wait_for_fires(redis: Redis, ns: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(await fired(redis, ns)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} cron runs after {timeout}s"
        await asyncio.sleep(0.1)


def skewed(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


def scheduler(
    redis: Redis,
    ns: str,
    clock: Callable[[], float],
    reload_s: float = 2.0,
    grace_s: float = 60.0,
    marker_ttl_s: int | None = None,
) -> CronScheduler:
    broker = Broker(redis, ns)
    return CronScheduler(
        broker,
        GraphStore(redis, broker.keys),
        clock=clock,
        reload_s=reload_s,
        grace_s=grace_s,
        marker_ttl_s=marker_ttl_s,
    )


def check_fired(runs: list[tuple[int, int]], end: float) -> None:
    fire_times = [ts for ts, _ in runs]
    assert len(fire_times) == len(set(fire_times)), f"fired twice: {fire_times}"
    assert fire_times == list(range(fire_times[0], fire_times[-1] + 1)), "a fire time was missed"
    early = [(ts, created) for ts, created in runs if created < ts * 1000]
    assert not early, f"fired before the fire time by Redis's clock: {early}"
    assert fire_times[-1] <= end, f"fired for times in the future: {fire_times[-1]} > {end}"


async def test_skewed_schedulers_fire_each_time_once_on_redis_clock(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await cron_graph(redis_url, namespace, sm)
    caplog.set_level(logging.WARNING, logger="exospherehost.runtime.cron")
    ahead = scheduler(redis, namespace, skewed(700), reload_s=0.5)
    behind = scheduler(redis, namespace, skewed(-3), reload_s=0.5)
    on_time = scheduler(redis, namespace, time.time, reload_s=0.5)
    loops = [asyncio.create_task(s.run()) for s in (ahead, behind, on_time)]
    try:
        await wait_for_fires(redis, namespace, 5)
    finally:
        for s in (ahead, behind, on_time):
            s.stop()
        await asyncio.wait_for(asyncio.gather(*loops), 10)
    end = await redis_now(redis)
    check_fired(await fired(redis, namespace), end)
    assert ahead.stats.fired + behind.stats.fired + on_time.stats.fired == len(
        await fired(redis, namespace)
    )
    # Each skewed host is warned about once (several re-syncs happened), the other not at all.
    warnings = [r.getMessage() for r in caplog.records if "host's clock" in r.getMessage()]
    assert len([w for w in warnings if "700.0 s ahead of Redis's" in w]) == 1, warnings
    assert len([w for w in warnings if "3.0 s behind Redis's" in w]) == 1, warnings
    assert len(warnings) == 2, warnings


@pytest.mark.parametrize("jump", [30.0, 700.0])
async def test_a_clock_jumping_after_the_sync_cannot_fire_early(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, jump: float
) -> None:
    """A scheduler whose estimate went wrong (its host clock jumped ahead after it measured
    the offset): 30 s ahead, it tries fire times not yet due, which the script refuses by
    Redis's clock (then it re-syncs); 700 s ahead, the fire times look more than the grace
    late, and it asks Redis's clock before it skips any. Either way each fire time fires
    once, on time."""
    await cron_graph(redis_url, namespace, sm)
    offset = [0.0]
    sched = scheduler(redis, namespace, lambda: time.time() + offset[0], reload_s=1e9)
    await sched.tick()  # measures the offset (0) and schedules
    offset[0] = jump
    loop = asyncio.create_task(sched.run())
    try:
        await wait_for_fires(redis, namespace, 3)
    finally:
        sched.stop()
        await asyncio.wait_for(loop, 10)
    if jump < sched.grace_s:
        assert sched.stats.early >= 1  # refused by the script, then re-synced
    assert sched.stats.skipped == 0, sched.stats.errors
    check_fired(await fired(redis, namespace), await redis_now(redis))


async def test_cron_fire_refuses_fire_times_not_due_or_too_late_by_redis_clock(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    await cron_graph(redis_url, namespace, sm)
    broker = Broker(redis, namespace)
    store = GraphStore(redis, broker.keys)
    doc = await store.current("c")
    assert doc is not None
    graph = await sm._compiled_current("c")
    now = int(await redis_now(redis))

    def plan() -> RunStart:
        return plan_run(
            graph, broker.keys, inputs={}, store=run_store(graph, {}), start_delay_ms=0, now_ms=0
        )

    future = plan()
    assert await broker.cron_fire(future, graph.version, now + 30, 600, 500) == -2
    late = plan()
    assert await broker.cron_fire(late, graph.version, now - 560, 600, 500) == -3
    for refused, ts in ((future, now + 30), (late, now - 560)):
        assert not await redis.exists(refused.run_key)
        assert not await redis.exists(f"exo:{{{namespace}}}:cron:c:{ts}")
    due = plan()
    assert await broker.cron_fire(due, graph.version, now - 1, 600, 500) == 1
    created = int(await redis.hget(due.run_key, "created_ms") or 0)
    assert created >= (now - 1) * 1000
    assert await redis.zscore(due.index_key, due.run_id) == created
    assert 0 < await redis.ttl(f"exo:{{{namespace}}}:cron:c:{now - 1}") <= 600
    with pytest.raises(ValueError, match="marker_ttl_s"):
        scheduler(redis, namespace, time.time, grace_s=60, marker_ttl_s=100)
