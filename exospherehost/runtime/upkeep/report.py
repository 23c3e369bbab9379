"""A Runtime process telling dashboards about itself: every REPORT_S (on wall-clock
boundaries), one pipelined write of its worker record and of what its nodes did since the
last write, into 10-second throughput buckets (broker/workers.py). Reads the in-process
counters (runtime/stats.py) only: nothing on the hot path changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import RedisError

from exospherehost.broker.workers import BUCKET_S, STOPPED_TTL_S, WorkerBoard
from exospherehost.runtime.resilience import is_outage, pause
from exospherehost.runtime.stats import RuntimeStats

log = logging.getLogger("exospherehost.runtime.worker")
REPORT_S = 5
"""Seconds between reports; a divisor of BUCKET_S, so each bucket gets whole intervals."""


def _totals(stats: RuntimeStats) -> dict[str, tuple[int, int]]:
    """node -> (done, failed) so far: done = succeeded or pruned, failed = raised."""
    return {n: (s.succeeded + s.pruned, s.failed) for n, s in stats.nodes.items()}


class Reporter:
    def __init__(
        self,
        board: WorkerBoard,
        consumer: str,
        runtime: str,
        stats: RuntimeStats,
        live: Callable[[], Mapping[str, Any]],
        static: Mapping[str, Any],
        interval_s: int = REPORT_S,
    ) -> None:
        """`live()`: the figures that change (in flight, executing), read at each report;
        `static`: what does not (concurrency, batch size ...)."""
        self.board, self.consumer, self.stats, self.live = board, consumer, stats, live
        self.interval_s = interval_s
        self.started_ms = int(time.time() * 1000)
        self.base: dict[str, Any] = {
            "runtime": runtime,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "nodes": list(stats.nodes),
            "started_ms": self.started_ms,
            **static,
        }
        self._sent = {n: (0, 0) for n in stats.nodes}  # totals already in the buckets
        self._last_error = ""
        self.reports = 0  # writes that reached Redis (tests wait on it)

    def record(self, state: str, now_ms: int) -> dict[str, Any]:
        per_node = {
            n: {"done": s.succeeded + s.pruned, "failed": s.failed, "dead": s.dead_lettered}
            for n, s in self.stats.nodes.items()
        }
        return {
            **self.base,
            **self.live(),
            "state": state,
            "written_ms": now_ms,
            "processed": sum(v["done"] for v in per_node.values()),
            "failed": sum(v["failed"] for v in per_node.values()),
            "per_node": per_node,
            "interval_s": self.interval_s,
        }

    async def report(self, state: str = "serving", now: float | None = None) -> None:
        """One write: the record, and the counts since the last write into the bucket of
        the interval that just ended. A failed write keeps the counts for the next one."""
        now = time.time() if now is None else now
        totals = _totals(self.stats)
        counts = {
            n: (done - self._sent[n][0], failed - self._sent[n][1])
            for n, (done, failed) in totals.items()
        }
        # The interval that just ended started one interval before the boundary we woke at.
        tick = int(now) - int(now) % self.interval_s
        start = tick - self.interval_s
        bucket = start - start % BUCKET_S
        ttl = STOPPED_TTL_S if state == "stopped" else None
        now_ms = int(now * 1000)
        record = self.record(state, now_ms)
        if ttl is None:
            await self.board.publish(self.consumer, record, now_ms, counts, bucket)
        else:
            await self.board.publish(self.consumer, record, now_ms, counts, bucket, ttl_s=ttl)
        self._sent = totals
        self.reports += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Report at every interval boundary of the wall clock until `stop`; Redis errors
        skip a report (an outage is logged by the worker's loops, anything else once)."""
        while True:
            try:
                await self.report()
                self._last_error = ""
            except (RedisError, OSError) as exc:
                if not is_outage(exc) and str(exc) != self._last_error:
                    log.warning("cannot write this worker's record for dashboards: %s", exc)
                    self._last_error = str(exc)
            now = time.time()
            if await pause(self.interval_s - now % self.interval_s + 0.01, stop):
                return

    async def stopped(self, timeout_s: float = 2.0) -> None:
        """The last report, marked stopped; bounded, and silent when Redis is away."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.report("stopped"), timeout_s)
