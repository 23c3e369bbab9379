"""Tests written for mutmut's survivors in exospherehost/runtime/prefetch.py (issue 16):
each pins a detail of the read-ahead rule the other prefetch tests leave open."""

from __future__ import annotations

import pytest

from exospherehost.runtime.prefetch import Prefetch


class C:
    def __init__(self, executed: int = 0, seconds: float = 0.0) -> None:
        self.executed, self.exec_seconds_sum = executed, seconds


def _pf(
    nodes: list[str], concurrency: int = 32, batch: int = 100, fixed: int | None = None
) -> Prefetch:
    return Prefetch(nodes, concurrency, batch, Prefetch.window(concurrency, batch, fixed), fixed)


def _counts(reads: list[tuple[list[str], int]]) -> list[int]:
    """The COUNTs of a plan, checked to be ints (XREADGROUP refuses `COUNT 1.5`)."""
    assert all(type(count) is int for _, count in reads), reads
    return [count for _, count in reads]


def test_a_small_worker_reads_one_unseen_state_beyond_its_executors() -> None:
    """An unseen node's headroom is a quarter of min(batch, workers), at least 1, and a
    whole number. Bugs: at least 2 (`max(2, ...)`), `/ 4` (10 executors: 12.5 held)."""
    assert _pf(["N"], concurrency=4).hold("N") == 5
    small = _pf(["N"], concurrency=10)
    assert small.hold("N") == 12 and type(small.hold("N")) is int
    assert _counts(small.plan({"N": C()}, 100, 0, 0)) == [12]


def test_a_fast_node_reads_from_half_a_batch_plus_one_of_room() -> None:
    """The least room a fast node reads on is batch // 2 + 1: 51 of 100, 4 of 7. Bugs:
    `+ 2` (51 waits), `/ 2` (4.5: 4 waits)."""
    stats = {"A": C(1000, 1000 * 10e-6)}
    assert _counts(_pf(["A"]).plan(stats, 51, 32, 300)) == [51]
    assert _pf(["A"]).plan(stats, 50, 32, 300) == []
    odd = _pf(["A"], concurrency=4, batch=7)
    assert _counts(odd.plan(stats, 4, 4, 20)) == [4]
    assert odd.plan(stats, 3, 4, 20) == []


def test_a_fast_node_never_holds_more_than_the_window() -> None:
    """headroom is what a node holds beyond its executors: for a fast node the rest of
    the window, never more (hold = workers + headroom <= limit). Bugs: `limit +
    concurrency`, `e <= 0 and ...` (a fast node's headroom from its speed: thousands)."""
    pf = _pf(["A"])
    pf.observe("A", 1000, 1000 * 10e-6)
    assert pf.headroom("A") == pf.limit - pf.concurrency == 400
    assert pf.hold("A") == pf.concurrency + pf.headroom("A") == 432


@pytest.mark.parametrize(("fixed", "least"), [(3, 1), (4, 2), (5, 2)])
def test_a_fixed_window_reads_from_half_its_prefetch(fixed: int, least: int) -> None:
    """Runtime(prefetch=N) with little room: a read waits for max(1, N // 2) free places.
    Bugs: `N / 2` (prefetch 3: 1.5, one free place never read), `N // 3` (4: reads 1)."""
    pf = _pf(["N"], concurrency=4, fixed=fixed)
    stats = {"N": C(10, 10e-6)}
    assert pf.plan(stats, least - 1, 4, 0) == []
    assert _counts(pf.plan(stats, least, 4, 0)) == [least]


def test_a_slow_node_reads_the_one_executor_free() -> None:
    """One executor free, no headroom (1 s states): one read of COUNT 1. Bugs: `budget >
    ...`, `max(2, ...)` (the free executor idles until a second one is free)."""
    pf = _pf(["Slow"])
    assert _counts(pf.plan({"Slow": C(10, 10.0)}, 400, 31, 0)) == [1]


def test_a_medium_node_with_an_odd_headroom_reads_from_half_of_it() -> None:
    """Headroom 3 (32 executors x 2 ms / ~18 ms): a read of 1 once the executors lack
    1 + 3 - 3. Bug: `headroom / 2` (1.5: it waits for 2)."""
    pf = _pf(["M"])
    pf.observe("M", 10, 10 * 0.018)
    assert pf.headroom("M") == 3
    # Every executor busy and 2 queued: budget = min(room, -2 + 3) = 1.
    assert _counts(pf.plan({}, 400, 32, 2)) == [1]
    assert pf.plan({}, 400, 32, 3) == []


def test_two_slow_nodes_split_an_odd_budget_in_whole_states() -> None:
    """3 free executors between two slow streams: COUNT 1 on each (the COUNT applies per
    stream). Bug: `budget / len(slow)` (COUNT 1.5)."""
    pf = _pf(["S1", "S2"])
    stats = {"S1": C(5, 5.0), "S2": C(5, 5.0)}
    assert pf.plan(stats, 404, 29, 0) == [(["S1", "S2"], 1)]
    assert _counts(pf.plan(stats, 404, 29, 0)) == [1]


def test_the_spread_is_a_moving_mean_of_the_deviation_from_the_mean() -> None:
    """Each new batch mean moves the spread by its weight toward |mean - average|. Bugs:
    `spread = ...` (the past spread forgotten), `+ spread` for `- spread`."""
    pf = _pf(["N"])
    pf.observe("N", 1, 1.0)  # average 1.0, spread 0
    pf.observe("N", 2, 1.0)  # mean 0.0: spread 0.2 x 1.0, average 0.8
    pf.observe("N", 3, 1.8)  # mean 0.8: |0.8 - 0.8| = 0: spread 0.2 + 0.2 x (0 - 0.2)
    assert pf._seen["N"].spread == pytest.approx(0.16)
    assert pf.estimate("N") == pytest.approx(0.8)


def test_due_counts_states_from_lead_before_their_mean_end_to_lead_after_it() -> None:
    """A running state is due from start + mean - lead (inclusive) up to lead past its
    mean end (inclusive); a node not yet seen is skipped, not the end of the list. Bugs:
    `break` at an unseen node, `at >= now`, `now < at + 2 * lead`."""
    pf = _pf(["U", "N"])
    pf.observe("N", 1, 1.0)  # mean 1 s
    assert pf.due([("U", 0.0), ("N", 0.0)], 0.6, lead=0.5) == (1, None)
    assert pf.due([("N", 0.0)], 0.5, lead=0.5) == (1, None)  # due from exactly here
    assert pf.due([("N", 0.0)], 1.5, lead=0.5) == (1, None)  # ... to exactly here
    assert pf.due([("N", 0.0)], 1.75, lead=0.5) == (0, None)  # a long one: not due
    assert pf.due([("N", 0.0), ("N", 0.25)], 0.25, lead=0.5) == (0, 0.5)
