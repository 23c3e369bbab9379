"""cancel_and_wait ends a task that loses a cancel, as redis-py's send path on Python 3.11
does (asyncio.wait_for returning the result when the cancel comes in the same loop
iteration; see exospherehost.runtime.cancelling)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from exospherehost.runtime.cancelling import cancel_and_wait


async def swallows_once(cancels: list[int]) -> None:
    """Loses its first cancel, as a Redis call can, and goes on with its loop."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancels.append(1)
    await asyncio.Event().wait()


async def bounded(coro: Coroutine[Any, Any, Any], seconds: float = 5.0) -> None:
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=seconds)
    assert task in done, f"not ended within {seconds}s"
    task.result()


async def test_a_task_that_loses_its_cancel_is_cancelled_again_until_it_ends() -> None:
    cancels: list[int] = []
    task = asyncio.create_task(swallows_once(cancels))
    await asyncio.sleep(0)
    await bounded(cancel_and_wait([task], recancel_s=0.05))
    assert task.cancelled() and cancels == [1]


async def test_errors_are_returned_and_done_tasks_left_alone() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def ok() -> int:
        return 1

    failed, fine = asyncio.create_task(fails()), asyncio.create_task(ok())
    await asyncio.wait([failed, fine])
    errors = await cancel_and_wait([failed, fine])
    assert [type(e) for e in errors] == [RuntimeError, type(None)]
    assert fine.result() == 1


async def test_the_callers_own_cancellation_propagates() -> None:
    cancels: list[int] = []
    stubborn = asyncio.create_task(swallows_once(cancels))
    await asyncio.sleep(0)

    async def caller() -> None:
        await cancel_and_wait([stubborn], recancel_s=10)

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await bounded(cancel_and_wait([stubborn], recancel_s=0.05))
