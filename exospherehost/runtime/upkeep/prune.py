"""Removing dead workers' consumers from the groups (kill -9 skips leaving them), and
recording ours alive while at it (see broker/lua/prune_consumers.lua)."""

from __future__ import annotations

import logging
import time
from functools import partial

from redis.exceptions import ResponseError

from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import Retrier

log = logging.getLogger("exospherehost.runtime.worker")


def consumer_idle_bound(idle_ms: int | None, visibility_ms: int) -> int:
    """How long a consumer holding nothing, idle and not recorded alive, must be so to be
    a dead worker's: by default max(10 x visibility, 5 min). Streams are pruned every half
    of it, so it has a floor: pruning must not become a busy loop."""
    if idle_ms is None:
        idle_ms = max(10 * visibility_ms, 300_000)
    return max(idle_ms, 1000)


class Pruner:
    def __init__(self, broker: Broker, consumer: str, idle_ms: int, retry: Retrier) -> None:
        self.broker = broker
        self.consumer = consumer
        self.idle_ms = idle_ms
        self.retry = retry
        self.due: dict[str, float] = {}  # node -> monotonic time of its next prune
        self.removed = 0  # consumers removed so far

    def until_due(self) -> float:
        """Seconds until a stream is due for pruning (also our liveness record)."""
        if not self.due:
            return float("inf")
        return min(self.due.values()) - time.monotonic()

    async def prune(self, node: str) -> None:
        """Prune `node`'s group when due, every idle_ms / 2: more often than the bound, so
        a live consumer always has a fresh record."""
        now = time.monotonic()
        if now < self.due.get(node, 0.0):
            return
        self.due[node] = now + self.idle_ms / 2000
        try:
            removed = await self.retry.until_ok(
                partial(self.broker.prune_consumers, node, self.consumer, self.idle_ms)
            )
        except ResponseError as exc:  # e.g. an ACL without XINFO: not worth retrying
            log.warning("cannot remove dead consumers of %s (%s); not trying again", node, exc)
            self.due[node] = float("inf")
            return
        if removed:
            self.removed += len(removed)
            log.info(
                "removed %d dead consumer(s) of %s: %s",
                len(removed),
                node,
                ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""),
            )
