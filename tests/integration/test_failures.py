"""Retries, signals, dead letters, heartbeats and Redis outages, in-process on real Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    PruneSignal,
    ReQueueAfterSignal,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
)
from exospherehost.testing.server import PrivateServer
from tests.integration.apps.nodes import Split, Square
from tests.integration.helpers import running

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


class Flaky(BaseNode):
    """Fails `fail_times` times, then succeeds; records when each attempt ran."""

    fail_times: ClassVar[int] = 2
    attempts: ClassVar[list[float]] = []

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Flaky.attempts.append(time.monotonic())
        if len(Flaky.attempts) <= Flaky.fail_times:
            raise ValueError(f"flaky failure #{len(Flaky.attempts)}")
        return self.Outputs(x=self.inputs.x)


class MaybePrune(BaseNode):
    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        if self.inputs.value == 1:
            raise PruneSignal({"why": "one is boring"})
        return self.Outputs(value=self.inputs.value)


class Later(BaseNode):
    runs: ClassVar[list[float]] = []

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Later.runs.append(time.monotonic())
        if len(Later.runs) == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=300))
        return self.Outputs(x=self.inputs.x)


class Slow(BaseNode):
    executions: ClassVar[int] = 0
    started: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Slow.executions += 1
        Slow.started.set()
        await asyncio.sleep(2.0)  # > 3x the visibility timeout below
        return self.Outputs(x=self.inputs.x)


@pytest.fixture(autouse=True)
def _fresh_node_state() -> None:
    Flaky.attempts, Flaky.fail_times, Later.runs, Slow.executions = [], 2, [], 0
    Slow.started = asyncio.Event()


async def _until(condition: Any, timeout: float) -> None:
    """Poll a cheap in-process condition (no event to await for log records)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def one_node_graph(ns: str, node: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name=node, namespace=ns, identifier="only", inputs={"x": 5})]


async def test_failing_twice_node_succeeds_on_third_attempt_spaced_by_policy(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = Runtime(namespace=namespace, name="t", nodes=[Flaky], redis_url=redis_url)
    policy = RetryPolicyModel(max_retries=3, strategy=RetryStrategyEnum.LINEAR, backoff_factor=200)
    async with running(rt):
        await sm.upsert_graph(
            "g", one_node_graph(namespace, "Flaky"), secrets={}, retry_policy=policy
        )
        run = await sm.trigger("g")
        status = await sm.wait(run, timeout=10)
    assert status.status == "SUCCEEDED"
    assert status.nodes["only"].retried == 2 and status.nodes["only"].succeeded == 1
    a = Flaky.attempts
    assert len(a) == 3
    assert a[1] - a[0] >= 0.2 - 0.01, a  # LINEAR: 200 ms before retry 1
    assert a[2] - a[1] >= 0.4 - 0.01, a  # ... and 400 ms before retry 2
    assert await sm.dead_letters() == []


async def test_spent_retries_dead_letter_then_redrive_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    Flaky.fail_times = 2
    rt = Runtime(namespace=namespace, name="t", nodes=[Flaky], redis_url=redis_url)
    policy = RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)
    async with running(rt):
        await sm.upsert_graph(
            "g", one_node_graph(namespace, "Flaky"), secrets={}, retry_policy=policy
        )
        run = await sm.trigger("g")
        failed = await sm.wait(run, timeout=10)
        assert failed.status == "FAILED" and failed.nodes["only"].failed == 1
        [dead] = await sm.dead_letters()
        assert dead.node == "Flaky" and dead.run_id == run and dead.identifier == "only"
        assert dead.attempts == 2 and dead.error == "ValueError: flaky failure #2"
        assert "flaky failure #2" in dead.traceback and dead.time_ms > 0
        assert (await sm.dead_letter(dead.id)) == dead
        # Manual retry: the run re-opens and now succeeds; a second redrive is a no-op.
        assert await sm.redrive(dead.id) is True
        assert await sm.redrive(dead.id) is False
        again = await sm.wait(run, timeout=10)
    assert again.status == "SUCCEEDED"
    assert again.nodes["only"].succeeded == 1 and again.nodes["only"].failed == 0
    assert len(await sm.results(run)) == 1
    assert len(Flaky.attempts) == 3
    assert await sm.dead_letters() == []


async def test_redrive_all_for_graphless_states(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    Flaky.fail_times = 3
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Flaky],
        redis_url=redis_url,
        default_retry_policy=RetryPolicyModel(max_retries=0),
    )
    async with running(rt):
        ids = await sm.enqueue_many("Flaky", [{"x": i} for i in range(3)])
        first = await sm.wait_for_states("Flaky", ids, timeout=10)
        assert {r.status for r in first.values()} == {"FAILED"}
        assert len(await sm.dead_letters()) == 3
        assert (await sm.redrive_all()).redriven == 3
        assert (await sm.redrive_all()).redriven == 0
        out = await sm.outputs("Flaky")
        done = [r for r in out if r.status == "SUCCEEDED"]
        while len(done) < 3:
            more = await sm.outputs("Flaky", after=out[-1].entry_id, block_ms=1000)
            out += more
            done = [r for r in out if r.status == "SUCCEEDED"]
    assert sorted(r.state_id for r in done) == sorted(ids)


async def test_prune_ends_a_branch_and_the_run_still_succeeds(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    nodes = [
        GraphNodeModel(
            node_name="Split",
            namespace=namespace,
            identifier="split",
            inputs={"items": 3},
            next_nodes=["maybe"],
        ),
        GraphNodeModel(
            node_name="MaybePrune",
            namespace=namespace,
            identifier="maybe",
            inputs={"value": "${{ split.outputs.value }}"},
            next_nodes=["square"],
        ),
        GraphNodeModel(
            node_name="Square",
            namespace=namespace,
            identifier="square",
            inputs={"value": "${{ maybe.outputs.value }}"},
        ),
    ]
    rt = Runtime(
        namespace=namespace, name="t", nodes=[Split, MaybePrune, Square], redis_url=redis_url
    )
    async with running(rt):
        await sm.upsert_graph("p", nodes, secrets={})
        run = await sm.trigger("p")
        status = await sm.wait(run, timeout=10)
        results = await sm.results(run)
    assert status.status == "SUCCEEDED"
    assert status.nodes["maybe"].pruned == 1 and status.nodes["maybe"].succeeded == 2
    assert sorted(r["outputs"]["square"] for r in results) == [0, 4]


async def test_requeue_after_runs_the_same_state_later_without_a_retry(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = Runtime(namespace=namespace, name="t", nodes=[Later], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph(
            "g",
            one_node_graph(namespace, "Later"),
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        run = await sm.trigger("g")
        status = await sm.wait(run, timeout=10)
    assert status.status == "SUCCEEDED" and status.nodes["only"].retried == 0
    assert len(Later.runs) == 2 and Later.runs[1] - Later.runs[0] >= 0.3 - 0.01


async def test_healthy_slow_execution_keeps_its_claim(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    def make() -> Runtime:
        return Runtime(
            namespace=namespace, name="t", nodes=[Slow], redis_url=redis_url, visibility_timeout=0.6
        )

    async with running(make()) as first:
        state = await sm.enqueue("Slow", {"x": 1})
        await asyncio.wait_for(Slow.started.wait(), 10)  # the first runtime has it
        async with running(make()) as second:
            result = await sm.wait_for_states("Slow", [state], timeout=10)
            assert second.settled == 0
        assert first.settled == 1
    assert result[state].status == "SUCCEEDED"
    assert Slow.executions == 1  # never reclaimed: the heartbeat kept it


@pytest.mark.single_only("restarts a single server of its own (AOF)")
async def test_runtime_rides_out_a_redis_restart_with_aof(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """States queued, delayed and pending when Redis dies all complete after it restarts;
    the Runtime reconnects by itself and logs the outage once."""
    server = PrivateServer(appendonly=True, appendfsync="always")
    info = server.start()
    sm = StateManager(namespace, redis_url=info.url)
    try:
        queued = await sm.enqueue_many("Square", [{"value": i} for i in range(100)])
        delayed = await sm.enqueue_many("Square", [{"value": i} for i in range(20)], delay_ms=1500)
        pending = await sm.enqueue_many("Square", [{"value": i} for i in range(30)])
        await sm.broker.ensure_groups(["Square"])
        # A worker that read these and died before settling them:
        await sm.client.xreadgroup("exo", "ghost", {sm.keys.queue("Square"): ">"}, count=130)
        caplog.set_level(logging.WARNING, logger="exospherehost.runtime.worker")
        rt = Runtime(
            namespace=namespace,
            name="t",
            nodes=[Square],
            redis_url=info.url,
            visibility_timeout=0.5,
        )
        async with running(rt):
            server.kill()  # kill -9 of Redis itself, down long enough for many retries
            await _until(
                lambda: any("Redis unavailable" in r.getMessage() for r in caplog.records), 10
            )
            await asyncio.sleep(1.5)  # the outage goes on: no log line per attempt
            server.restart()
            more = await sm.enqueue_many("Square", [{"value": 7}] * 10)
            results = await sm.wait_for_states(
                "Square", queued + delayed + pending + more, timeout=30
            )
        assert {r.status for r in results.values()} == {"SUCCEEDED"}
        assert len(results) == 160
        outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(outages) == 1, [r.getMessage() for r in outages]
        assert any("Redis reachable again" in r.getMessage() for r in caplog.records)
        assert await sm.pending("Square") == {"length": 0, "pending": 0, "delayed": 0}
    finally:
        await sm.close()
        server.stop()


async def test_each_failure_is_logged_once_with_what_happens_next(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator reading the worker's log sees every failure (node, state, run, attempt,
    error) and whether it is retried or dead-lettered; before, failures logged nothing."""
    Flaky.fail_times = 2
    rt = Runtime(namespace=namespace, name="t", nodes=[Flaky], redis_url=redis_url)
    policy = RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)
    with caplog.at_level(logging.INFO, logger="exospherehost.failures"):
        async with running(rt):
            await sm.upsert_graph(
                "g", one_node_graph(namespace, "Flaky"), secrets={}, retry_policy=policy
            )
            run = await sm.trigger("g")
            assert (await sm.wait(run, timeout=10)).status == "FAILED"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("failures")]
    [dead] = await sm.dead_letters()
    where = f"Flaky state {dead.state_id} of run {run} (graph 'g', identifier 'only')"
    assert lines == [
        (
            logging.WARNING,
            f"{where} failed on attempt 1: ValueError: flaky failure #1; retrying (attempt 2 of 2)",
        ),
        (
            logging.ERROR,
            f"{where} failed on attempt 2: ValueError: flaky failure #2; "
            "dead-lettered (retries spent)",
        ),
    ]
