"""The retry-with-backoff loop every Redis-calling loop goes through (Retrier): retries
transient errors, logs an outage once, and gives up by the stop's rules. No Redis: the
calls are plain coroutines that fail on demand."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from exospherehost.errors import ShutdownAbandoned
from exospherehost.runtime.resilience import OutageLog, Retrier


class Flaky:
    """A call failing with a connection error its first `failures` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RedisConnectionError("connection refused")
        return "ok"


async def test_transient_errors_are_retried_and_the_outage_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry = Retrier()
    call = Flaky(3)
    with caplog.at_level(logging.WARNING):
        assert await retry.until_ok(call) == "ok"
    assert call.calls == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis unavailable" in m for m in messages) == 1
    assert sum("Redis reachable again" in m for m in messages) == 1
    assert retry.outage.since is None


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ResponseError("NOSCRIPT")

    with pytest.raises(ResponseError):
        await Retrier().until_ok(refused)
    assert calls == 1


async def test_before_serving_a_stop_gives_up_at_once() -> None:
    retry = Retrier()
    retry.stop(time.monotonic() + 60)
    call = Flaky(10)
    with pytest.raises(ShutdownAbandoned):
        await retry.until_ok(call)
    assert call.calls == 1


async def test_a_healthy_call_goes_through_after_the_stop() -> None:
    retry = Retrier()
    retry.stop(time.monotonic() - 1)  # deadline long past
    assert await retry.until_ok(Flaky(0)) == "ok"


async def test_when_serving_only_the_named_tasks_give_up_at_once() -> None:
    retry = Retrier()
    quitter = asyncio.create_task(retry.until_ok(Flaky(10**6)))
    finisher = asyncio.create_task(retry.until_ok(Flaky(10**6)))
    retry.serve([quitter])
    await asyncio.sleep(0.01)  # both are retrying
    stopped = time.monotonic()
    retry.stop(stopped + 0.3)
    with pytest.raises(ShutdownAbandoned):
        await quitter
    assert time.monotonic() - stopped < 0.2
    with pytest.raises(ShutdownAbandoned):
        await finisher  # retried up to the deadline, not past it (plus the 0.1 s floor)
    assert 0.25 <= time.monotonic() - stopped < 1.0


async def test_the_first_stop_sets_the_deadline() -> None:
    retry = Retrier()
    retry.stop(100.0)
    retry.stop(200.0)
    assert retry.deadline == 100.0 and retry.stopping.is_set()


async def test_a_shared_outage_log_and_stop_event_are_used() -> None:
    outage, stop = OutageLog(), asyncio.Event()
    retry = Retrier(outage, stop)
    task = asyncio.create_task(retry.until_ok(Flaky(10**6)))
    await asyncio.sleep(0.01)
    assert outage.since is not None  # the outage is recorded in the log given
    stop.set()  # a stop through the event alone: every task gives up (none named)
    with pytest.raises(ShutdownAbandoned):
        await asyncio.wait_for(task, 5)
