"""Riding out Redis outages: what counts as one (TRANSIENT), the stoppable pause between
attempts, and one outage log per Runtime: every loop that talks to Redis reports failures
and recoveries there, so an outage is logged once (and its end once), not once per loop or
per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("exospherehost.runtime.worker")

# Errors that mean "Redis is not reachable right now": retried with backoff by every loop.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


async def pause(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep up to `seconds`, waking early when `stop` is set; returns whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class OutageLog:
    def __init__(self) -> None:
        self.since: float | None = None

    def down(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("Redis unavailable (%s); retrying with backoff", exc)

    def up(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self.since)
            self.since = None
