"""Promises of the per-process statistics (exospherehost.runtime.stats, the Prometheus metrics)
and of settling when a settle script fails, on real Redis (issue 16). Each test fails
with the one-line bug its docstring names."""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from datetime import timedelta
from typing import ClassVar

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    PruneSignal,
    ReQueueAfterSignal,
    Runtime,
    StateManager,
)
from exospherehost.runtime.stats import BUCKETS
from tests.integration.apps.nodes import Square
from tests.integration.helpers import running
from tests.integration.promises_support import GROUP, envelope, pending_entries, until
from tests.integration.test_metrics import free_port, scrape, value

pytestmark = pytest.mark.redis


class Held(BaseNode):
    release: ClassVar[asyncio.Event]
    started: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Held.started.set()
        await Held.release.wait()
        return self.Outputs(x=self.inputs.x)


class Pruner(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        raise PruneSignal({"x": self.inputs.x})


class Requeuer(BaseNode):
    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Requeuer.runs += 1
        if Requeuer.runs == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=50))
        return self.Outputs(x=self.inputs.x)


class Sleeper(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        await asyncio.sleep(0.06)
        return self.Outputs(x=self.inputs.x)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Held.release, Held.started = asyncio.Event(), asyncio.Event()
    Requeuer.runs = 0


async def test_settled_states_of_a_missing_run_count_as_settled(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A state whose run does not exist (expired, or forged) is acknowledged and removed
    without effect; it was settled by this process all the same, so it counts in the
    node's `settled` figure (and is no late settle). Bug: such states are left out."""
    nodes = [
        GraphNodeModel(
            node_name="Square", namespace=namespace, identifier="sq", inputs={"value": 2}
        )
    ]
    rt = Runtime(namespace=namespace, name="p", nodes=[Square], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("g", nodes, secrets={})
        version = (await sm.get_graph("g"))["version"]
        orphan = envelope(
            v=1, i="orphan", r="no-such-run", g="g", gv=version, n="sq", **{"in": {"value": 2}}
        )
        await redis.xadd(sm.keys.queue("Square"), orphan)
        await until(lambda: rt.settled == 1, "the orphan state is settled")
        assert rt.stats is not None
        counts = rt.stats.nodes["Square"]
        assert await sm.pending("Square") == {"length": 0, "pending": 0, "delayed": 0}
    assert counts.succeeded == 1
    assert counts.settled == 1 and counts.late_settles == 0
    assert await redis.exists(sm.keys.run("no-such-run")) == 0


async def test_a_state_settled_by_another_worker_first_counts_as_a_late_settle(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """If another worker settled a state while this one still ran it (the test plays that
    worker: it XACKs the entry), this worker's settle writes nothing (a stage transition
    happens once) and is counted as a late settle, not as settled."""
    rt = Runtime(namespace=namespace, name="p", nodes=[Held], redis_url=redis_url)
    async with running(rt):
        await sm.enqueue("Held", {"x": 1})
        await asyncio.wait_for(Held.started.wait(), 15)
        [entry] = await pending_entries(redis, sm.keys.queue("Held"))
        assert await redis.xack(sm.keys.queue("Held"), GROUP, entry["id"]) == 1
        Held.release.set()
        await until(lambda: rt.settled == 1, "the late settle returns")
        assert rt.stats is not None
        counts = rt.stats.nodes["Held"]
    assert counts.succeeded == 1 and counts.executed == 1
    assert counts.late_settles == 1 and counts.settled == 0
    assert await sm.outputs("Held") == []  # the late settle emitted nothing


async def test_pruned_requeued_and_execution_time_figures(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """The executions counter by outcome (pruned, requeued), settled per outcome written,
    and the execution-time histogram: one observation lands in exactly the bucket of its
    duration (cumulative counts 0 below it, 1 from it on) and in the sum."""
    port = free_port()
    rt = Runtime(
        namespace, "p", [Pruner, Requeuer, Sleeper], redis_url=redis_url, metrics_port=port
    )
    async with running(rt):
        await sm.enqueue("Pruner", {"x": 1})
        req = await sm.enqueue("Requeuer", {"x": 2})
        slow = await sm.enqueue("Sleeper", {"x": 3})
        await sm.wait_for_states("Requeuer", [req], timeout=15)
        await sm.wait_for_states("Sleeper", [slow], timeout=15)
        await until(lambda: rt.settled == 4, "four settles (prune, requeue, two results)")
        samples = await scrape(port)
        assert rt.stats is not None
        observed = rt.stats.nodes["Sleeper"].exec_seconds_sum
    [pruned] = await sm.outputs("Pruner")
    assert pruned.status == "PRUNED"

    def metric(name: str, node: str, **labels: str) -> float:
        return value(samples, name, namespace=namespace, node=node, **labels)

    executions = "exosphere_node_executions_total"
    assert metric(executions, "Pruner", outcome="pruned") == 1
    assert metric(executions, "Pruner", outcome="succeeded") == 0
    assert metric(executions, "Requeuer", outcome="requeued") == 1
    assert metric(executions, "Requeuer", outcome="succeeded") == 1
    assert metric(executions, "Requeuer", outcome="failed") == 0
    assert metric("exosphere_node_retries_total", "Requeuer") == 0  # a requeue is no retry
    assert metric("exosphere_node_settled_total", "Pruner") == 1
    assert metric("exosphere_node_settled_total", "Requeuer") == 2
    assert metric("exosphere_node_settled_total", "Sleeper") == 1

    assert 0.06 <= observed < 5
    assert metric("exosphere_node_execution_seconds_sum", "Sleeper") == observed
    assert metric("exosphere_node_execution_seconds_count", "Sleeper") == 1
    first = bisect_left(BUCKETS, observed)  # the first bound >= the duration
    for i, bound in enumerate(BUCKETS):
        le = repr(float(bound))
        got = metric("exosphere_node_execution_seconds_bucket", "Sleeper", le=le)
        assert got == (1 if i >= first else 0), (le, got, observed)
    assert metric("exosphere_node_execution_seconds_bucket", "Sleeper", le="+Inf") == 1


async def _runs_with_clobbered_run_hashes(
    sm: StateManager, redis: Redis, redis_url: str, namespace: str, n: int
) -> tuple[list[str], list[str], Runtime]:
    """`n` one-node runs whose every other run hash a foreign client overwrote with a
    string (WRONGTYPE in the settle script), alternating on one stream so they share
    batches: (good runs, broken runs, a Runtime to settle them, not started)."""
    nodes = [
        GraphNodeModel(
            node_name="Square", namespace=namespace, identifier="sq", inputs={"value": 2}
        )
    ]
    # The Runtime registers the node first, so upsert_graph can validate against it.
    async with running(Runtime(namespace=namespace, name="p", nodes=[Square], redis_url=redis_url)):
        await sm.upsert_graph("g", nodes, secrets={})
    runs = [await sm.trigger("g") for _ in range(n)]
    good, broken = runs[0::2], runs[1::2]
    for run in broken:
        await redis.delete(sm.keys.run(run))
        await redis.set(sm.keys.run(run), "not a hash")
    rt = Runtime(
        namespace=namespace, name="p", nodes=[Square], redis_url=redis_url, visibility_timeout=300
    )
    return good, broken, rt


async def test_after_a_settle_script_error_the_batch_is_settled_state_by_state(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """One state whose settle cannot run (its run hash was overwritten with a string by a
    foreign client: WRONGTYPE in the script) must not keep the rest of its batch from
    settling: the worker retries the batch state by state, well before any visibility
    timeout. Good and broken runs alternate on one stream so they share batches.
    Bug: after the script error, the fallback marks all of the batch unsettled."""
    good, _, rt = await _runs_with_clobbered_run_hashes(sm, redis, redis_url, namespace, 40)
    async with running(rt):
        statuses = await sm.wait_all(good, timeout=20)
    assert {s.status for s in statuses.values()} == {"SUCCEEDED"}


async def test_a_state_whose_settle_fails_is_not_lost(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A state that cannot be settled (its run hash was overwritten with a string by a
    foreign client) must not be lost: it is dead-lettered with the error, or (if even that
    cannot be written) stays pending to be reclaimed; never acknowledged without an outcome."""
    good, broken, rt = await _runs_with_clobbered_run_hashes(sm, redis, redis_url, namespace, 6)
    async with running(rt):
        await sm.wait_all(good, timeout=20)
    unsettled = (await redis.xpending(sm.keys.queue("Square"), GROUP))["pending"]
    assert unsettled + len(await sm.dead_letters()) == len(broken)
