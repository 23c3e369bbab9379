"""Tests written for mutmut's survivors in the worker's hot path and the promoter
(runtime/worker.py's reader, settler and stop; runtime/upkeep/promote.py; README,
Testing). A stub broker stands in for Redis: what is pinned is what the worker asks of
it and when. Each docstring names the one-line bugs it catches."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import BaseModel
from redis.exceptions import ResponseError

from benchmarks.nodes import Noop
from exospherehost import BaseNode
from exospherehost.broker.codec import Envelope, MalformedEntry, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD, Keys
from exospherehost.broker.plan import SettleFlags, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.errors import ShutdownAbandoned
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.outcomes import Completed, Failed, Job, Malformed, Released
from exospherehost.runtime.resilience import Retrier
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.upkeep import promote as promote_module
from exospherehost.runtime.upkeep.heartbeat import CHUNK, heartbeat
from exospherehost.runtime.upkeep.holdings import Holdings
from exospherehost.runtime.upkeep.promote import promote
from exospherehost.runtime.worker import SETTLE_AFTER_GRACE_S, Worker

KEYS = Keys("ns")
ENV = ENVELOPE_FIELD.encode()


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
async def test_a_reader_without_room_waits_for_a_settle_then_reads() -> None:
    """With no room left the reader does not read: it waits until a settle frees room
    (and says so), then reads. (How much room a read needs is runtime/prefetch.py's plan;
    before it, the reader's own `room < batch_size // 2 + 1`, whose mutants the Runtime
    tests killed.)"""
    broker = StubBroker()
    worker = make_worker(broker, batch_size=7)
    worker.inflight = worker.max_inflight
    reader = asyncio.create_task(worker._reader())
    await _settle_down()
    assert broker.reads == [] and not reader.done(), "no room: the reader must wait"
    worker.inflight = 0  # settles freed the window, and say so
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


async def test_a_settle_task_leaves_nothing_behind_once_done() -> None:
    """Each settle task is forgotten when it is done (its done-callback drops it from the
    settler's set), without an error on the loop. Bug: the callback None (every batch's
    task kept until the stop, with its outcomes: memory grows with every batch; the loop
    logs "Exception in callback" per batch)."""
    broker = FlagBroker([1])
    worker = make_worker(broker)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        settler = asyncio.create_task(worker._settler())
        for i in range(3):
            entry = f"1-{i}".encode()
            worker._held["Noop"][entry] = 0.0
            worker.inflight += 1
            job = Job("Noop", KEYS.queue("Noop"), entry, {}, Envelope(f"s{i}", {}))
            worker._finish(Completed(job, [{"ok": True}], False))
            await _settle_down()
        assert worker.settled == 3
        worker.stop()
        worker._has_outcomes.set()
        await asyncio.wait_for(settler, 5)
    finally:
        loop.set_exception_handler(None)
    assert errors == [], errors


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


# -- heartbeat -----------------------------------------------------------------------------
class BeatBroker:
    """Records each heartbeat call's ids; ends the loop after `rounds` rounds."""

    def __init__(self, done: asyncio.Event, rounds: int, fresh: Holdings | None) -> None:
        self.done = done
        self.fresh = fresh  # its settles in flight: sent "now", at every call
        self.rounds = rounds
        self.calls: list[list[bytes]] = []
        self.starts: list[float] = []

    async def heartbeat(self, node: str, consumer: str, ids: list[bytes]) -> list[bytes]:
        assert (node, consumer) == ("Noop", "c")
        now = time.monotonic()
        if not self.starts or now - self.starts[-1] > 0.05:
            self.starts.append(now)  # a new round (calls within one round come at once)
        self.calls.append(list(ids))
        if self.fresh is not None:
            self.fresh.settling = {k: (now, b) for k, (_, b) in self.fresh.settling.items()}
        if len(self.starts) >= self.rounds:
            self.done.set()
        return []


def _holdings(ids: list[bytes], held_for: float) -> Holdings:
    holdings = Holdings(["Noop"], 10_000)
    since = time.monotonic() - held_for
    holdings.held["Noop"] = {i: since for i in ids}
    holdings.source = lambda outcome: cast(tuple[str, bytes], outcome)  # outcomes: (node, id)
    return holdings


async def _beat(
    holdings: Holdings, rounds: int, visibility_ms: int = 300, fresh: bool = False
) -> BeatBroker:
    done = asyncio.Event()
    broker = BeatBroker(done, rounds, holdings if fresh else None)
    beat = heartbeat(cast(Broker, broker), "c", holdings, visibility_ms, done, Retrier())
    await asyncio.wait_for(beat, 10)
    return broker


async def test_the_heartbeat_renews_every_held_entry_in_chunks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,200 entries held past a third of the visibility timeout: one round renews each
    of them once, at most CHUNK ids per call. Bugs: the chunks started at every index up
    to CHUNK (`range(0, CHUNK)`: the ids past 999 never renewed), at 1, or sliced
    backwards; and with nothing stalled no warning (`>=`: "0 finished states could not
    be settled" every round)."""
    ids = [f"1-{i}".encode() for i in range(1200)]
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    broker = await _beat(_holdings(ids, held_for=1.0), rounds=1)
    assert all(0 < len(c) <= CHUNK for c in broker.calls), [len(c) for c in broker.calls]
    renewed = [i for c in broker.calls for i in c]
    assert sorted(renewed) == sorted(ids), f"{len(renewed)} renewals of {len(ids)} ids"
    assert not caplog.records, [r.getMessage() for r in caplog.records]


async def test_the_heartbeat_beats_every_third_of_the_visibility_timeout() -> None:
    """visibility 300 ms: a round every 100 ms. Bugs: `* 3000` (never), `/ 3001` is
    within this tolerance (equivalent)."""
    broker = await _beat(_holdings([b"1-0"], held_for=1.0), rounds=3)
    gaps = [b - a for a, b in zip(broker.starts, broker.starts[1:], strict=False)]
    assert all(0.08 <= g <= 0.4 for g in gaps), gaps


async def test_the_heartbeat_keeps_renewing_states_whose_settle_is_on_its_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A settle sent just now holding one of two held entries: both are renewed, nothing
    is said (a settle in flight is not a stalled one). Bug: stalled counted from
    `now + visibility` (every settle in flight is stalled: its states' claims lapse)."""
    holdings = _holdings([b"1-0", b"1-1"], held_for=1.0)
    holdings.settling[1] = (time.monotonic(), [("Noop", b"1-1")])
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    broker = await _beat(holdings, rounds=2, visibility_ms=600, fresh=True)
    assert all(sorted(c) == [b"1-0", b"1-1"] for c in broker.calls), broker.calls
    assert not caplog.records, [r.getMessage() for r in caplog.records]


async def test_the_heartbeat_lets_a_stalled_settles_states_lapse_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A settle sent a visibility timeout ago and not back: its state's claim is left to
    lapse (the other held entry is renewed), and the warning comes once for the stall, not
    every round. Bugs: stalled counted from `visibility * 1000` ago (never stalled), the
    stalled ones renewed too (`or`), the count said so far starting at 1 (one stalled
    state never said) or compared with `>=` (said every round)."""
    holdings = _holdings([b"1-0", b"1-1"], held_for=1.0)
    holdings.settling[1] = (time.monotonic() - 0.5, [("Noop", b"1-1")])
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    broker = await _beat(holdings, rounds=2, visibility_ms=300)
    assert broker.calls == [[b"1-0"], [b"1-0"]], broker.calls
    said = [r.getMessage() for r in caplog.records if "could not be settled" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 finished states"), said


# -- taking entries in ---------------------------------------------------------------------
def test_a_read_entry_becomes_a_job_delivered_once_with_the_nodes_own_bound() -> None:
    """An entry read (not reclaimed) is a job delivered once, with no bound of its own
    (the node's timeout applies), queued for an executor; a bad one keeps its fields for
    the dead letter. Bugs: `deliveries` defaulting to 2, the Malformed's fields dropped."""
    worker = make_worker(StubBroker())
    good = {ENV: encode(Envelope("s1", {"x": 1}))}
    worker._accept("Noop", [(b"1-0", good), (b"1-1", {ENV: b"\xc1"})])
    [job] = worker._queue.drain()
    assert (job.entry_id, job.deliveries, job.timeout, job.fields) == (b"1-0", 1, None, good)
    [bad] = worker._outcomes
    assert isinstance(bad, Malformed) and bad.fields == {ENV: b"\xc1"}
    assert bad.deliveries == 1 and worker.inflight == 2


def test_a_poison_entry_goes_straight_to_its_settle_as_a_failure_never_run() -> None:
    """A reclaimed entry past the delivery limit is not queued: it fails for good at once,
    with the poison reason and no traceback, marked as not executed (no execution of
    this worker failed: the statistics count it nowhere). Bugs: the traceback replaced,
    `executed=True`."""
    worker = make_worker(StubBroker())
    good = {ENV: encode(Envelope("s1", {"x": 1}))}
    worker._accept("Noop", [(b"1-0", good)], poison="delivered 5 times", deliveries=5)
    assert len(worker._queue) == 0
    [failed] = worker._outcomes
    assert isinstance(failed, Failed) and failed.job.deliveries == 5
    assert (failed.error, failed.traceback) == ("delivered 5 times", "")
    assert failed.permanent is True and failed.executed is False


# -- settling: what a batch's flags do ---------------------------------------------------
class FlagBroker(StubBroker):
    """settle() replies `flags`, noting what the worker had marked as settling meanwhile."""

    def __init__(self, flags: list[int]) -> None:
        super().__init__()
        self.flags = flags
        self.seen: list[tuple[float, list[Any]]] = []

    async def settle(self, plan: SettlePlan, lane: object) -> SettleFlags:
        assert self.worker is not None
        self.seen = [(t, list(b)) for t, b in self.worker.holdings.settling.values()]
        return SettleFlags(list(self.flags), {})


async def test_a_settled_batch_counts_each_flag_where_it_belongs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One batch: settled (1), late (0: another worker settled it first), a failure and a
    malformed entry settled (1), a state of a missing run (2), late again. Counted: 4
    settled, 2 late; the failure log gets the failure and the malformed entry only; the log names
    the late settle and the orphan; while in Redis the batch is marked settling (what
    the heartbeat reads), afterwards nothing is held. Bugs: `>= 0` / `> 1` / `!= 0` /
    `== 1` for the flags, the counts set or stepped wrongly, the failure test `and` /
    `is not`, the settling mark None, the orphan or late check on the wrong flag, the
    watched settle looked up without a default (states settled beside a watched one
    raise KeyError)."""
    broker = FlagBroker([1, 0, 1, 1, 2, 0])
    worker = make_worker(broker)
    reported: list[Any] = []
    worker._failures.report = reported.extend  # type: ignore[method-assign]
    entries = [f"1-{i}".encode() for i in range(6)]
    jobs = [Job("Noop", KEYS.queue("Noop"), e, {}, Envelope(f"s{i}", {})) for i, e in
            enumerate(entries)]  # fmt: skip
    failure = Failed(jobs[2], "ValueError: no", "tb", permanent=True)
    bad = Malformed("Noop", KEYS.queue("Noop"), entries[3], {}, "bad envelope")
    batch = [Completed(jobs[0], [{}], False), Completed(jobs[1], [{}], False), failure, bad,
             Completed(jobs[4], [{}], False), Completed(jobs[5], [{}], False)]  # fmt: skip
    for e in entries:
        worker._held["Noop"][e] = 0.0
    worker.inflight = 6
    watched = worker.holdings.settled_event("Noop", entries[5])  # a suspect, say
    caplog.set_level(logging.INFO, "exospherehost.runtime.worker")
    before = time.monotonic()
    lane = worker._settle_lanes[0]
    await worker._settle_batch(batch, lane, [], asyncio.Semaphore(0))
    [(sent, marked)] = broker.seen
    assert before <= sent <= time.monotonic() and marked == batch
    assert worker.holdings.settling == {} and worker._held["Noop"] == {}
    assert watched.is_set() and worker.holdings.watch == {}
    node = worker.stats.nodes["Noop"]
    assert (node.settled, node.late_settles) == (4, 2)
    assert reported == [failure, bad]
    assert worker.settled == 6 and worker.inflight == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("2 late settles skipped") for m in messages), messages
    [orphans] = [m for m in messages if "settled without effect" in m]
    assert orphans.startswith("1 state(s)") and "state s4 of run None" in orphans


async def test_a_batch_without_missing_runs_or_late_settles_logs_neither(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bugs: the orphan warning given for every batch (`2 not in flags`), a late-settle
    line counting the settled ones (`count(1)`)."""
    broker = FlagBroker([1])
    worker = make_worker(broker)
    job = Job("Noop", KEYS.queue("Noop"), b"1-0", {}, Envelope("s0", {}))
    worker._held["Noop"][b"1-0"] = 0.0
    worker.inflight = 1
    caplog.set_level(logging.INFO, "exospherehost.runtime.worker")
    lane = worker._settle_lanes[0]
    await worker._settle_batch([Completed(job, [{}], False)], lane, [], asyncio.Semaphore(0))
    assert worker.settled == 1 and not caplog.records, [r.getMessage() for r in caplog.records]


class RefusingBroker(StubBroker):
    """settle() refuses any call of more than one state as a whole (ResponseError, as
    Redis refuses a script up front), settles single ones."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def settle(self, plan: SettlePlan, lane: object) -> SettleFlags:
        n = len(plan.items)
        self.calls.append(n)
        if n > 1:
            raise ResponseError("refused as a whole")
        return SettleFlags([1], {})


async def test_a_batch_refused_as_a_whole_is_settled_state_by_state() -> None:
    """README Guarantees (issue 16 row: after a settle script error, states are settled one
    by one). Bug: the fallback marks every state of the batch unsettled (they would wait
    for the reclaimer, a visibility timeout later)."""
    broker = RefusingBroker()
    worker = make_worker(broker)
    entries = [f"1-{i}".encode() for i in range(3)]
    batch = [
        Completed(Job("Noop", KEYS.queue("Noop"), e, {}, Envelope(f"s{i}", {})), [{}], False)
        for i, e in enumerate(entries)
    ]
    for e in entries:
        worker._held["Noop"][e] = 0.0
    worker.inflight = 3
    await worker._settle_batch(list(batch), worker._settle_lanes[0], [], asyncio.Semaphore(0))
    assert broker.calls == [3, 1, 1, 1], "the batch, then each state alone"
    assert worker.stats.nodes["Noop"].settled == 3, "each settled, none left unsettled"


# -- executing -------------------------------------------------------------------------------
async def _execute_one(worker: Worker) -> None:
    """One Noop job through an executor, to its outcome; then the queue closes."""
    job = Job("Noop", KEYS.queue("Noop"), b"1-0", {}, Envelope("s1", {"name": "a", "data": {}}))
    worker._queue.put(job)
    executor = asyncio.create_task(worker._executor())
    for _ in range(200):
        if any(isinstance(o, Completed) for o in worker._outcomes):
            break
        await asyncio.sleep(0.005)
    worker._queue.close()
    await asyncio.wait_for(executor, 5)


async def test_an_execution_is_counted_with_its_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Noop execution: counted once for its node, as succeeded, its (short) duration in
    the histogram. Bugs: the start time None, the duration `clock() + started` or None,
    any argument of the count dropped (each is caught as a counting bug: nothing
    counted, an ERROR logged)."""
    worker = make_worker(StubBroker())
    caplog.set_level(logging.ERROR, "exospherehost.runtime.worker")
    await _execute_one(worker)
    [done] = worker._outcomes
    assert isinstance(done, Completed)
    node = worker.stats.nodes["Noop"]
    assert (node.executed, node.succeeded, sum(node.exec_buckets)) == (1, 1, 1)
    assert 0 <= node.exec_seconds_sum < 1.0, node.exec_seconds_sum
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert worker.executing == 0


async def test_a_bug_counting_an_execution_is_logged_and_the_outcome_still_settles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Counting is bookkeeping: when it raises, the outcome still goes to its settle and
    the bug is logged at ERROR, naming what was being done, with its traceback. Bugs:
    the message replaced or None, the exception not passed (no traceback)."""
    worker = make_worker(StubBroker())

    def broken(*args: Any) -> None:
        raise RuntimeError("counter broke")

    monkeypatch.setattr(worker.stats, "executed", broken)
    caplog.set_level(logging.ERROR, "exospherehost.runtime.worker")
    await _execute_one(worker)
    [done] = worker._outcomes
    assert isinstance(done, Completed)
    [record] = caplog.records
    assert record.getMessage().startswith("internal error while counting an execution ")
    assert record.exc_info is not None and "counter broke" in str(record.exc_info[1])


async def test_a_job_abandoned_at_shutdown_is_released_and_the_executor_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An execution that gives up on an unreachable Redis at shutdown (ShutdownAbandoned,
    e.g. loading its graph) hands its state back (it stays pending), and the executor
    survives it: it runs the next job until the queue closes. Bugs: nothing finished or
    a release of no job (the settler dies), `break` for `continue`."""
    worker = make_worker(StubBroker())
    execute = worker._execute
    first = Job("Noop", KEYS.queue("Noop"), b"1-0", {}, Envelope("s0", {}))

    async def abandon_first(job: Job) -> Any:
        if job is first:
            raise ShutdownAbandoned("stopping, Redis unreachable")
        return await execute(job)

    monkeypatch.setattr(worker, "_execute", abandon_first)
    worker._queue.put(first)
    await _execute_one(worker)
    released, done = worker._outcomes
    assert isinstance(released, Released) and released.job is first
    assert isinstance(done, Completed) and done.job.entry_id == b"1-0" and done.job is not first


class OptionalSecret(BaseNode):
    """Declares a secret it can do without."""

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    class Secrets(BaseModel):
        token: str = "none"

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def test_a_graphless_state_runs_with_no_secrets_not_with_none() -> None:
    """A graphless state (no graph, so no graph secrets) of a node whose secrets are all
    optional runs with the defaults. Bug: the secrets None instead of empty (they fail
    validation: "missing secrets")."""
    broker = StubBroker()
    cfg = SettleConfig(keys=KEYS, graphs={})
    spec = NodeSpec.of(OptionalSecret)
    worker = Worker(cast(Broker, broker), [spec], "c", cast(GraphCache, None), cfg)
    job = Job("OptionalSecret", KEYS.queue("OptionalSecret"), b"1-0", {}, Envelope("s", {"x": 3}))
    outcome = await worker._execute(job)
    assert isinstance(outcome, Completed), outcome
    assert outcome.outputs == [{"x": 3}]


async def test_a_run_state_whose_graph_is_gone_fails_for_good_saying_so() -> None:
    """A state of a run whose graph version no longer exists (not cached, and loading it
    finds nothing) fails for good with "graph ... not found", not as an internal error.
    Bug: the unite check `... and unite is not None or ident in graph.unites` (it reads
    the missing graph's unites: AttributeError)."""

    async def missing(name: str, version: int) -> None:
        return None

    graphs = SimpleNamespace(compiled={}, get=missing, secrets=lambda name, version: {})
    cfg = SettleConfig(keys=KEYS, graphs={})
    worker = Worker(cast(Broker, StubBroker()), [NodeSpec.of(Noop)], "c",
                    cast(GraphCache, graphs), cfg)  # fmt: skip
    env = Envelope("s", {}, run_id="r1", graph="gone", graph_version=3, identifier="a")
    outcome = await worker._execute(Job("Noop", KEYS.queue("Noop"), b"1-0", {}, env))
    assert isinstance(outcome, Failed) and outcome.permanent, outcome
    assert outcome.error == "graph 'gone' version 3 not found", outcome.error


async def test_a_uniting_state_whose_inputs_cannot_be_built_fails_for_good_with_the_traceback() -> (
    None
):
    """A fired unite whose inputs cannot be rendered from what its branches left: the
    uniting state fails for good, its reason naming the node and the error, its traceback
    the error's. Bugs: the traceback formatted from None, the failure not permanent."""

    class Graph:
        unites = {"u": object()}

        def unite_inputs(self, ident: str, ctx: Any, collected: Any) -> Any:
            raise ValueError("boom")

    class Collecting(StubBroker):
        async def collected(self, run_id: str, ident: str, unite: str) -> list[Any]:
            assert (run_id, ident, unite) == ("r1", "u", "t1")
            return []

    graphs = SimpleNamespace(compiled={("g", 1): Graph()}, secrets=lambda name, version: {})
    cfg = SettleConfig(keys=KEYS, graphs={})
    worker = Worker(cast(Broker, Collecting()), [NodeSpec.of(Noop)], "c",
                    cast(GraphCache, graphs), cfg)  # fmt: skip
    env = Envelope("s", {}, run_id="r1", graph="g", graph_version=1, identifier="u", unite="t1")
    outcome = await worker._execute(Job("Noop", KEYS.queue("Noop"), b"1-0", {}, env))
    assert isinstance(outcome, Failed) and outcome.permanent is True, outcome
    assert outcome.error == "cannot build the inputs of uniting node 'u': boom", outcome.error
    assert "Traceback" in outcome.traceback and "ValueError: boom" in outcome.traceback


def test_an_undecodable_entry_is_dead_lettered_for_what_the_codec_says() -> None:
    """A malformed envelope's reason is the codec's own message (MalformedEntry), as is;
    only an unforeseen codec error is wrapped as "cannot decode: ...". Bug: every error
    wrapped (`and False`)."""
    worker = make_worker(StubBroker())
    fields = {ENV: b"\xc1"}
    try:
        decode(b"1-0", fields)
    except MalformedEntry as exc:
        expected = str(exc)
    worker._accept("Noop", [(b"1-0", fields)])
    [bad] = worker._outcomes
    assert isinstance(bad, Malformed) and bad.reason == expected, bad.reason
