"""What a worker holds: the states it read or claimed and has not settled yet. The
pipeline owns it (reads and claims add, settles remove); the upkeep loops get it to see
what is held (heartbeats), to share the room (reclaims) and to await one settle (a
suspect)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class Holdings:
    def __init__(self, nodes: Iterable[str], limit: int) -> None:
        # Entries held, per node: entry id -> monotonic read time.
        self.held: dict[str, dict[bytes, float]] = {n: {} for n in nodes}
        self.watch: dict[tuple[str, bytes], asyncio.Event] = {}  # settles awaited
        self.count = 0  # held or reserved for a claim on its way: at most `limit`
        self.limit = limit
        # Set whenever room may have freed up (a settle, a claim's reservation ending)
        # and by a stop, so one wait covers both.
        self.room = asyncio.Event()
        # Finished states on their way to Redis: settle batches sent (monotonic send time
        # and the batch's outcomes) and the outcomes gathered behind them. Kept per batch,
        # not per state: only the heartbeat reads them, to find stalled settles, through
        # `source` ((node, entry id) of an outcome).
        self.settling: dict[int, tuple[float, Sequence[Any]]] = {}
        self.gathered: Callable[[], Sequence[Any]] = tuple
        self.source: Callable[[Any], tuple[str, bytes]] = tuple

    def free(self) -> int:
        return self.limit - self.count

    def settled_event(self, node: str, entry_id: bytes) -> asyncio.Event:
        """An event the settle of `node`'s `entry_id` sets."""
        event = asyncio.Event()
        self.watch[(node, entry_id)] = event
        return event

    def unsettled(self) -> int:
        return sum(len(held) for held in self.held.values())

    def stalled(self, older_than: float) -> set[tuple[str, bytes]]:
        """Finished states whose settle was sent before `older_than` (monotonic) and has
        not come back, with the outcomes gathered behind it: a worker that cannot settle
        them (Redis refusing or unreachable for this worker only, e.g. no connection to
        be had under `maxclients`) should let their claims lapse, so another worker can
        take them over (issue 18). Empty while settles flow."""
        stalled = [batch for sent, batch in self.settling.values() if sent < older_than]
        if not stalled:
            return set()
        stalled.append(self.gathered())
        return {self.source(o) for batch in stalled for o in batch}
