"""The namespace's recently cancelled runs, known to a worker so it drops their states
before executing them (issue 12.4). The settle script already guarantees a cancelled run
emits nothing more (settle.lua); this only saves the executions — an AI call of a run
nobody wants any more. Refreshed every REFRESH_S from `exo:{ns}:cancelled`, so a state
read within about a second of the cancel may still execute once."""

from __future__ import annotations

import time

from exospherehost.broker.streams import CANCELLED_KEEP_MS, Broker
from exospherehost.runtime.resilience import Retrier, pause

REFRESH_S = 1.0


class CancelledRuns:
    """`ids`: run ids to drop. Only what was cancelled in the last CANCELLED_KEEP_MS."""

    __slots__ = ("_after", "_when", "ids")

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._when: dict[str, int] = {}
        self._after = int(time.time() * 1000) - CANCELLED_KEEP_MS

    def add(self, found: list[tuple[str, int]], now_ms: int) -> None:
        """Take runs cancelled since the last refresh; forget those past the keep bound."""
        for run_id, ms in found:
            self.ids.add(run_id)
            self._when[run_id] = ms
            self._after = max(self._after, ms)
        horizon = now_ms - CANCELLED_KEEP_MS
        if self._when and min(self._when.values()) < horizon:
            for run_id in [r for r, ms in self._when.items() if ms < horizon]:
                del self._when[run_id]
                self.ids.discard(run_id)

    async def watch(self, broker: Broker, retry: Retrier) -> None:
        """Refresh until the worker stops."""
        stopping = retry.stopping
        while not stopping.is_set():
            # Read from a little before the newest seen: two cancels in one ms.
            found = await retry.until_ok(lambda: broker.cancelled_since(self._after - 1))
            self.add(found, int(time.time() * 1000))
            await pause(REFRESH_S, stopping)
