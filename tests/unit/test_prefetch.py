"""The read-ahead rule (exospherehost.runtime.prefetch): full batches for short
executions, little more than the free executors for long ones, per node."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from exospherehost import Runtime
from exospherehost.node import BaseNode
from exospherehost.runtime.prefetch import HORIZON_S, LEAD_S, Prefetch


@dataclass
class C:
    executed: int = 0
    exec_seconds_sum: float = 0.0

    def ran(self, n: int, seconds: float) -> C:
        self.executed += n
        self.exec_seconds_sum += n * seconds
        return self


def _pf(
    nodes: list[str], concurrency: int = 32, batch: int = 100, fixed: int | None = None
) -> Prefetch:
    return Prefetch(nodes, concurrency, batch, Prefetch.window(concurrency, batch, fixed), fixed)


def test_the_window_is_todays_unless_fixed() -> None:
    assert Prefetch.window(32, 100, None) == 432
    assert Prefetch.window(32, 100, 0) == 32
    assert Prefetch.window(8, 100, 5) == 13


def test_short_executions_read_full_batches_as_before() -> None:
    """No-op nodes (microseconds): the whole window, COUNT = min(batch, room) / streams,
    and no read below half a batch of room (the reader's rule before this module)."""
    pf = _pf(["A", "B", "C"])
    stats = {n: C().ran(1000, 10e-6) for n in "ABC"}
    assert pf.plan(stats, 432, 0, 0) == [(["A", "B", "C"], 33)]
    assert pf.hold("A") == 432
    assert pf.plan(stats, 52, 32, 300) == [(["A", "B", "C"], 17)]
    assert pf.plan(stats, 50, 32, 300) == []
    one = _pf(["N"])
    assert one.plan({"N": C().ran(50, 5e-6)}, 432, 0, 0) == [(["N"], 100)]


def test_long_executions_hold_little_more_than_the_executors() -> None:
    pf = _pf(["Slow"])
    stats = {"Slow": C().ran(10, 1.0)}
    # Nothing running: one read for every executor, not the 100 a batch would take.
    assert pf.plan(stats, 432, 0, 0) == [(["Slow"], 32)]
    assert pf.headroom("Slow") == 0 and pf.hold("Slow") == 32
    # All 32 running: nothing more until one finishes.
    assert pf.plan(stats, 400, 32, 0) == []
    # Three finished (their settle on its way, still in the window): three more.
    assert pf.plan(stats, 400, 29, 0) == [(["Slow"], 3)]
    # ... unless the window is full.
    assert pf.plan(stats, 0, 29, 0) == []


def test_headroom_is_what_the_executors_start_during_a_refill() -> None:
    pf = _pf(["N"], concurrency=1000, batch=100)
    pf.observe("N", 100, 100 * 0.01)  # 10 ms
    assert pf.headroom("N") == int(1000 * HORIZON_S / 0.01) == 200
    assert pf.hold("N") == 1200
    pf2 = _pf(["N"], concurrency=32)
    pf2.observe("N", 10, 10 * 0.1)  # 100 ms: no headroom at 32 executors
    assert pf2.hold("N") == 32
    # Medium executions read at least half their headroom at a time.
    pf3 = _pf(["N"], concurrency=32)
    pf3.observe("N", 10, 10 * 0.001)  # 1 ms: headroom 64
    assert pf3.hold("N") == 96
    assert pf3.plan({}, 362, 32, 38) == []  # 26 wanted < 32
    assert pf3.plan({}, 372, 32, 28) == [(["N"], 36)]


def test_an_unseen_node_reads_a_quarter_more_than_the_executors() -> None:
    """Before its first execution finishes a node's speed is unknown: a fast one is
    learnt at once, a slow one takes at most this much extra."""
    pf = _pf(["N"], concurrency=8)
    assert pf.estimate("N") is None
    assert pf.hold("N") == 8 + 2
    assert pf.plan({"N": C()}, 408, 0, 0) == [(["N"], 10)]
    pf.observe("N", 8, 8.0)
    assert pf.hold("N") == 8


def test_the_average_follows_executions_weighted_by_count() -> None:
    pf = _pf(["N"])
    counters = C().ran(1, 1.0)
    pf.observe("N", counters.executed, counters.exec_seconds_sum)
    assert pf.estimate("N") == pytest.approx(1.0)
    pf.observe("N", counters.executed, counters.exec_seconds_sum)  # nothing new: unchanged
    assert pf.estimate("N") == pytest.approx(1.0)
    counters.ran(1, 0.0)
    pf.observe("N", counters.executed, counters.exec_seconds_sum)
    assert pf.estimate("N") == pytest.approx(0.8)
    counters.ran(100, 0.001)  # a hundred short ones: the long past is forgotten
    pf.observe("N", counters.executed, counters.exec_seconds_sum)
    assert pf.estimate("N") == pytest.approx(0.001, rel=1e-6)
    assert pf.headroom("N") in (63, 64)  # 32 x 2 ms / ~1 ms


def test_fast_and_slow_nodes_in_one_worker_read_apart() -> None:
    """One COUNT applies to every stream of an XREADGROUP: the fast node gets its full
    share in one call, the slow one only what its executors lack in another (both
    without BLOCK); when a round returns nothing, one blocking call over both."""
    pf = _pf(["Fast", "Slow"])
    stats = {"Fast": C().ran(1000, 5e-6), "Slow": C().ran(10, 2.0)}
    reads = pf.plan(stats, 304, 30, 0)
    assert reads == [(["Fast"], 50), (["Slow"], 2)]
    assert pf.plan(stats, 304, 30, 0, dry=True) == [(["Fast", "Slow"], 2)]
    # Every executor busy: the fast node alone, as a single (blocking) read.
    assert pf.plan(stats, 300, 32, 0) == [(["Fast"], 100)]


def test_two_slow_nodes_share_the_executors() -> None:
    """What is queued (of any node) stays below the free executors (+ headroom): two slow
    nodes with a backlog each do not hold 2 x workers."""
    pf = _pf(["S1", "S2"])
    stats = {"S1": C().ran(5, 1.0), "S2": C().ran(5, 1.0)}
    # 32 running (of S1, say), nothing queued: S2 waits too.
    assert pf.plan(stats, 400, 32, 0) == []
    # 4 executors idle: 4 more in all, COUNT 2 on each of the two streams.
    assert pf.plan(stats, 404, 28, 0) == [(["S1", "S2"], 2)]
    assert pf.plan(stats, 404, 28, 2) == [(["S1", "S2"], 1)]


def test_a_slow_state_about_to_end_is_due_and_its_replacement_read() -> None:
    """A 100 ms state counts as finished from LEAD_S before its expected end (its
    replacement is read then, not a round trip after it ended), until LEAD_S after it
    (later it is a long one: reading for it would hoard); unseen nodes are not guessed."""
    pf = _pf(["N", "New"])
    pf.observe("N", 10, 10 * 0.1)
    at = 0.1 - LEAD_S
    running = [("N", 0.0), ("N", 0.05), ("New", 0.0)]
    assert pf.due(running, at - 0.001) == (0, pytest.approx(at))
    assert pf.due(running, at + 0.001) == (1, pytest.approx(0.05 + at))
    assert pf.due(running, 0.1 + LEAD_S - 0.001)[0] == 1
    assert pf.due(running, 0.1 + LEAD_S + 0.001) == (0, pytest.approx(0.05 + at))
    assert pf.due([("New", 0.0)], 5.0) == (0, None)
    # What the worker does with it: 32 running 100 ms states, all due: 32 more read.
    one = _pf(["N"])
    stats = {"N": C(10, 1.0)}
    assert one.plan(stats, 400, 32, 0) == []
    assert one.watched == {"N"}  # its running states are watched
    ending, _ = one.due([("N", 0.0)] * 32, at + 0.001)
    assert one.plan(stats, 400, 32 - ending, 0) == [(["N"], 32)]
    fast = _pf(["F"])
    fast.plan({"F": C(1000, 1e-3)}, 400, 0, 0)
    assert fast.watched == set()  # a node read in full batches is not watched


def test_only_slow_nodes_of_alike_executions_are_watched() -> None:
    """A node of 10 ms and 1 s states (mean ~0.2 s) is not predicted; nor a 10 ms node,
    whose headroom refills it already; nor anything under a fixed prefetch."""
    mixed = _pf(["M"])
    c = C()
    for seconds in [0.01, 0.01, 1.0, 0.01, 0.01, 1.0, 0.01, 0.01, 0.01, 1.0]:
        mixed.plan({"M": c.ran(1, seconds)}, 400, 32, 0)
    assert not mixed.watch("M") and mixed.watched == set()
    steady = _pf(["S"])
    c = C()
    for seconds in [0.1, 0.102, 0.099, 0.1, 0.101]:
        steady.plan({"S": c.ran(1, seconds)}, 400, 32, 0)
    assert steady.watch("S") and steady.watched == {"S"}
    short = _pf(["T"])
    short.observe("T", 10, 10 * 0.01)
    assert short.headroom("T") > 0 and not short.watch("T")
    fixed = _pf(["N"], fixed=0)
    fixed.observe("N", 10, 10 * 0.1)
    assert not fixed.watch("N")


def test_a_fixed_prefetch_replaces_the_estimates() -> None:
    pf = _pf(["N"], concurrency=4, fixed=0)
    assert pf.window(4, 100, 0) == 4 and pf.hold("N") == 4
    assert pf.plan({"N": C().ran(10, 1e-6)}, 1, 3, 0) == [(["N"], 1)]
    assert pf.plan({"N": C().ran(10, 1e-6)}, 0, 3, 0) == []
    pf = _pf(["N"], concurrency=32, fixed=400)
    assert pf.hold("N") == 432
    assert pf.plan({"N": C().ran(10, 5.0)}, 432, 0, 0) == [(["N"], 100)]


class _Good(BaseNode):
    from pydantic import BaseModel as _B

    class Inputs(_B):
        x: int

    class Outputs(_B):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


@pytest.mark.parametrize("bad", [-1, 1.5, "4", True])
def test_runtime_refuses_a_bad_prefetch(bad: object) -> None:
    with pytest.raises(ValueError, match=f"prefetch must be None .* got {bad!r}"):
        Runtime(namespace="ns", name="r", nodes=[_Good], redis_url="redis://x:1", prefetch=bad)  # type: ignore[arg-type]


def test_runtime_takes_a_prefetch() -> None:
    rt = Runtime(namespace="ns", name="r", nodes=[_Good], redis_url="redis://x:1", prefetch=0)
    assert rt.prefetch == 0
    assert (
        Runtime(namespace="ns", name="r", nodes=[_Good], redis_url="redis://x:1").prefetch is None
    )


def test_the_worker_command_takes_a_prefetch(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from exospherehost.cli.workers import worker

    assert "--prefetch" in CliRunner().invoke(worker, ["--help"]).output
    bad = CliRunner().invoke(worker, ["m:N", "--prefetch", "-1"])
    assert bad.exit_code != 0 and "--prefetch" in bad.output


@pytest.mark.parametrize("room", [432, 200, 100, 60, 52])
@pytest.mark.parametrize("seen", ["", "A", "AB", "ABC"])
def test_no_node_is_read_twice_in_one_call(room: int, seen: str) -> None:
    """A node twice in one XREADGROUP (a slow node whose COUNT equalled the fast share
    joined the fast group's list, then was listed again): W2 with 2 processes stalled in
    every run, states delivered to the worker's pending list but never in a reply, until
    the reclaimer took them 30 s later."""
    pf = _pf(["A", "B", "C"])
    stats = {n: (C().ran(1000, 10e-6) if n in seen else C()) for n in "ABC"}
    for dry in (False, True):
        for nodes, count in pf.plan(stats, room, 0, 0, dry):
            assert len(nodes) == len(set(nodes)), (nodes, count)
            assert count >= 1
