"""Issue 18 item 4: a worker that cannot settle stops heartbeating what it cannot finish.
With `maxclients` too low, a worker starved of connections kept 22 finished states claimed
by its heartbeat for over 40 s. Here one worker's settles hang (its Redis calls for them
never return) while its heartbeat still gets through: after a visibility timeout it lets
the finished states' claims lapse, a second worker takes them over and runs them, and
when the first one's settles finally arrive they emit nothing (each result once)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from exospherehost import Runtime, StateManager
from exospherehost.broker.streams import Broker
from tests.integration.apps.nodes import SampleNode
from tests.integration.helpers import running

pytestmark = pytest.mark.redis


async def _until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def test_a_worker_that_cannot_settle_lets_its_finished_states_go(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    unstuck = asyncio.Event()
    real = Broker.settle

    async def settle(self: Broker, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "frozen", False):
            await unstuck.wait()  # this worker's settles hang (no connection to be had)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Broker, "settle", settle)
    caplog.set_level(logging.WARNING, "exospherehost")

    def runtime(name: str) -> Runtime:
        return Runtime(
            namespace=namespace,
            name=name,
            nodes=[SampleNode],
            redis_url=redis_url,
            visibility_timeout=1.0,
            grace_period=1.0,
        )

    stuck, thief = runtime("stuck"), runtime("thief")
    async with running(stuck):
        stuck._worker.broker.frozen = True  # type: ignore[union-attr]
        ids = await sm.enqueue_many("SampleNode", [{"name": f"s{i}", "data": {}} for i in range(5)])
        stats = stuck.stats
        assert stats is not None
        await _until(lambda: stats.nodes["SampleNode"].executed == 5, "the stuck worker ran them")
        try:
            async with running(thief):
                done = await sm.wait_for_states("SampleNode", ids, timeout=20)
        finally:
            unstuck.set()  # its settles go through now: XACK finds them settled already
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert len(await sm.newest_outputs("SampleNode", 100)) == 5, "a state was settled twice"
    assert any("claims are left to lapse" in r.getMessage() for r in caplog.records)
