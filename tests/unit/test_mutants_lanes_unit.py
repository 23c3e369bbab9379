"""Tests written for mutmut's survivors in runtime/lanes.py (issue 16): the Runtime's
Workers, one per lane served. A stub broker answers the lane count and fake Workers
stand in for the real ones: what is pinned is which Workers start, with what, and how
the process stops."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import pytest

from benchmarks.nodes import Noop
from exospherehost.broker.keys import Keys
from exospherehost.broker.streams import Broker
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.lanes import LANE_CHECK_S, LaneWorkers
from exospherehost.runtime.prefetch import Prefetch
from exospherehost.runtime.resilience import Retrier
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.stats import RuntimeStats


class LaneBroker:
    """A lane's broker: its keys."""

    def __init__(self, lane: int) -> None:
        self.keys = Keys("ns").on_lane(lane)


class StubBroker:
    """Answers `lanes_to_serve` from `answers` (the last one repeated; an exception is
    raised); `asked` counts the calls."""

    def __init__(self, *answers: list[int] | BaseException) -> None:
        self.keys = Keys("ns")
        self.answers = list(answers)
        self.asked: list[list[str]] = []
        self.changed = asyncio.Event()  # set at each answer after the first

    def on_lane(self, lane: int) -> LaneBroker:
        return LaneBroker(lane)

    async def lanes_to_serve(self, nodes: list[str]) -> list[int]:
        self.asked.append(list(nodes))
        if len(self.asked) > 1:
            self.changed.set()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeWorker:
    """Records how it was made; `run` serves until stopped (or fails with `fail`)."""

    made: list[FakeWorker]

    def __init__(self, broker: LaneBroker, specs: Any, consumer: str, graphs: Any, cfg: Any,
                 **kw: Any) -> None:  # fmt: skip
        self.broker, self.specs, self.consumer, self.graphs, self.cfg = (
            broker, specs, consumer, graphs, cfg,
        )  # fmt: skip
        self.kw = kw
        self.ready: asyncio.Event = kw["ready"]
        self.retry: Retrier = kw["retry"]
        self.stats: RuntimeStats | None = None
        self.settled, self.inflight, self.executing, self.max_inflight = 0, 0, 0, 0
        self.stopped = 0
        self.fail: BaseException | None = None
        self.failing = asyncio.Event()
        self.on_stop: BaseException | None = None  # raised when it ends after a stop
        self.release = asyncio.Event()  # after a stop, run() ends once this is set
        self.release.set()
        self.finished = False
        FakeWorker.made.append(self)

    def stop(self) -> None:
        self.stopped += 1
        self.retry.stop(0.0)

    async def run(self) -> None:
        self.ready.set()
        stop = asyncio.create_task(self.retry.stopping.wait())
        fail = asyncio.create_task(self.failing.wait())
        await asyncio.wait([stop, fail], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        fail.cancel()
        try:
            if self.fail is not None and self.failing.is_set():
                raise self.fail
            await self.release.wait()
            if self.on_stop is not None:
                raise self.on_stop
        finally:
            self.finished = True


@pytest.fixture(autouse=True)
def _fresh() -> None:
    FakeWorker.made = []


def _lanes(broker: StubBroker, concurrency: int = 32, **kw: Any) -> LaneWorkers:
    specs = [NodeSpec.of(Noop)]
    cfg = SettleConfig(keys=broker.keys, graphs={})
    return LaneWorkers(
        cast(Broker, broker),
        specs,
        "c",
        GRAPHS,
        cfg,
        concurrency=concurrency,
        factory=cast(Any, FakeWorker),
        **kw,
    )


async def _until(what: str, check: Any, timeout: float = 5.0) -> None:
    """Poll `check` (the lane watch runs on real timers, check_s apart)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never within {timeout}s: {what}"
        await asyncio.sleep(0.001)


async def _settle_down() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


GRAPHS = cast(GraphCache, object())  # passed through to every Worker as it is


def test_defaults_and_the_window_before_any_lane_is_known() -> None:
    """Before its Workers exist (a dashboard may ask), the window is one lane's:
    Prefetch.window of the concurrency, the batch size (100 unless given) and the
    prefetch; the lane check every LANE_CHECK_S (5 s) unless told."""
    assert LANE_CHECK_S == 5.0
    lw = _lanes(StubBroker([0]))
    assert lw.max_inflight == Prefetch.window(32, 100, None) == 432
    assert lw.check_s == LANE_CHECK_S and lw.concurrency == 32
    assert lw.stats.nodes.keys() == {"Noop"} and lw.lanes == []
    assert _lanes(StubBroker([0]), batch_size=10, prefetch=3).max_inflight == 35
    assert _lanes(StubBroker([0]), check_s=0.5).check_s == 0.5
    assert not lw.ready.is_set() and isinstance(lw.retry, Retrier)
    own, ready = Retrier(), asyncio.Event()
    assert _lanes(StubBroker([0]), retry=own).retry is own
    assert _lanes(StubBroker([0]), ready=ready).ready is ready
    cfg = SettleConfig(keys=Keys("ns"), graphs={})
    bare = LaneWorkers(cast(Broker, StubBroker([0])), [NodeSpec.of(Noop)], "c", GRAPHS, cfg)
    assert bare.concurrency == 32 and bare.graphs is GRAPHS


async def test_each_lane_gets_a_worker_sharing_the_executors_stats_and_retrier() -> None:
    """Three lanes, 32 executors: ceil(32 / 3) = 11 each; every Worker on its lane's
    broker and keys, the process's consumer, one stats object and one retrier, the
    Runtime's other options passed on; `ready` once all of them joined; the totals add
    the Workers up."""
    broker = StubBroker([0, 1, 2])
    retry = Retrier()
    lw = _lanes(broker, retry=retry, check_s=3600, batch_size=7, grace_s=1.5)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    assert broker.asked == [["Noop"]]
    workers = FakeWorker.made
    assert lw.lanes == [0, 1, 2] and [w.broker.keys.lane for w in workers] == [0, 1, 2]
    for w in workers:
        assert (w.consumer, w.kw["concurrency"], w.kw["batch_size"], w.kw["grace_s"]) == (
            "c", 11, 7, 1.5,
        )  # fmt: skip
        assert w.retry is retry and w.stats is lw.stats and w.graphs is GRAPHS
        assert w.cfg.keys is w.broker.keys  # settles planned with the lane's keys
        assert [s.name for s in w.specs] == ["Noop"]
    for i, w in enumerate(workers):
        w.settled, w.inflight, w.executing, w.max_inflight = i + 1, 10 * i, 100 * i, 7
    assert (lw.settled, lw.inflight, lw.executing, lw.max_inflight) == (6, 30, 300, 21)
    lw.stop()
    await asyncio.wait_for(task, 5)
    assert [w.stopped for w in workers] == [1, 1, 1]


async def test_the_lane_tasks_and_the_watch_are_named_in_task_dumps() -> None:
    lw = _lanes(StubBroker([0, 3]), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert {"exo-lane-0", "exo-lane-3", "exo-lanes"} <= names, names
    lw.stop()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize(("lanes", "each"), [([0], 32), ([0, 1], 16), (list(range(64)), 1)])
async def test_the_executors_are_shared_out_at_least_one_each(lanes: list[int], each: int) -> None:
    lw = _lanes(StubBroker(lanes), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    assert {w.kw["concurrency"] for w in FakeWorker.made} == {each}
    assert len(FakeWorker.made) == len(lanes)
    lw.stop()
    await asyncio.wait_for(task, 5)


async def test_lanes_that_come_to_be_served_get_a_worker_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watch reads the lanes every check_s and starts a Worker for each new one, not
    again for one served; a failed read is said once while it repeats."""
    caplog.set_level(logging.INFO, "exospherehost.runtime.worker")
    down = ConnectionError("no lanes now")
    broker = StubBroker([0], down, down, [0, 2], [0, 2])
    lw = _lanes(broker, check_s=0.001)
    task = asyncio.create_task(lw.run())
    await _until("lane 2 served", lambda: lw.lanes == [0, 2])
    await _until("checked again after", lambda: len(broker.asked) >= 6)
    assert [w.broker.keys.lane for w in FakeWorker.made] == [0, 2]
    said = [r.getMessage() for r in caplog.records]
    assert said.count("cannot read the lanes of ns: no lanes now") == 1, said
    assert "serving 2 lanes of namespace ns: exo:{ns}, exo:{ns/2}" in said
    lw.stop()
    await asyncio.wait_for(task, 5)


async def test_one_lane_says_nothing_about_lanes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "exospherehost.runtime.worker")
    lw = _lanes(StubBroker([0]), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    lw.stop()
    await asyncio.wait_for(task, 5)
    assert not [r for r in caplog.records if "lanes" in r.getMessage()]


async def test_a_failing_lane_stops_them_all_and_raises_its_error() -> None:
    """One lane's Worker failing while serving stops every other lane and raises that
    error from run(), as a one-lane Runtime's failing Worker does."""
    lw = _lanes(StubBroker([0, 1, 2]), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    bad = FakeWorker.made[1]
    bad.fail = RuntimeError("lane 1 broke")
    bad.failing.set()
    with pytest.raises(RuntimeError, match="lane 1 broke"):
        await asyncio.wait_for(task, 5)
    assert all(w.stopped >= 1 for w in FakeWorker.made)
    assert lw.retry.stopping.is_set()


async def test_a_failing_lane_waits_for_the_others_and_raises_its_own_error() -> None:
    """The others are stopped and awaited before run() raises (nothing left running);
    one of them failing on its way out does not replace the first error."""
    lw = _lanes(StubBroker([0, 1, 2]), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    first, bad, slow = FakeWorker.made
    first.on_stop = RuntimeError("lane 0 failing on its way out")
    slow.release.clear()
    bad.fail = RuntimeError("lane 1 broke")
    bad.failing.set()
    await _settle_down()
    assert not task.done() and not slow.finished, "run() must wait for every lane"
    slow.release.set()
    with pytest.raises(RuntimeError, match="lane 1 broke"):
        await asyncio.wait_for(task, 5)
    assert all(w.finished for w in FakeWorker.made)


async def test_run_ends_with_its_watch_cancelled_mid_call() -> None:
    """At the stop the lane watch may be in a call (Redis slow): it is cancelled and
    awaited; run() returns normally, with no task left behind."""
    broker = StubBroker([0])
    hang, cleaned_up = asyncio.Event(), asyncio.Event()
    answer = broker.lanes_to_serve

    async def slow_second(nodes: list[str]) -> list[int]:
        if broker.asked:
            broker.asked.append(list(nodes))
            try:
                await hang.wait()  # never set
            except asyncio.CancelledError:
                await cleaned_up.wait()  # a call that takes a moment to give up
                raise
        return await answer(nodes)

    broker.lanes_to_serve = slow_second  # type: ignore[method-assign]
    lw = _lanes(broker, check_s=0.001)
    task = asyncio.create_task(lw.run())
    await _until("the watch is in its call", lambda: len(broker.asked) >= 2)
    [watch] = [t for t in asyncio.all_tasks() if t.get_name() == "exo-lanes"]
    lw.stop()
    await _settle_down()
    assert not task.done(), "run() must wait for its watch to end"
    cleaned_up.set()
    await asyncio.wait_for(task, 5)  # returns, does not raise CancelledError
    assert watch.done() and watch.cancelled()


async def test_a_lane_ending_while_serving_stops_the_others() -> None:
    """A Worker that returns while the process is not stopping (it gave up) stops the
    others: the Runtime does not go on half-served."""
    lw = _lanes(StubBroker([0, 1]), check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    FakeWorker.made[0].failing.set()  # returns without an error
    await asyncio.wait_for(task, 5)
    assert FakeWorker.made[1].stopped >= 1


async def test_stopped_before_serving() -> None:
    """stop() before any lane is known stops the retrier at once (nothing to finish);
    run() then returns, also when the lane read fails because of the stop."""
    lw = _lanes(StubBroker(ConnectionError("down")), check_s=3600)
    lw.stop()
    assert lw.retry.stopping.is_set()
    # Its deadline is now: the Runtime's start-up calls give up at once.
    assert isinstance(lw.retry.deadline, float) and lw.retry.deadline <= time.monotonic()
    await asyncio.wait_for(lw.run(), 5)
    assert FakeWorker.made == []
    failing = _lanes(StubBroker(ValueError("bad count")), check_s=3600)
    with pytest.raises(ValueError, match="bad count"):
        await asyncio.wait_for(failing.run(), 5)


async def test_a_lane_started_while_stopping_is_stopped_at_once() -> None:
    broker = StubBroker([0], [0, 1])
    lw = _lanes(broker, check_s=3600)
    task = asyncio.create_task(lw.run())
    await asyncio.wait_for(lw.ready.wait(), 5)
    lw.stop()
    late = cast(list[FakeWorker], lw._start([1]))
    assert [w.stopped for w in late] == [1]
    assert lw._start([1]) == []  # already there: not started twice
    await asyncio.wait_for(task, 5)
