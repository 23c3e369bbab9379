"""Runtime lifecycle: start modes, clean stop in code and by SIGTERM, finish or release."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from typing import ClassVar

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, Runtime, StateManager
from tests.integration.helpers import ROOT, start_worker, stop_processes


class Gated(BaseNode):
    """Waits on a class-level gate, so a test decides when executions may finish."""

    gate: ClassVar[asyncio.Event]
    started: ClassVar[asyncio.Queue[str]]

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        Gated.started.put_nowait(self.state_id)
        await Gated.gate.wait()
        return self.Outputs(i=self.inputs.i)


@pytest.fixture(autouse=True)
def _fresh_gate() -> None:
    Gated.gate = asyncio.Event()
    Gated.started = asyncio.Queue()


async def _started(n: int) -> None:
    for _ in range(n):
        await asyncio.wait_for(Gated.started.get(), 10)


async def test_start_in_a_loop_returns_a_task_and_stop_finishes_in_flight(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = Runtime(namespace=namespace, name="t", nodes=[Gated], redis_url=redis_url)
    ids = await sm.enqueue_many("Gated", [{"i": i} for i in range(5)])
    task = rt.start()
    assert isinstance(task, asyncio.Task)
    await _started(5)
    rt.stop()  # stop reading; the five in flight must still finish and settle
    Gated.gate.set()
    await asyncio.wait_for(task, 10)
    results = await sm.wait_for_states("Gated", ids, timeout=5)
    assert {r.status for r in results.values()} == {"SUCCEEDED"}
    assert await sm.pending("Gated") == {"length": 0, "pending": 0, "delayed": 0}


async def test_grace_period_over_releases_states_back_to_the_stream(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = Runtime(
        namespace=namespace, name="t", nodes=[Gated], redis_url=redis_url, grace_period=0.1
    )
    ids = await sm.enqueue_many("Gated", [{"i": i} for i in range(5)])
    task = rt.start()
    assert task is not None
    await _started(5)
    rt.stop()
    await asyncio.wait_for(task, 10)
    # Released at once (not after a visibility timeout): back in the stream, not pending.
    assert await sm.pending("Gated") == {"length": 5, "pending": 0, "delayed": 0}
    Gated.gate.set()
    rt2 = Runtime(namespace=namespace, name="t2", nodes=[Gated], redis_url=redis_url)
    task2 = rt2.start()
    assert task2 is not None
    results = await sm.wait_for_states("Gated", ids, timeout=10)
    rt2.stop()
    await asyncio.wait_for(task2, 10)
    assert {r.status for r in results.values()} == {"SUCCEEDED"}
    assert await sm.pending("Gated") == {"length": 0, "pending": 0, "delayed": 0}


async def test_sigterm_stops_a_blocking_runtime_process_cleanly(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    ids = await sm.enqueue_many("SampleNode", [{"name": str(i), "data": {}} for i in range(200)])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.apps.worker_main",
        redis_url,
        namespace,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    await sm.wait_for_states("SampleNode", ids, timeout=20)
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    assert b"runtime stopped cleanly" in out
    assert await sm.pending("SampleNode") == {"length": 0, "pending": 0, "delayed": 0}


async def test_consumer_joins_at_start_and_leaves_on_a_clean_stop(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "exospherehost.runtime.process")
    rt = Runtime(namespace=namespace, name="t", nodes=[Gated], redis_url=redis_url)
    task = rt.start()
    assert task is not None
    await asyncio.wait_for(rt.started.wait(), 10)
    q = sm.keys.queue("Gated")
    names = [c["name"] for c in await sm.client.xinfo_consumers(q, "exo")]
    assert names == [rt.consumer.encode()]  # visible before it received anything
    rt.stop()
    await asyncio.wait_for(task, 10)
    assert await sm.client.xinfo_consumers(q, "exo") == []
    assert "runtime t stopped; it settled 0 states" in caplog.messages


async def test_a_blocking_runtimes_tracebacks_show_only_the_nodes_error(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """start() without a running loop used to serve inside its `except RuntimeError:`, so
    every traceback (kept in dead letters, shown on the dashboard) began with "no running
    event loop ... During handling of the above exception, another exception occurred"."""
    worker = start_worker(redis_url, namespace, EXO_TEST_NODES="Work")
    try:
        await sm.upsert_graph(
            "fails",
            [
                GraphNodeModel(
                    node_name="Work",
                    namespace=namespace,
                    identifier="work",
                    inputs={"value": 1, "fail_at": 1},
                )
            ],
            retry_policy=RetryPolicyModel(max_retries=0),
            validation_timeout=30,
        )
        run = await sm.trigger("fails")
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
    finally:
        stop_processes([worker])
    [dead] = await sm.dead_letters()
    assert "RuntimeError: branch 1 fails for good" in dead.traceback
    assert "During handling" not in dead.traceback, dead.traceback
    assert "no running event loop" not in dead.traceback, dead.traceback


async def test_stopping_hands_back_read_but_not_started_states_at_once(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    """States read ahead but not started when the stop comes go straight back to the stream
    (another worker can run them now) instead of being run during the grace period; only
    the ones in flight are finished. It says so in the log."""
    # prefetch=400: the read-ahead of a fast node (4 x batch_size), so states are queued
    # behind the running ones (an unknown node's adaptive read-ahead is a quarter executor).
    rt = Runtime(
        namespace=namespace, name="t", nodes=[Gated], redis_url=redis_url, workers=2, prefetch=400
    )
    ids = await sm.enqueue_many("Gated", [{"i": i} for i in range(6)])
    with caplog.at_level(logging.INFO, logger="exospherehost.runtime.worker"):
        task = rt.start()
        assert task is not None
        await _started(2)
        rt.stop()

        async def handed_back() -> bool:
            return await sm.pending("Gated") == {"length": 6, "pending": 2, "delayed": 0}

        deadline = asyncio.get_running_loop().time() + 10
        while not await handed_back():  # the release is one settle call: poll Redis
            assert asyncio.get_running_loop().time() < deadline, await sm.pending("Gated")
            await asyncio.sleep(0.02)
        Gated.gate.set()
        await asyncio.wait_for(task, 10)
    assert Gated.started.qsize() == 0, "a read-ahead state was started during the grace"
    done = await sm.outputs("Gated")
    assert len(done) == 2 and {o.state_id for o in done} < set(ids)
    assert await sm.pending("Gated") == {"length": 4, "pending": 0, "delayed": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "4 read but not started states handed back; finishing 2 in-flight" in m for m in messages
    ), messages
    assert any("2 in-flight states finished, 0 cut short" in m for m in messages), messages


async def test_a_runtime_serves_once_and_a_second_start_says_so(
    redis_url: str, namespace: str
) -> None:
    """Its stop request and worker belong to the first run: a second start used to return
    at once, serving nothing, silently (found by a test that restarted one)."""
    from tests.integration.helpers import running

    rt = Runtime(namespace=namespace, name="p", nodes=[Gated], redis_url=redis_url)
    async with running(rt):
        pass
    with pytest.raises(RuntimeError, match="started already: a Runtime serves once"):
        rt.start()
