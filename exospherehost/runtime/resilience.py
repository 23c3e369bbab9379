"""Riding out Redis outages, in one place: what counts as one (TRANSIENT), the stoppable
pause between attempts, the retry-with-backoff loop every Redis-calling loop goes through
(Retrier), and one outage log per Runtime: every loop reports failures and recoveries
there, so an outage is logged once (and its end once), not once per loop or per attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.broker.connection import setup_failure
from exospherehost.broker.lane import transport_closed
from exospherehost.errors import ShutdownAbandoned

_REFUSING = (OutOfMemoryError, ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError)

log = logging.getLogger("exospherehost.runtime.worker")

# Errors that mean "Redis is not reachable right now": retried with backoff by every loop.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)

# Replies with which a reachable Redis says "not now" about any command, not "no" about
# this one: out of memory under noeviction (OOM), a replica or a failover window
# (READONLY, MASTERDOWN, and UNBLOCKED for a blocked read when the role changes), a script
# holding the server (BUSY), a failed RDB save (MISCONF), too few replicas (NOREPLICAS),
# cluster transitions (TRYAGAIN, CLUSTERDOWN). LOADING is a ConnectionError subclass in
# redis-py already. Scripts with a `#!lua` line are refused up front with these, before
# anything is written, so the same call can simply be sent again later. One OOM reply used
# to end the promoter for good (issue 17), a read-only window ended Runtimes (issue 18).
_NOT_NOW = ("OOM", "READONLY", "MASTERDOWN", "UNBLOCKED", "BUSY ", "MISCONF", "NOREPLICAS",
            "TRYAGAIN", "CLUSTERDOWN", "LOADING")  # fmt: skip
# A script without a `#!lua` line hits OOM at its first write: "... OOM command not allowed".
_SCRIPT_OOM = "OOM command not allowed"


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means Redis cannot serve now (retry the same call later), as opposed
    to an answer about the call itself (a wrong type, a script's own error). A connection
    that cannot be set up (credentials or TLS refused: broker.connection.setup_failure) is
    no outage: redis-py raises it as a ConnectionError, and retrying it hid a wrong
    password behind an endless "Redis unavailable" (issue 14)."""
    if isinstance(exc, TRANSIENT) or _cluster_unreachable(exc):
        return setup_failure(exc) is None
    if isinstance(exc, ResponseError):
        text = str(exc)
        # redis-py strips the code of errors it has a class for (OutOfMemoryError,
        # ReadOnlyError, ...): its class name says it then.
        code = getattr(exc, "status_code", None) or text.split(" ", 1)[0]
        return (
            isinstance(exc, _REFUSING)
            or f"{code} ".startswith(_NOT_NOW)
            or text.startswith(_NOT_NOW)
            or _SCRIPT_OOM in text
        )
    # uvloop's answer to a write on a connection the peer reset (see broker/lane.py).
    return transport_closed(exc)


def _cluster_unreachable(exc: BaseException) -> bool:
    # A cluster client that reaches no node, or finds slots unserved, says so with a
    # RedisClusterException (not a ConnectionError); others of its kind are answers (a
    # command whose keys span slots).
    # "TTL exhausted": the cluster client followed redirects and TRYAGAIN replies (a slot
    # migrating under a multi-key script) as often as it allows.
    text = str(exc)
    return (
        isinstance(exc, SlotNotCoveredError)
        or (
            isinstance(exc, RedisClusterException)
            and ("cannot be connected" in text or "not covered" in text)
        )
        or (isinstance(exc, ClusterError) and "TTL exhausted" in text)
    )


FIRST_DELAY_S = 0.05  # backoff between attempts: doubled after each failure, up to
MAX_DELAY_S = 2.0  # this cap
T = TypeVar("T")


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
            log.warning(
                "Redis unavailable (%s: %s); retrying with backoff", type(exc).__name__, exc
            )

    def up(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self.since)
            self.since = None


class Retrier:
    """Retries Redis calls through an outage with capped backoff (`until_ok`), reporting
    to one OutageLog, until a stop says otherwise.

    A stop (`stop(deadline)`) bounds the retrying, raising ShutdownAbandoned: tasks with
    nothing to finish give up at once (before `serve()`, every task; after it, those it
    named: a worker's start-up, reader, promoter and reclaimer, as nothing new should
    start); the others (settles above all) at the deadline. Nothing is lost: what was not
    settled stays pending in Redis and is reclaimed elsewhere."""

    def __init__(self, outage: OutageLog | None = None, stopping: asyncio.Event | None = None):
        self.outage = outage if outage is not None else OutageLog()
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self.deadline = 0.0  # set by stop(): when the tasks that finish work give up
        self._quit_first: set[asyncio.Task[object]] | None = None

    def stop(self, deadline: float) -> None:
        """Stop retrying (see the class); the first stop's `deadline` (monotonic) holds."""
        if not self.stopping.is_set():
            self.deadline = deadline
        self.stopping.set()

    def serve(self, quit_first: Iterable[asyncio.Task[object]]) -> None:
        """From now on only `quit_first` give up at once when stopping; every other task
        retries up to the deadline. Call again to name more."""
        if self._quit_first is None:
            self._quit_first = set()
        self._quit_first.update(quit_first)

    async def until_ok(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`'s result, retried while it raises an outage (`is_outage`: Redis
        unreachable, or refusing every command for now; see the class)."""
        delay = FIRST_DELAY_S
        # Set once stopping and failing: a retry must not outlast the stop deadline (one
        # attempt can take seconds in redis-py's own retries). The first attempt is never
        # bounded, so a healthy call after the deadline still goes through.
        bound: float | None = None
        while True:
            try:
                if bound is None:
                    result = await call()
                else:
                    async with asyncio.timeout(bound):  # TimeoutError is an OSError
                        result = await call()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancelled read into a connection error; the
                    # cancellation (shutdown) wins over retrying.
                    raise asyncio.CancelledError from exc
                self.outage.down(exc)
                if not self.stopping.is_set():
                    await pause(delay, self.stopping)  # a stop cuts the backoff short
                else:
                    quit_now = self._quit_first is None or task in self._quit_first
                    left = 0.0 if quit_now else self.deadline - time.monotonic()
                    if left <= 0:
                        raise ShutdownAbandoned(f"stopping, Redis unreachable: {exc}") from exc
                    await asyncio.sleep(min(delay, left))
                    bound = max(0.1, self.deadline - time.monotonic())
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            self.outage.up()
            return result


async def supervised(name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run a background loop until it returns or `stop` is set. Outages it rides out
    itself (Retrier); anything else it raises (a reply no one foresaw, a bug) is logged at
    ERROR with its traceback, at most once a minute per loop, and the loop starts again
    after a capped backoff: a background loop never ends silently, and never for good
    over one bad reply (issue 17: the promoter died of one OOM reply and retries stayed
    delayed forever). Cancellation and a stop's ShutdownAbandoned end it."""
    delay, last_log, held_back = FIRST_DELAY_S, -math.inf, 0
    while True:
        try:
            await loop()
            return
        except ShutdownAbandoned:
            return
        except Exception as exc:
            now = time.monotonic()
            if now - last_log >= 60.0:
                more = f" ({held_back} more failures since the last report)" if held_back else ""
                log.error("%s loop failed; restarting it%s", name, more, exc_info=exc)
                last_log, held_back = now, 0
            else:
                held_back += 1
        if await pause(delay, stop):
            return
        delay = min(delay * 2, MAX_DELAY_S)
