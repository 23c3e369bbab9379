"""Taking over states whose worker died or hung: pending longer than the visibility
timeout, claimed with the reclaim script (broker/lua/reclaim.lua) into the worker's
pipeline, as many at once as there is free room for, never more.

An entry delivered once is mostly innocent read-ahead of one dead or hung worker: those
run in parallel, like read entries. An entry delivered more often is a suspect (it may be
what killed its workers): suspects run ONE AT A TIME, the next claimed once the last one
settled or after a bounded wait (the visibility timeout; a hung one keeps its executor,
under an execution bound). A poison message therefore drags innocent batch-mates along
for one delivery at most, never to the delivery limit; one delivered `max_deliveries`
times is dead-lettered, not run. Now and then the reclaimer also prunes dead consumers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import Retrier, pause
from exospherehost.runtime.upkeep.holdings import Holdings
from exospherehost.runtime.upkeep.prune import Pruner
from exospherehost.runtime.upkeep.rules import (
    carried_deliveries,
    poison_reason,
    suspect_threshold,
    triage,
)

log = logging.getLogger("exospherehost.runtime.worker")
Entries = list[tuple[bytes, dict[bytes, bytes]]]
# The pipeline's intake (Worker._accept): node, entries, poison reason or None,
# deliveries, execution bound or None.
Accept = Callable[[str, Entries, str | None, int, float | None], None]


class Reclaimer:
    def __init__(
        self,
        broker: Broker,
        consumer: str,
        nodes: Sequence[str],
        holdings: Holdings,
        accept: Accept,
        retry: Retrier,
        pruner: Pruner,
        *,
        visibility_ms: int,
        max_deliveries: int,
        suspect_timeout_s: float | None,
    ) -> None:
        self.broker = broker
        self.consumer = consumer
        self.nodes = list(nodes)
        self.holdings = holdings
        self.accept = accept
        self.retry = retry
        self.pruner = pruner
        self.visibility_ms = visibility_ms
        self.max_deliveries = max_deliveries
        # From how many deliveries a reclaimed entry is a suspect, run alone; the one
        # suspect awaited now: (node, id), settled, deadline.
        self.suspect_from = suspect_threshold(max_deliveries)
        self._suspect: tuple[tuple[str, bytes], asyncio.Event, float] | None = None
        # A suspect's execution bound (Job.timeout): 10 visibility timeouts leave a healthy
        # slow state room, and a hung one then fails under its retry policy instead of
        # holding an executor for good (heartbeats keep its claim alive meanwhile).
        self.suspect_timeout_s = (
            suspect_timeout_s if suspect_timeout_s is not None else visibility_ms / 100
        )

    async def run(self) -> None:
        """Reclaim and prune until stopping."""
        interval = self.visibility_ms / 2000
        stopping, holdings = self.retry.stopping, self.holdings
        streak = 0  # reclaimed since the last quiet round: logged once, not per state
        while not stopping.is_set():
            for node in self.nodes:
                await self.pruner.prune(node)  # when due; also keeps our consumers marked alive
            if holdings.stalled(time.monotonic() - self.visibility_ms / 1000):
                # Our settles do not get through: what we claimed we could not settle, and
                # a claim resets the idle time of our own stalled states, which the
                # heartbeat lets lapse for another worker to take (see Holdings.stalled).
                await self._pause(interval)
                continue
            # A claim filled its room: there may be more, claimed as room frees. Only then
            # (not whenever reads fill the room) does a round follow the settles' pace.
            more = False
            for node in self.nodes:
                if stopping.is_set():
                    return  # claim nothing more once stopping: it could not be run
                room = self._room()
                if room <= 0:
                    break  # full of read states: try again next round
                taken, filled = await self._reclaim(node, room)
                streak += taken
                more = more or filled
            if more:
                if self._room() <= 0:
                    holdings.room.clear()  # safe: the reader checks the room before waiting
                    # Set by settles and by stop(); bounded so prunes stay on time.
                    await pause(max(0.0, min(interval, self.pruner.until_due())), holdings.room)
                continue
            if streak:
                log.info("took over %d states of dead or hung workers", streak)
                streak = 0
            await self._pause(interval)

    def _room(self) -> int:
        """How many states may be claimed now: the free room. Not less, e.g. to leave a
        share for a read that may be on its way: a saturated worker (reads refill the
        room as soon as half a batch is free) would then never reclaim at all. So a read
        in flight during a claim can overshoot the limit by its count, once."""
        return self.holdings.free()

    async def _reclaim(self, node: str, room: int) -> tuple[int, bool]:
        """One claim of `node`'s idle entries, up to `room`: (taken, whether room ran out)."""
        suspects = 1 if self._suspect_free() else 0
        holdings = self.holdings
        # The room is reserved during the call, so a read starting meanwhile cannot take
        # it too.
        holdings.count += room
        try:
            claimed = await self.retry.until_ok(
                partial(
                    self.broker.reclaim,
                    node,
                    self.consumer,
                    self.visibility_ms,
                    room,
                    suspects=suspects,
                    suspect_from=self.suspect_from,
                    poison_at=self.max_deliveries,
                )
            )
        finally:
            holdings.count -= room
            holdings.room.set()  # a reader that waited on the reservation looks again
        if claimed and self.retry.stopping.is_set():
            # Too late to run them: they stay pending (not held, so not heartbeaten) and
            # another worker reclaims them after the visibility timeout.
            log.info("stopping: %d reclaimed %s states left for other workers", len(claimed), node)
            return 0, False
        return self._take(node, claimed), len(claimed) >= room

    def _take(self, node: str, claimed: list[tuple[bytes, int, dict[bytes, bytes]]]) -> int:
        """Accept what one claim returned, each kind its way; returns how many."""
        held = self.holdings.held[node]
        batches: dict[int, Entries] = {}
        taken = 0
        for entry_id, deliveries, fields in claimed:
            if entry_id in held:
                continue  # already ours (our own heartbeat lagged): no second copy
            taken += 1
            kind = triage(deliveries, self.suspect_from, self.max_deliveries)
            # Deliveries of the entries it was released from at shutdown count toward the
            # poison limit too (the claim script sees this entry's own count only).
            total = deliveries + carried_deliveries(entry_id, fields)
            if total >= self.max_deliveries:
                kind = "poison"
            # XCLAIM counted one more delivery (to us): deliveries + 1.
            if kind == "poison":
                self.accept(node, [(entry_id, fields)], poison_reason(total), deliveries + 1, None)
            elif kind == "suspect":
                log.debug("suspect %s %s (delivered %d times)", node, entry_id, deliveries)
                deadline = time.monotonic() + self.visibility_ms / 1000
                settled = self.holdings.settled_event(node, entry_id)
                self._suspect = ((node, entry_id), settled, deadline)
                self.accept(
                    node, [(entry_id, fields)], None, deliveries + 1, self.suspect_timeout_s
                )
            else:
                batches.setdefault(deliveries, []).append((entry_id, fields))
        for deliveries, entries in batches.items():
            self.accept(node, entries, None, deliveries + 1, None)
        return taken

    def _suspect_free(self) -> bool:
        """Whether the next suspect may be claimed: the last one settled, or its wait ran
        out (it runs on, bounded by suspect_timeout_s; reclaiming goes on without it)."""
        if self._suspect is None:
            return True
        key, settled, deadline = self._suspect
        if not settled.is_set():
            if time.monotonic() < deadline:
                return False
            self.holdings.watch.pop(key, None)  # no longer waited for
            log.warning(
                "reclaimed suspect %s %s still runs after %.1fs; claiming the next one",
                key[0],
                key[1].decode(errors="replace"),
                self.visibility_ms / 1000,
            )
        self._suspect = None
        return True

    async def _pause(self, interval: float) -> None:
        """Wait for the next round: `interval`, or less if the awaited suspect settles or
        its wait runs out first, or a stream is due for pruning; a stop ends it at once."""
        interval = min(interval, self.pruner.until_due())
        events = [self.retry.stopping]
        if self._suspect is not None:
            _, settled, deadline = self._suspect
            events.append(settled)
            interval = min(interval, deadline - time.monotonic())
        await _any_set(events, max(0.0, interval))


async def _any_set(events: Sequence[asyncio.Event], seconds: float) -> None:
    """Sleep up to `seconds`, waking early when any of `events` is set."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
