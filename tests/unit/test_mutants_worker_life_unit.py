"""Tests written for mutmut's survivors in the worker's start, stop and log helpers
(runtime/worker.py: run, _join, _start_upkeep, _shut_down, _log_orphans, _name,
_fields; README, Testing). Stub brokers stand in for Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from benchmarks.nodes import Noop
from exospherehost.broker.codec import Envelope
from exospherehost.broker.streams import CANCELLED_KEEP_MS
from exospherehost.errors import ShutdownAbandoned
from exospherehost.runtime import worker as worker_module
from exospherehost.runtime.cancelling import RECANCEL_S
from exospherehost.runtime.outcomes import Completed, Job, Malformed
from exospherehost.runtime.resilience import Retrier
from tests.unit.test_mutants_worker_unit import KEYS, Noop2, StubBroker, make_worker


def _job(fields: dict[bytes, bytes] | None = None) -> Job:
    return Job("Noop", KEYS.queue("Noop"), b"7-1", fields or {}, Envelope("s9", {}))


# -- the log helpers ------------------------------------------------------------------------
def test_a_state_is_named_by_node_state_and_entry_a_malformed_one_without_state() -> None:
    """Bugs: the state id left out of a decoded one's name, "XXXX" for a malformed one's."""
    assert worker_module._name(Completed(_job(), [], fanout=False)) == "Noop state s9 (entry 7-1)"
    bad = Malformed("Noop", KEYS.queue("Noop"), b"7-2", {b"k": b"v"}, "bad")
    assert worker_module._name(bad) == "Noop (entry 7-2)"


def test_the_fields_logged_are_the_first_20_each_cut_at_200_bytes() -> None:
    """What an unsettled state's ERROR shows of it: its entry's own fields (a malformed
    entry's too), the first 20, values over 200 bytes as their size. Bugs: 21 fields,
    a limit of 201 or the default 4096, a malformed entry's fields read from a job."""
    many = {f"f{i:02}".encode(): b"x" for i in range(25)}
    shown = worker_module._fields(Completed(_job(many), [], fanout=False))
    assert list(shown) == [f"f{i:02}" for i in range(20)]
    sized = {b"a": b"y" * 200, b"b": b"z" * 201}
    assert worker_module._fields(Completed(_job(sized), [], fanout=False)) == {
        "a": "y" * 200,
        "b": "<201 bytes>",
    }
    bad = Malformed("Noop", KEYS.queue("Noop"), b"7-2", {b"k": b"v" * 300}, "bad")
    assert worker_module._fields(bad) == {"k": "<300 bytes>"}


# -- starting and stopping -----------------------------------------------------------------
class DownBroker(StubBroker):
    """Redis unreachable from the start: every call an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.retried = asyncio.Event()  # a second attempt came: the worker rides it out

    async def ensure_groups(self, nodes: Any) -> None:
        self.calls += 1
        if self.calls >= 2:
            self.retried.set()
        raise RedisConnectionError("Connection refused")


async def test_a_worker_stopped_while_redis_is_down_at_start_leaves_at_once() -> None:
    """run() itself (start-up, reading) gives up at once when stopped in an outage: it
    has nothing to finish. Bugs: run() not among the tasks that quit first (it retried
    until the grace period's end, 30 s here)."""
    broker = DownBroker()
    worker = make_worker(broker, grace_s=30.0)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(broker.retried.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)  # not after the 30 s grace period
    assert not worker.ready.is_set()


# -- the worker's parts, wired ----------------------------------------------------------------
def test_a_worker_is_made_with_the_runtimes_defaults() -> None:
    """Worker's own defaults (what a Worker made without a Runtime gets): batch 100, 32
    executors, BLOCK 1 s, 30 s grace and visibility, 5 deliveries, the read-ahead rule."""
    worker = make_worker(StubBroker())
    assert (worker.batch_size, worker.concurrency, worker.block_ms) == (100, 32, 1000)
    assert (worker.grace_s, worker.visibility_ms, worker.max_deliveries) == (30.0, 30_000, 5)
    assert worker.max_inflight == 432 and worker.prefetch.fixed is None
    assert worker.cut_short == 0 and worker.executing == 0 and worker.settled == 0
    # The consumer-pruning bound from the visibility timeout: max(10 x 30 s, 5 min).
    assert worker._reclaimer.pruner.idle_ms == 300_000


def test_a_worker_passes_its_options_to_its_parts() -> None:
    """Each option reaches the part that acts on it: the read-ahead (prefetch), the
    reclaimer (visibility, deliveries, suspect bound, consumer, nodes, holdings, accept,
    retrier), its pruner (broker, consumer, idle bound, retrier), the lanes (the broker's
    client), the heartbeat's view of settles on their way. Bugs: any of them None, left
    out or replaced by a fresh one."""
    broker = StubBroker()
    retry, ready = Retrier(), asyncio.Event()
    worker = make_worker(
        broker,
        batch_size=10,
        concurrency=4,
        visibility_ms=2_000,
        max_deliveries=3,
        suspect_timeout_s=7.5,
        consumer_idle_ms=50_000,
        retry=retry,
        ready=ready,
        prefetch=2,
    )
    assert (worker.batch_size, worker.concurrency) == (10, 4)
    assert (worker.visibility_ms, worker.max_deliveries) == (2_000, 3)
    assert worker.prefetch.fixed == 2 and worker.max_inflight == 4 + 2
    assert worker._retry is retry and worker.ready is ready
    reclaimer = worker._reclaimer
    assert reclaimer.broker is cast(Any, broker)
    assert (reclaimer.consumer, reclaimer.nodes) == ("c", ["Noop"])
    assert reclaimer.holdings is worker.holdings and reclaimer.retry is retry
    assert reclaimer.accept == worker._accept
    assert (reclaimer.visibility_ms, reclaimer.max_deliveries) == (2_000, 3)
    assert reclaimer.suspect_timeout_s == 7.5
    pruner = reclaimer.pruner
    assert pruner.broker is cast(Any, broker)
    assert (pruner.consumer, pruner.idle_ms) == ("c", 50_000)
    assert pruner.retry is retry
    lanes = [worker._read_lane, *worker._settle_lanes]
    assert len(worker._settle_lanes) == 2
    assert all(lane._client is broker.client for lane in lanes)
    assert not worker._done.is_set()
    # The heartbeat finds stalled settles through these two.
    job = _job()
    worker._outcomes.append(Completed(job, [], fanout=False))
    assert worker.holdings.gathered() is worker._outcomes
    assert worker.holdings.source(worker._outcomes[0]) == ("Noop", b"7-1")


class JoiningBroker(StubBroker):
    """Groups created and joined; the namespace's cancelled runs: one a minute ago and one
    past the keep bound."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        now_ms = int(time.time() * 1000)
        self.cancelled = [("old", now_ms - CANCELLED_KEEP_MS - 60_000), ("new", now_ms - 60_000)]

    async def ensure_groups(self, nodes: Any) -> None:
        self.calls.append(("ensure_groups", list(nodes)))

    async def join(self, consumer: str, nodes: Any) -> None:
        self.calls.append(("join", consumer, list(nodes)))

    async def cancelled_since(self, after_ms: int) -> list[tuple[str, int]]:
        self.calls.append(("cancelled_since", after_ms))
        return self.cancelled


async def test_joining_creates_and_joins_the_groups_and_learns_the_cancelled_runs() -> None:
    """Before the first read: the groups of every node exist and this consumer is in them,
    and every run cancelled within the keep bound is known (its queued states are not
    run). Bugs: nodes or consumer None or left out, the cancelled runs not asked from 0,
    taken with a wrong clock (`/ 1000`: nothing forgotten; `* 1001`: 20 days ahead,
    everything forgotten)."""
    broker = JoiningBroker()
    worker = make_worker(broker)
    worker._settle_lanes = []  # no connections to open here
    assert await worker._join() is True
    assert broker.calls == [
        ("ensure_groups", ["Noop"]),
        ("join", "c", ["Noop"]),
        ("cancelled_since", 0),
    ]
    assert worker.cancelled.ids == {"new"}


# -- the reader's rounds (its use of runtime/prefetch.py) ------------------------------------
class ScriptedBroker(StubBroker):
    """Replies to the reads in order (then nothing); stops the worker after `reads`."""

    def __init__(self, replies: list[list[Any]], reads: int) -> None:
        super().__init__(reads)
        self.replies = replies

    async def read(self, *args: Any) -> list[Any]:
        await super().read(*args)
        return self.replies.pop(0) if self.replies else []


async def test_the_reader_reads_fast_and_slow_apart_and_blocks_only_after_a_dry_round() -> None:
    """A fast and a slow node, 30 of 32 executors busy: each round is two reads without
    BLOCK (the fast node's share, the slow node's free executors); a round that got
    nothing is followed by one read over both with BLOCK; the next after entries came is
    two again, the queued entry now counted. Bugs: the first round taken as dry, `dry`
    not passed (or None: never dry), `not got` inverted, `got` reset by a stream with an
    empty list, BLOCK on every read, the executions or the queue left out of the plan,
    entries accepted for no node."""
    broker = ScriptedBroker([[], [], [("Noop", [(b"1-0", {b"name": b"a"})]), ("Noop2", [])]], 5)
    worker = make_worker(broker, [Noop, Noop2], block_ms=250)
    worker.stats.nodes["Noop"].executed, worker.stats.nodes["Noop"].exec_seconds_sum = 1000, 5e-3
    worker.stats.nodes["Noop2"].executed, worker.stats.nodes["Noop2"].exec_seconds_sum = 10, 20.0
    worker.executing = 30
    await asyncio.wait_for(worker._reader(), 5)
    reads = [(list(nodes), count, block) for _, nodes, count, block, _ in broker.reads]
    assert reads == [
        (["Noop"], 50, None),
        (["Noop2"], 2, None),
        (["Noop", "Noop2"], 2, 250),  # dry: one blocking read
        (["Noop"], 50, None),
        (["Noop2"], 1, None),  # 32 - 30 running - 1 queued
    ]
    assert worker.inflight == 1 and len(worker._queue) == 1
    assert set(worker._held["Noop"]) == {b"1-0"}


async def test_in_an_outage_at_the_stop_every_upkeep_loop_but_the_heartbeat_quits_first() -> None:
    """Stopping while Redis is unreachable: the promoter, the reclaimer and the cancelled
    runs' watch have nothing to finish and give up at once; the heartbeat retries to the
    deadline (it keeps the claims of what still runs in the grace period). Bugs: the
    heartbeat among them (`upkeep[:3]`), the watch left out (`upkeep[4:]`: the stop then
    waits 5 s for it)."""
    worker = make_worker(StubBroker())
    upkeep = worker._start_upkeep()
    try:
        quit_first = worker._retry._quit_first or set()
        assert {t.get_name() for t in quit_first} == {
            "exo-promoter",
            "exo-reclaimer",
            "exo-cancelled",
        }
        assert [t.get_name() for t in upkeep] == [
            "exo-promoter",
            "exo-reclaimer",
            "exo-heartbeat",
            "exo-cancelled",
        ]
    finally:
        for task in upkeep:
            task.cancel()
        await asyncio.gather(*upkeep, return_exceptions=True)


class LeavingBroker(StubBroker):
    def __init__(self) -> None:
        super().__init__()
        self.retired: list[tuple[str, list[str]]] = []

    async def retire(self, consumer: str, nodes: list[str]) -> int:
        self.retired.append((consumer, list(nodes)))
        return 0


async def _shut_down(
    monkeypatch: pytest.MonkeyPatch, settler_error: BaseException | None, outage: bool
) -> tuple[LeavingBroker, list[float | None], asyncio.Task[None]]:
    """_shut_down with an upkeep loop stuck (in an outage, say): the bound it was given
    (that wait itself shortened to 10 ms) and that loop's task."""
    broker = LeavingBroker()
    worker = make_worker(broker)
    if outage:
        worker._retry.outage.since = 1.0
    bounds: list[float | None] = []
    real_wait = asyncio.wait

    async def wait(tasks: Any, timeout: float | None = None) -> Any:
        # asyncio is one module: cancel_and_wait's re-cancel waits come here too.
        bounds.append(timeout)
        return await real_wait(tasks, timeout=0.01 if timeout == 5 else timeout)

    async def settle() -> None:
        if settler_error is not None:
            raise settler_error

    cancelled, cleaned_up = asyncio.Event(), asyncio.Event()

    async def stuck_loop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await cleaned_up.wait()  # a loop taking a moment to end once cancelled
            raise

    settler = asyncio.create_task(settle())
    stuck = asyncio.create_task(stuck_loop())
    monkeypatch.setattr(worker_module.asyncio, "wait", wait)
    shut_down = asyncio.create_task(worker._shut_down(settler, [stuck]))
    await asyncio.wait_for(cancelled.wait(), 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not shut_down.done(), "the stop must wait for the cancelled loop to end"
    cleaned_up.set()
    await asyncio.wait_for(shut_down, 5)
    return broker, bounds, stuck


async def test_the_stop_cancels_a_stuck_upkeep_loop_after_5_s_and_leaves_the_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the drain, the upkeep loops get 5 s to end on their own; one still stuck is
    cancelled and awaited (its cancellation not raised); then the worker leaves its
    groups. Bugs: no bound or another, the stuck loop not awaited or its CancelledError
    raised (`return_exceptions` False or left out)."""
    broker, bounds, stuck = await _shut_down(monkeypatch, None, outage=False)
    assert bounds[0] == 5 and set(bounds[1:]) == {RECANCEL_S}
    assert stuck.done() and stuck.cancelled()
    assert broker.retired == [("c", ["Noop"])]


@pytest.mark.parametrize(("abandoned", "outage"), [(True, False), (False, True)])
async def test_a_worker_stopping_with_redis_unreachable_does_not_try_to_leave_its_groups(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    abandoned: bool,
    outage: bool,
) -> None:
    """The settler gave up on Redis (ShutdownAbandoned) or an outage is on: leaving the
    groups would be one more failing call; it is said instead. Bugs: `abandoned` never
    set (None or False), `and` for `or`."""
    error = ShutdownAbandoned("stopping, Redis unreachable") if abandoned else None
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    broker, _, _ = await _shut_down(monkeypatch, error, outage)
    assert broker.retired == []
    assert "could not leave the consumer groups: Redis unreachable" in {
        r.getMessage() for r in caplog.records
    }


def _slow_worker(broker: StubBroker, seconds: float) -> Any:
    """4 executors, all running states of a node whose executions take `seconds` alike
    (no headroom: a watched node, runtime/prefetch.py's `due`)."""
    worker = make_worker(broker, concurrency=4, batch_size=10)
    worker.stats.nodes["Noop"].executed = 10
    worker.stats.nodes["Noop"].exec_seconds_sum = 10 * seconds
    worker.prefetch.plan(worker.stats.nodes, worker.holdings.free(), 4, 0)  # learn it
    assert worker.prefetch.watched == {"Noop"}
    worker.executing = 4
    return worker


async def test_states_about_to_end_are_replaced_before_they_do() -> None:
    """All 4 executors run 1 s states that end within the lead: they count as ended, and
    their 4 replacements are read now. Bugs: the running states not asked about
    (`and False`), added to the executing instead of taken off, any argument of `due`
    None or left out."""
    broker = StubBroker(reads=1)
    worker = _slow_worker(broker, 1.0)
    now = time.perf_counter()
    worker._running.update({i: ("Noop", now - 0.999) for i in range(4)})
    await asyncio.wait_for(worker._reader(), 5)
    assert [(list(nodes), count) for _, nodes, count, _, _ in broker.reads] == [(["Noop"], 4)]


async def test_the_reader_wakes_when_the_next_running_state_is_due() -> None:
    """Every executor busy with 50 ms states just started: nothing to read now, so the
    reader waits until the first is due (not for a settle, which would come a read round
    trip late), then reads its replacements. Bugs: the wait unbounded (`pause` None or
    the timeout left out), `wake + clock()`, the timeout raised (`suppress(None)`)."""
    broker = StubBroker(reads=1)
    worker = _slow_worker(broker, 0.05)
    now = time.perf_counter()
    worker._running.update({i: ("Noop", now) for i in range(4)})
    await asyncio.wait_for(worker._reader(), 5)  # no settle ever sets the room event
    assert [(list(nodes), count) for _, nodes, count, _, _ in broker.reads] == [(["Noop"], 4)]
