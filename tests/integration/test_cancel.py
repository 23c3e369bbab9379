"""sm.cancel (issue 12.4) under two worker processes: the run ends CANCELLED at once; its
queued, delayed and in-flight states are settled without successors, retries or results
when reached; no unite of it fires; concurrent cancels are one cancel; other runs go on."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import ClassVar

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RedriveRefused,
    RunNotFound,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesStrategyEnum,
)
from tests.integration.helpers import running, stop_processes, worker_processes
from tests.integration.promises_support import until
from tests.integration.test_unites import fan_graph

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too

NODES = ("Split", "Work", "Collect")


async def _drained(sm: StateManager) -> bool:
    for node in NODES:
        c = await sm.pending(node)
        if c["length"] or c["pending"] or c["delayed"]:
            return False
    return True


async def test_cancelled_runs_emit_nothing_more_and_others_complete(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    graph = fan_graph(namespace, UnitesStrategyEnum.ALL_DONE)
    store = StoreConfigModel(required_keys=["n"])
    with worker_processes(redis_url, namespace, 1) as procs:  # registers every node
        await sm.upsert_graph("fan", graph, store_config=store, validation_timeout=20)
    stop_processes(procs)

    before = await sm.trigger("fan", store={"n": 5})  # cancelled before any worker runs
    midway = await sm.trigger("fan", store={"n": 5})  # cancelled after its fan-out
    delayed = await sm.trigger("fan", store={"n": 5}, start_delay=60_000)
    kept = await sm.trigger("fan", store={"n": 5})
    assert (await sm.cancel(before)).status == "CANCELLED"
    assert (await sm.cancel(delayed)).status == "CANCELLED"
    done_before = await sm.wait(before, timeout=1)  # waiters wake: it is finished
    assert done_before.status == "CANCELLED" and done_before.finished_ms is not None

    # Phase 1: only Split is served: the fan-outs run, their branches stay queued.
    with worker_processes(redis_url, namespace, 2, EXO_TEST_NODES="Split") as procs:

        async def fanned() -> bool:
            statuses = [await sm.status(r) for r in (midway, kept)]
            return all(s.nodes["fan"].succeeded == 1 for s in statuses)

        await until(fanned, "both fan-outs settled", timeout=30)
        cancels = await asyncio.gather(*(sm.cancel(midway) for _ in range(20)))
    stop_processes(procs)
    assert {c.status for c in cancels} == {"CANCELLED"}
    assert len({c.finished_ms for c in cancels}) == 1, "twenty cancels, one cancel"

    # Phase 2: everything is served: the kept run completes, the cancelled ones drain.
    with worker_processes(redis_url, namespace, 2):
        kept_status = await sm.wait(kept, timeout=60)

        async def delayed_due() -> bool:  # the delayed root is promoted only when due:
            # make it due now (what 60 s would do), then it must be dropped
            key = sm.keys.delayed("Split")
            members = await redis.zrange(key, 0, -1)
            if members:
                await redis.zadd(key, {m: 0 for m in members})
            return await _drained(sm)

        await until(delayed_due, "every queue, pending list and delayed set empty", timeout=60)
    assert kept_status.status == "SUCCEEDED"
    assert kept_status.nodes["collect"].succeeded == 1

    for run in (before, midway, delayed):
        status = await sm.status(run)
        assert status.status == "CANCELLED", status
        assert "collect" not in status.nodes or status.nodes["collect"].succeeded == 0, status
        assert status.nodes.get("work") is None or status.nodes["work"].succeeded == 0, status
        assert await sm.results(run) == [], run
        assert status.open == 0, status  # every state it had open was dropped
    assert (await sm.status(midway)).nodes["fan"].succeeded == 1
    assert (await sm.status(before)).nodes["fan"].succeeded == 0

    events = await redis.xrange(sm.keys.events())
    finished = [(e[b"run"].decode(), e[b"status"].decode()) for _, e in events]
    for run in (before, midway, delayed):
        assert finished.count((run, "CANCELLED")) == 1, finished
        assert [s for r, s in finished if r == run] == ["CANCELLED"], finished
    assert (kept, "SUCCEEDED") in finished
    assert (await sm.cancel(kept)).status == "SUCCEEDED", "a finished run stays as it is"


async def test_cancel_of_an_unknown_run_and_bad_arguments(sm: StateManager) -> None:
    with pytest.raises(RunNotFound):
        await sm.cancel("nosuchrun")
    with pytest.raises(ValueError, match="run id"):
        await sm.cancel("bad id")
    with pytest.raises(ValueError, match="retention"):
        await sm.cancel("r1", retention=timedelta(seconds=-1))


async def test_a_dead_letter_of_a_cancelled_run_is_not_redriven(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Redrive would re-open the run (RUNNING again, its cancel undone): it is refused,
    naming why, and the letter stays."""
    graph = fan_graph(namespace, UnitesStrategyEnum.ALL_DONE, fail_at=1)
    from exospherehost import RetryPolicyModel

    with worker_processes(redis_url, namespace, 1):
        await sm.upsert_graph(
            "fan",
            graph,
            store_config=StoreConfigModel(required_keys=["n"]),
            retry_policy=RetryPolicyModel(max_retries=0),
            validation_timeout=20,
        )
        run = await sm.trigger("fan", store={"n": 3})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
    # A finished run stays as it is; force the case of a letter whose run was cancelled
    # while other states still ran (what a cancel during the failure's retries leaves).
    await sm.broker.client.hset(sm.keys.run(run), mapping={"status": "RUNNING"})
    assert (await sm.cancel(run)).status == "CANCELLED"
    [letter] = await sm.dead_letters()
    with pytest.raises(RedriveRefused, match="its run was cancelled"):
        await sm.redrive(letter.id)
    assert [d.id for d in await sm.dead_letters()] == [letter.id]
    assert (await sm.status(run)).status == "CANCELLED"


class Counted(BaseNode):
    runs: ClassVar[list[str]] = []

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        Counted.runs.append(self.run_id or "")
        return self.Outputs(i=self.inputs.i)


async def test_queued_states_of_a_cancelled_run_are_not_executed(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A worker knows the namespace's cancelled runs before its first read (and refreshes
    them every second): their states are settled without being executed."""
    Counted.runs = []
    graph = [
        GraphNodeModel(node_name="Counted", namespace=namespace, identifier="c", inputs={"i": 1})
    ]
    rt = Runtime(namespace=namespace, name="cnt", nodes=[Counted], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("g", graph)
    runs = await sm.trigger_many("g", [None] * 10)
    for run in runs[:6]:
        await sm.cancel(run)
    async with running(
        Runtime(namespace=namespace, name="cnt", nodes=[Counted], redis_url=redis_url)
    ):
        done = await sm.wait_all(runs, timeout=20)

        async def drained() -> bool:
            c = await sm.pending("Counted")
            return not (c["length"] or c["pending"])

        await until(drained, "the cancelled runs' states dropped", timeout=10)
    assert sorted(Counted.runs) == sorted(runs[6:]), "only the runs not cancelled ran"
    assert [done[r].status for r in runs] == ["CANCELLED"] * 6 + ["SUCCEEDED"] * 4
