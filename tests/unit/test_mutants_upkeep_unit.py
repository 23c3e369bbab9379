"""Tests written for mutmut's survivors in runtime/upkeep/cancelled.py, upkeep/report.py
and runtime/lanes.py (issue 16). Stubs stand in for Redis: what is pinned is what each
asks of the broker and what it keeps."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from exospherehost.broker.keys import ENVELOPE_FIELD
from exospherehost.broker.streams import CANCELLED_KEEP_MS
from exospherehost.broker.workers import BUCKET_S, RECORD_TTL_S, STOPPED_TTL_S, WorkerBoard
from exospherehost.runtime.resilience import Retrier
from exospherehost.runtime.stats import RuntimeStats
from exospherehost.runtime.upkeep import cancelled as cancelled_module
from exospherehost.runtime.upkeep import report as report_module
from exospherehost.runtime.upkeep.cancelled import REFRESH_S, CancelledRuns
from exospherehost.runtime.upkeep.holdings import Holdings
from exospherehost.runtime.upkeep.prune import Pruner, consumer_idle_bound
from exospherehost.runtime.upkeep.reclaim import Reclaimer
from exospherehost.runtime.upkeep.report import REPORT_S, Reporter
from exospherehost.runtime.upkeep.retire import retire
from exospherehost.runtime.upkeep.rules import carried_deliveries


# -- the dashboards' reporter (runtime/upkeep/report.py) ------------------------------------
class StubBoard:
    """Records each publish; raises the queued errors first."""

    def __init__(self, *errors: BaseException) -> None:
        self.calls: list[dict[str, Any]] = []
        self.errors = list(errors)

    async def publish(
        self,
        consumer: str,
        record: dict[str, Any],
        now_ms: int,
        counts: dict[str, tuple[int, int]],
        bucket_s: int,
        ttl_s: int = RECORD_TTL_S,
    ) -> None:
        if self.errors:
            raise self.errors.pop(0)
        call = {"consumer": consumer, "record": record, "now_ms": now_ms, "counts": counts}
        self.calls.append({**call, "bucket_s": bucket_s, "ttl_s": ttl_s})


def _reporter(board: StubBoard, interval_s: int = REPORT_S) -> tuple[Reporter, RuntimeStats]:
    stats = RuntimeStats(["A", "B"])
    live = {"inflight": 3, "executing": 2}
    reporter = Reporter(
        cast(WorkerBoard, board),
        "rt:h:1:abc",
        "rt",
        stats,
        lambda: live,
        {"concurrency": 7},
        interval_s=interval_s,
    )
    return reporter, stats


def test_a_worker_record_says_who_it_is_and_what_it_did() -> None:
    """The record a dashboard reads (its keys are the wire format, JSON): who (runtime,
    host, pid, nodes, started in epoch ms), the static and live figures, and per node
    done = succeeded + pruned. Bugs: any key renamed, `started_ms` None, in seconds
    (`/ 1000`) or off (`* 1001`), `succeeded - pruned`."""
    before = int(time.time() * 1000)
    reporter, stats = _reporter(StubBoard())
    after = int(time.time() * 1000)
    stats.nodes["A"].succeeded, stats.nodes["A"].pruned, stats.nodes["A"].failed = 5, 2, 1
    stats.nodes["B"].dead_lettered = 4
    record = reporter.record("serving", 1234)
    assert before <= record["started_ms"] <= after
    assert record == {
        "runtime": "rt",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "nodes": ["A", "B"],
        "started_ms": record["started_ms"],
        "concurrency": 7,
        "inflight": 3,
        "executing": 2,
        "state": "serving",
        "written_ms": 1234,
        "processed": 7,
        "failed": 1,
        "per_node": {
            "A": {"done": 7, "failed": 1, "dead": 0},
            "B": {"done": 0, "failed": 0, "dead": 4},
        },
        "interval_s": REPORT_S,
    }


async def test_a_report_adds_what_was_done_since_the_last_to_the_interval_that_ended() -> None:
    """Each write adds the counts since the previous one (done = succeeded + pruned) to
    the bucket of the interval that just ended; a failed write keeps them for the next;
    the last one, stopped, lives STOPPED_TTL_S."""
    board = StubBoard(RedisConnectionError("down"))
    reporter, stats = _reporter(board)
    a = stats.nodes["A"]
    a.succeeded, a.pruned, a.failed = 3, 1, 2
    now = 1_000_000 * BUCKET_S + 5.5  # 5 s into a bucket: the interval [0, 5) just ended
    with pytest.raises(RedisConnectionError):
        await reporter.report(now=now)
    assert reporter.reports == 0
    a.succeeded += 10
    await reporter.report(now=now)
    [first] = board.calls
    assert first["counts"] == {"A": (14, 2), "B": (0, 0)}
    assert first["bucket_s"] == 1_000_000 * BUCKET_S and first["now_ms"] == int(now * 1000)
    assert first["ttl_s"] == RECORD_TTL_S and first["record"]["state"] == "serving"
    assert first["consumer"] == "rt:h:1:abc" and reporter.reports == 1
    assert first["record"]["written_ms"] == int(now * 1000)
    a.pruned += 1
    await reporter.report("stopped", now=now + REPORT_S)  # the interval [5, 10) ended
    second = board.calls[1]
    assert second["counts"] == {"A": (1, 0), "B": (0, 0)}
    assert second["bucket_s"] == 1_000_000 * BUCKET_S
    assert second["ttl_s"] == STOPPED_TTL_S and second["record"]["state"] == "stopped"
    assert (second["consumer"], second["now_ms"]) == ("rt:h:1:abc", int((now + REPORT_S) * 1000))
    await reporter.report(now=now + 2 * REPORT_S)  # [10, 15): the next bucket
    assert board.calls[2]["bucket_s"] == 1_000_000 * BUCKET_S + BUCKET_S
    assert board.calls[2]["counts"] == {"A": (0, 0), "B": (0, 0)}
    # Woken late, 4.2 s into [10, 15): the interval that ended is [5, 10), in the first
    # bucket (counted from the boundary before now, not after it: [13, 18)).
    await reporter.report(now=1_000_000 * BUCKET_S + 14.2)
    assert board.calls[3]["bucket_s"] == 1_000_000 * BUCKET_S
    assert reporter.reports == 4


async def test_the_reporter_says_each_new_error_once_and_waits_for_the_next_boundary(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """run(): a refused write is logged once while it repeats, again after a write that
    went through; an outage not at all (the worker's loops log it); each wait ends just
    past the next interval boundary of the wall clock; it returns when stopped."""
    refused = ResponseError("NOPERM this user has no permissions")
    board = StubBoard(refused, ResponseError(str(refused)), RedisConnectionError("gone"))
    reporter, _ = _reporter(board)
    waits: list[float] = []
    now = [12.25]  # the wall clock, moved on by each wait
    monkeypatch.setattr(report_module, "time", SimpleNamespace(time=lambda: now[0]))
    rounds = 5  # refused, refused again, outage, a write, refused after it

    stop = asyncio.Event()

    async def fake_pause(seconds: float, event: asyncio.Event) -> bool:
        assert event is stop, "the reporter must wait on its stop event"
        waits.append(seconds)
        now[0] += seconds
        if len(waits) == 4:
            board.errors.append(refused)
        return len(waits) >= rounds

    monkeypatch.setattr(report_module, "pause", fake_pause)
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    await asyncio.wait_for(reporter.run(stop), 5)
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"cannot write this worker's record for dashboards: {refused}"] * 2, said
    assert len(board.calls) == 1
    # From 12.25: to 15.01, then every 5 s (each 0.01 past the boundary: a whole interval).
    assert waits == pytest.approx([2.76, 5.0, 5.0, 5.0, 5.0])


async def test_the_stopped_report_is_bounded_and_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last report, marked stopped: given up after its timeout (2 s unless told) when
    Redis hangs, and nothing raised when it is away (a redis-py error or a bare OSError).
    Bugs: another default bound, OSError not suppressed."""

    class Hanging(StubBoard):
        async def publish(self, *args: Any, **kwargs: Any) -> None:
            await asyncio.Event().wait()

    reporter, _ = _reporter(Hanging())
    await asyncio.wait_for(reporter.stopped(timeout_s=0.05), 5)
    board = StubBoard(RedisConnectionError("gone"), OSError("network is unreachable"))
    reporter, _ = _reporter(board)
    await reporter.stopped()
    await reporter.stopped()
    await reporter.stopped()
    bounds: list[float] = []

    async def wait_for(aw: Any, timeout: float) -> Any:
        bounds.append(timeout)
        return await aw

    monkeypatch.setattr(report_module, "asyncio", SimpleNamespace(wait_for=wait_for))
    await reporter.stopped()
    assert bounds == [2.0]
    assert [c["record"]["state"] for c in board.calls] == ["stopped", "stopped"]
    assert board.calls[0]["ttl_s"] == STOPPED_TTL_S


# -- runs cancelled lately (runtime/upkeep/cancelled.py) --------------------------------------
def test_cancelled_runs_are_kept_for_the_keep_bound_then_forgotten() -> None:
    """A worker drops the states of runs cancelled within CANCELLED_KEEP_MS (the settle
    script drops later ones anyway); it asks only for what is newer than the newest seen.
    Bugs: the start bound not in epoch ms or not a week back, a run forgotten at the
    bound or never, the newest not taken (`min`)."""
    before = int(time.time() * 1000)
    runs = CancelledRuns()
    runs.add([], before)  # nothing found, nothing known: fine
    assert before - CANCELLED_KEEP_MS <= runs._after <= int(time.time() * 1000) - CANCELLED_KEEP_MS
    t = before
    runs.add([("r1", t - 10), ("r2", t - 5)], t)
    assert runs.ids == {"r1", "r2"} and runs._after == t - 5
    runs.add([("r0", t - 20)], t)  # an older one found late: the bound stays the newest
    assert runs._after == t - 5 and runs.ids == {"r0", "r1", "r2"}
    runs.add([], t - 10 + CANCELLED_KEEP_MS)  # r0 past the bound, r1 exactly at it
    assert runs.ids == {"r1", "r2"}
    runs.add([("r3", t + 1)], t - 5 + CANCELLED_KEEP_MS + 1)
    assert runs.ids == {"r3"} and runs._after == t + 1
    assert set(runs._when) == {"r3"}


async def test_the_watch_asks_from_just_before_the_newest_and_refreshes_each_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each refresh asks for runs cancelled after the newest seen minus 1 ms (two cancels
    in one millisecond), every REFRESH_S, until the worker stops."""
    asked: list[int] = []
    waits: list[float] = []
    retry = Retrier()
    recent = int(time.time() * 1000) - 1000  # cancelled a second ago

    class Broker:
        async def cancelled_since(self, after_ms: int) -> list[tuple[str, int]]:
            asked.append(after_ms)
            # With one cancelled past the keep bound (a week and a second ago).
            old = ("old", recent - CANCELLED_KEEP_MS)
            return [old, ("r", recent)] if len(asked) == 1 else []

    async def fake_pause(seconds: float, stop: asyncio.Event) -> bool:
        waits.append(seconds)
        if len(waits) == 2:
            retry.stop(time.monotonic())
        return stop.is_set()

    monkeypatch.setattr(cancelled_module, "pause", fake_pause)
    runs = CancelledRuns()
    start = runs._after
    await asyncio.wait_for(runs.watch(cast(Any, Broker()), retry), 5)
    assert asked == [start - 1, recent - 1]
    # Taken in with the wall clock's now in ms: the recent one kept, the old forgotten.
    assert runs.ids == {"r"}
    assert waits == [REFRESH_S, REFRESH_S] and REFRESH_S == 1.0


# -- rules, holdings, retire (runtime/upkeep/) ----------------------------------------------
def test_an_envelope_that_does_not_decode_carries_no_deliveries() -> None:
    """Deliveries carried over from releases come from a decodable envelope only; one
    that does not decode carries 0 (its settle dead-letters it for what it is). Bug: 1
    (an undecodable entry reaches the poison limit a delivery early)."""
    assert carried_deliveries(b"1-0", {ENVELOPE_FIELD.encode(): b"\xc1 not msgpack"}) == 0
    assert carried_deliveries(b"1-0", {b"name": b"plain"}) == 0


def test_what_is_unsettled_is_everything_held_over_the_nodes() -> None:
    holdings = Holdings(["A", "B"], 10)
    assert holdings.unsettled() == 0
    holdings.held["A"].update({b"1-0": 0.0, b"2-0": 0.0})
    holdings.held["B"][b"3-0"] = 0.0
    assert holdings.unsettled() == 3


class RetiringBroker:
    def __init__(self, kept: int = 0, error: BaseException | None = None) -> None:
        self.kept, self.error = kept, error
        self.calls: list[tuple[str, list[str]]] = []

    async def retire(self, consumer: str, nodes: list[str]) -> int:
        self.calls.append((consumer, nodes))
        if self.error is not None:
            raise self.error
        return self.kept


async def test_retire_leaves_the_groups_once_and_says_what_it_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clean stop leaves the groups of its nodes (one attempt); streams still holding
    entries of the consumer are said; an outage is said, not raised; any other error is
    raised (a bug or a refused call)."""
    caplog.set_level(logging.WARNING, "exospherehost.runtime.worker")
    clean = RetiringBroker()
    await retire(cast(Any, clean), "c", ["A", "B"])
    assert clean.calls == [("c", ["A", "B"])] and not caplog.records
    await retire(cast(Any, RetiringBroker(kept=2)), "c", ["A", "B"])
    assert [r.getMessage() for r in caplog.records] == [
        "2 stream(s) still hold unsettled entries of c"
    ]
    caplog.clear()
    down = RetiringBroker(error=RedisConnectionError("gone"))
    await retire(cast(Any, down), "c", ["A"])
    assert [r.getMessage() for r in caplog.records] == [
        "could not leave the consumer groups (gone)"
    ]
    assert len(down.calls) == 1
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await retire(cast(Any, RetiringBroker(error=ResponseError("WRONGTYPE no"))), "c", ["A"])


def test_a_dead_consumers_idle_bound_is_ten_visibility_timeouts_at_least_five_minutes() -> None:
    """Bugs: `10 / visibility`, 11 timeouts, a floor of 300_001 or 1_001 ms."""
    assert consumer_idle_bound(None, 40_000) == 400_000
    assert consumer_idle_bound(None, 1_000) == 300_000
    assert consumer_idle_bound(500, 1_000) == 1_000  # the floor: no busy pruning loop
    assert consumer_idle_bound(50_000, 1_000) == 50_000


def test_a_fresh_pruner_and_reclaimers_suspect_bound() -> None:
    """A Pruner starts with nothing due and none removed; a reclaimed suspect's execution
    is bounded by 10 visibility timeouts unless told. Bugs: `removed` 1, the bound
    `visibility * 100` or `/ 101`, the given bound ignored or the default never used."""
    pruner = Pruner(cast(Any, None), "c", 1_000, Retrier())
    assert pruner.due == {} and pruner.removed == 0

    def reclaimer(suspect_timeout_s: float | None) -> Reclaimer:
        holdings = Holdings(["A"], 10)
        return Reclaimer(
            cast(Any, None), "c", ["A"], holdings, lambda *a, **k: None, Retrier(), pruner,
            visibility_ms=30_000, max_deliveries=5, suspect_timeout_s=suspect_timeout_s,
        )  # fmt: skip

    assert reclaimer(None).suspect_timeout_s == 300.0
    assert reclaimer(7.0).suspect_timeout_s == 7.0
