"""What a worker holds: the states it read or claimed and has not settled yet. The
pipeline owns it (reads and claims add, settles remove); the upkeep loops get it to see
what is held (heartbeats), to share the room (reclaims) and to await one settle (a
suspect)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


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

    def free(self) -> int:
        return self.limit - self.count

    def settled_event(self, node: str, entry_id: bytes) -> asyncio.Event:
        """An event the settle of `node`'s `entry_id` sets."""
        event = asyncio.Event()
        self.watch[(node, entry_id)] = event
        return event

    def unsettled(self) -> int:
        return sum(len(held) for held in self.held.values())
