"""Tests written for mutmut's survivors in the worker's start and stop (runtime/worker.py:
run, _start_upkeep, _shut_down; README, Testing), on the session's redis-server."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime, StateManager
from exospherehost.broker.keys import GROUP
from exospherehost.runtime import worker as worker_module
from exospherehost.runtime.upkeep.cancelled import CancelledRuns
from exospherehost.runtime.upkeep.reclaim import Reclaimer
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


class Hold(BaseNode):
    """Runs until the test releases it."""

    started: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Hold.started.set()
        await Hold.release.wait()
        return self.Outputs(x=self.inputs.x)


async def test_the_upkeep_loops_run_without_an_error_and_keep_a_long_claim(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 0.3 s visibility timeout, a state held 1.2 s: its claim stays fresh (idle
    below the timeout: the heartbeat got this worker's broker, consumer, holdings,
    visibility and retrier) and no upkeep loop (promoter, reclaimer, heartbeat, cancelled
    runs) logs an error in that time. Bugs: any argument of an upkeep loop None or left
    out (each raises, is logged and restarted by its supervisor)."""
    Hold.started, Hold.release = asyncio.Event(), asyncio.Event()
    caplog.set_level(logging.WARNING, "exospherehost")
    vis = 0.3
    rt = Runtime(
        namespace=namespace, name="upkeep", nodes=[Hold], redis_url=redis_url,
        visibility_timeout=vis,
    )  # fmt: skip
    async with running(rt):
        state = await sm.enqueue("Hold", {"x": 1})
        await asyncio.wait_for(Hold.started.wait(), 10)
        loop = asyncio.get_running_loop()
        end, most_idle = loop.time() + 4 * vis, 0
        while loop.time() < end:  # Redis has no event for a claim's age: sample it
            [entry] = await sm.client.xpending_range(sm.keys.queue("Hold"), GROUP, "-", "+", 1)
            assert entry["consumer"].decode() == rt.consumer
            most_idle = max(most_idle, int(entry["time_since_delivered"]))
            await asyncio.sleep(0.03)
        Hold.release.set()
        done = await sm.wait_for_states("Hold", [state], timeout=10)
    assert done[state].status == "SUCCEEDED"
    assert most_idle < vis * 1000, f"the claim aged {most_idle} ms: no heartbeat"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


async def test_an_upkeep_loop_that_fails_is_named_and_started_again(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each upkeep loop (promoter, reclaimer, heartbeat, cancelled runs) failing once is
    logged at ERROR by its name and runs again after the backoff, which ends at the
    stop. Bugs: a supervisor's name None or another, its stop event None (the backoff
    itself then fails and the loop is gone for good)."""
    calls: Counter[str] = Counter()
    restarted = {n: asyncio.Event() for n in ("promoter", "reclaimer", "heartbeat", "cancelled")}

    def failing_once(name: str, real: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
        async def loop(*args: Any, **kwargs: Any) -> None:
            calls[name] += 1
            if calls[name] == 1:
                raise RuntimeError(f"{name} broke")
            restarted[name].set()
            await real(*args, **kwargs)

        return loop

    monkeypatch.setattr(worker_module, "promote", failing_once("promoter", worker_module.promote))
    monkeypatch.setattr(
        worker_module, "heartbeat", failing_once("heartbeat", worker_module.heartbeat)
    )
    monkeypatch.setattr(Reclaimer, "run", failing_once("reclaimer", Reclaimer.run))
    monkeypatch.setattr(CancelledRuns, "watch", failing_once("cancelled", CancelledRuns.watch))
    caplog.set_level(logging.ERROR, "exospherehost")
    rt = Runtime(namespace=namespace, name="sup", nodes=[Square], redis_url=redis_url)
    async with running(rt):
        for event in restarted.values():
            await asyncio.wait_for(event.wait(), 10)
    said = {r.getMessage() for r in caplog.records}
    assert said == {f"{n} loop failed; restarting it" for n in restarted}, said
