"""A cancel lost in a Redis call does not hang a stopping Runtime.

On Python 3.11 redis-py's send path (asyncio.wait_for, used because our clients have a
socket_timeout) loses about one cancel in eight of a task looping on Redis calls (see
exospherehost.runtime.cancelling). A stopping Runtime cancelled its metrics refresh loop
once and awaited it: CI hung there for 300 s."""

from __future__ import annotations

import asyncio

import pytest

from exospherehost import Runtime
from exospherehost.config import resolve
from exospherehost.runtime import metrics
from exospherehost.runtime.cancelling import cancel_and_wait
from tests.integration.helpers import running
from tests.integration.test_metrics import free_port
from tests.integration.test_metrics_gauges import Picky

pytestmark = pytest.mark.redis


async def test_a_loop_on_real_redis_calls_is_ended_every_time(redis_url: str) -> None:
    client = resolve(redis_url).client()

    async def loop(busy: asyncio.Event) -> None:
        while True:
            await client.smembers("exo-test-lost-cancel:none")
            busy.set()

    try:
        for round_ in range(60):
            busy = asyncio.Event()
            task = asyncio.create_task(loop(busy))
            await busy.wait()  # cancel in the middle of its calls
            stopper = asyncio.ensure_future(cancel_and_wait([task], recancel_s=0.05))
            done, _ = await asyncio.wait([stopper], timeout=5)
            assert stopper in done, f"round {round_}: the loop went on after cancels"
            assert task.cancelled()
    finally:
        await client.aclose()


async def test_a_runtime_stops_although_its_gauge_refresh_loses_a_cancel(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "GAUGE_REFRESH_S", 0.01)
    real = metrics.read_totals
    lost: list[int] = []
    reading = asyncio.Event()

    async def loses_one_cancel(broker: object) -> metrics.Totals:
        """What redis-py's send path does now and then: the cancel is swallowed."""
        reading.set()
        if not lost:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                lost.append(1)
        return await real(broker)  # type: ignore[arg-type]

    monkeypatch.setattr(metrics, "read_totals", loses_one_cancel)
    rt = Runtime(namespace, "lost", [Picky], redis_url=redis_url, metrics_port=free_port())
    async with running(rt, timeout=10):
        await asyncio.wait_for(reading.wait(), 10)
    assert lost == [1], "the refresh loop was never cancelled in its Redis read"
