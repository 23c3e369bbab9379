"""Tests written for mutmut's survivors in the worker's hot path and the promoter
(runtime/worker.py's reader, settler and stop; runtime/upkeep/promote.py; README,
Testing). A stub broker stands in for Redis: what is pinned is what the worker asks of
it and when. Each docstring names the one-line bugs it catches."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

from benchmarks.nodes import Noop
from exospherehost.broker.codec import Envelope
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import SettleFlags, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.outcomes import Completed, Job
from exospherehost.runtime.resilience import Retrier
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.upkeep import promote as promote_module
from exospherehost.runtime.upkeep.promote import promote
from exospherehost.runtime.worker import SETTLE_AFTER_GRACE_S, Worker

KEYS = Keys("ns")


class Noop2(Noop):
    """A second node, so a read spans two streams."""


class StubBroker:
    """Records each read (its arguments) and stops the worker after `reads` of them;
    `settle` blocks until the test releases it."""

    def __init__(self, reads: int = 1) -> None:
        self.keys = KEYS
        self.client = SimpleNamespace(connection_pool=None)
        self.reads: list[tuple[Any, ...]] = []
        self.reads_left = reads
        self.worker: Worker | None = None
        self.settles: list[asyncio.Event] = []

    async def read(self, *args: Any) -> list[Any]:
        self.reads.append(args)
        self.reads_left -= 1
        if self.reads_left <= 0 and self.worker is not None:
            self.worker.stop()
        return []

    async def settle(self, plan: SettlePlan, lane: object) -> SettleFlags:
        release = asyncio.Event()
        self.settles.append(release)
        await release.wait()
        return SettleFlags([1] * len(plan.items), {})


def make_worker(broker: StubBroker, nodes: list[type[Noop]] | None = None, **kw: Any) -> Worker:
    cfg = SettleConfig(keys=KEYS, graphs={})
    specs = [NodeSpec.of(n) for n in (nodes or [Noop])]
    worker = Worker(cast(Broker, broker), specs, "c", cast(GraphCache, None), cfg, **kw)
    broker.worker = worker
    return worker


async def _settle_down() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- reading -------------------------------------------------------------------------------
async def test_the_reader_reads_as_soon_as_over_half_a_batch_of_room_is_free() -> None:
    """batch_size 7: with room for 4 (7 // 2 + 1) the reader reads, with room for 3 it
    waits for a settle to free more. Bugs: `<=` for `<`, `+ 2` for `+ 1`, `/` for `//`
    (each waits with room for 4), `- 1` or `// 3` (each reads with room for 3)."""
    broker = StubBroker()
    worker = make_worker(broker, batch_size=7)
    worker.inflight = worker.max_inflight - 4
    await asyncio.wait_for(worker._reader(), 5)
    assert len(broker.reads) == 1, "room for 4 of a batch of 7: the reader must read"

    broker = StubBroker()
    worker = make_worker(broker, batch_size=7)
    worker.inflight = worker.max_inflight - 3
    reader = asyncio.create_task(worker._reader())
    await _settle_down()
    assert broker.reads == [] and not reader.done(), "room for 3 of 7: it must wait"
    worker.inflight -= 1  # a settle freed one: room for 4, and it says so
    worker.holdings.room.set()
    await asyncio.wait_for(reader, 5)
    assert len(broker.reads) == 1


async def test_a_read_asks_each_stream_for_its_share_of_the_room_on_the_readers_lane() -> None:
    """One XREADGROUP for all the worker's streams, as its consumer, blocking block_ms, on
    the reader's own connection, asking each stream for batch_size // streams (the COUNT
    applies per stream). Bugs: any argument of the read dropped or None (no BLOCK: the
    reader spins; no lane: the blocking read holds a pool connection), the share as a
    float (`/`)."""
    broker = StubBroker()
    worker = make_worker(broker, [Noop, Noop2], batch_size=9, block_ms=321)
    await asyncio.wait_for(worker._reader(), 5)
    [(consumer, nodes, count, block_ms, lane)] = broker.reads
    assert (consumer, list(nodes), block_ms) == ("c", ["Noop", "Noop2"], 321)
    assert count == 4 and type(count) is int
    assert lane is worker._read_lane


async def test_a_read_never_asks_a_stream_for_more_than_the_batch() -> None:
    """batch_size 1: each read asks for one entry per stream, never more (a read may not
    overshoot the in-flight bound by more than its count). Bug: `max(2, ...)`."""
    broker = StubBroker()
    worker = make_worker(broker, batch_size=1)
    await asyncio.wait_for(worker._reader(), 5)
    [(_, _, count, _, _)] = broker.reads
    assert count == 1


# -- stopping ------------------------------------------------------------------------------
async def test_stop_gives_settles_the_grace_period_and_two_seconds_more() -> None:
    """After stop(), retries of the work still to finish (settles) give up at the grace
    period plus SETTLE_AFTER_GRACE_S. Bugs: either sum's sign flipped, no deadline."""
    worker = make_worker(StubBroker(), grace_s=5.0)
    before = time.monotonic()
    worker.stop()
    after = time.monotonic()
    assert SETTLE_AFTER_GRACE_S == 2.0
    deadline = worker._retry.deadline
    assert before + 7.0 <= deadline <= after + 7.0, deadline - before
    assert worker._stopping.is_set() and worker.holdings.room.is_set()


# -- settling ------------------------------------------------------------------------------
async def test_the_settler_ends_only_after_the_settles_in_flight_came_back() -> None:
    """Stopping with nothing left to hand over: the settler still waits for the batch in
    Redis before it ends (the shutdown then closes the lanes and leaves the groups).
    Bug: `return` for `break` (it ends at once, the settle still in flight)."""
    broker = StubBroker()
    worker = make_worker(broker)
    settler = asyncio.create_task(worker._settler())
    entry = b"1-0"
    worker._held["Noop"][entry] = 0.0
    worker.inflight += 1
    job = Job("Noop", KEYS.queue("Noop"), entry, {}, Envelope("s0", {}))
    worker._finish(Completed(job, [{"ok": True}], False))
    await _settle_down()
    assert len(broker.settles) == 1
    worker.stop()
    worker._has_outcomes.set()
    await _settle_down()
    assert not settler.done(), "the settler ended with a settle still in flight"
    broker.settles[0].set()
    await asyncio.wait_for(settler, 5)
    assert worker.settled == 1 and worker.inflight == 0


# -- promoting -----------------------------------------------------------------------------
class PromoteBroker:
    """Replies to promote() from a script, noting when each call came; stops after it."""

    def __init__(self, replies: list[tuple[int, int] | None], retry: Retrier) -> None:
        self.replies = replies
        self.retry = retry
        self.calls: list[float] = []

    async def promote(self, nodes: list[str]) -> tuple[int, int]:
        self.calls.append(time.monotonic())
        reply = self.replies[len(self.calls) - 1]
        if reply is None:
            self.retry.stop(0.0)
            return 0, -1
        moved, due_in_ms = reply
        return moved, (-1 if due_in_ms < 0 else int(time.time() * 1000) + due_in_ms)


async def test_the_promoter_waits_for_what_is_due_and_goes_on_at_once_after_a_move() -> None:
    """After a round that moved some it promotes again at once; with the next entry due in
    150 ms it waits about that long; with nothing delayed, IDLE_WAKE_S. Bugs: `break` for
    `continue` (the promoter ends after its first move), the due time's units or sign
    wrong (`* 1000`, `/ 1001`, `+ time.time()`: it waits the idle wake-up, or 2 ms), the
    shortest wait 1.002 s."""
    retry = Retrier()
    broker = PromoteBroker([(3, -1), (0, 150), (0, -1), None], retry)
    await asyncio.wait_for(promote(cast(Broker, broker), ["Noop"], retry), 10)
    assert len(broker.calls) == 4, broker.calls
    moved, due, idle = (b - a for a, b in zip(broker.calls, broker.calls[1:], strict=False))
    assert moved < 0.05, f"promoted again {moved:.3f}s after a round that moved some"
    assert 0.1 <= due <= 0.4, f"waited {due:.3f}s for an entry due in 0.15s"
    assert idle >= promote_module.IDLE_WAKE_S - 0.01, f"idle wait {idle:.3f}s"
