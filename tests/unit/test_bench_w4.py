"""W4's figures (benchmarks/fairness.py): the ideal makespans its efficiency is measured
against, and the options of `--workload w4`."""

from __future__ import annotations

import pytest

from benchmarks.bench import parse_args
from benchmarks.fairness import fifo_ideal_s, ideal_s, scenarios


def test_the_ideal_adds_up_the_slots_of_the_workers_joined_so_far() -> None:
    assert ideal_s([100] * 2000, 4, 32, 0.0) == pytest.approx(1.5625)
    # 600 x 1 s, 4 x 8 slots joining 2 s apart: 32 T - 8 (0 + 2 + 4 + 6) = 600.
    assert ideal_s([1000] * 600, 4, 8, 2.0) == pytest.approx(21.75)
    # Done before the later workers join: they do not count.
    assert ideal_s([1000] * 16, 4, 8, 10.0) == pytest.approx(2.0)
    assert ideal_s([5000], 4, 32, 0.0) == pytest.approx(5.0)  # never below the longest


def test_the_fifo_ideal_is_a_perfect_dispatcher_in_stream_order() -> None:
    assert fifo_ideal_s([100] * 2000, 4, 32, 0.0) == pytest.approx(1.6)  # 16 rounds
    assert fifo_ideal_s([1000] * 600, 4, 8, 2.0) == pytest.approx(22.0)
    # A long state last: its tail cannot be avoided by any FIFO queue.
    assert fifo_ideal_s([10] * 99 + [1000], 1, 10, 0.0) == pytest.approx(0.09 + 1.0)


def test_the_w4_table_and_its_options() -> None:
    kinds = [(s.kind, s.processes) for s in scenarios([1, 2, 4])]
    assert kinds[:3] == [("fixed", 1), ("fixed", 2), ("fixed", 4)]
    assert ("slow-stagger", 4) in kinds and ("wide", 1) in kinds
    mixed = next(s for s in scenarios([1]) if s.kind == "mixed").durations_ms()
    assert sorted(set(mixed)) == [10, 1000] and mixed.count(1000) == 400
    args = parse_args(
        ["--workload", "w4", "--w4-prefetch", "adaptive,400", "--w4-scenarios", "wide"]
    )
    assert (args.workload, args.w4_prefetch, args.w4_scenarios) == (["w4"], [None, 400], ["wide"])
    with pytest.raises(SystemExit):
        parse_args(["--w4-prefetch", "lots"])


def test_mixed_nodes_puts_the_long_states_on_their_own_node_and_is_bounded_by_lpt() -> None:
    """The mixed states on two nodes: the reader can choose, so the bound is the
    longest-first dispatcher's; at P = 4, 400 one-second states on 128 slots need 4 s
    whatever the order (3 x 128 < 400), 81 % of the fluid ideal."""
    from benchmarks.fairness import Scenario, best_order, figures

    sc = Scenario("mixed-nodes", 2000, 4, 32, 0.0)
    assert sorted(sc.durations_ms()) == sorted(Scenario("mixed", 2000, 4, 32, 0.0).durations_ms())
    assert best_order(sc)[:400] == [1000] * 400
    row = figures(sc, 4.4, [500] * 4)
    assert row["ideal_s"] == pytest.approx(3.25) and row["fifo_ideal_s"] == pytest.approx(4.0)
    assert ("mixed-nodes", 2) in [(s.kind, s.processes) for s in scenarios([1, 2, 4])]


def test_the_model_of_the_reader_shows_what_the_end_prediction_gains() -> None:
    """benchmarks/w4model.py with the live Prefetch: equal 100 ms states reach the FIFO
    bound with the end prediction and lose a round trip per round without it; the mixed
    10 ms / 1 s node is not predicted, so it is unchanged."""
    from benchmarks.fairness import Scenario
    from benchmarks.w4model import model

    fixed = Scenario("fixed", 2000, 1, 32, 0.0)
    off, _ = model(fixed, 0.003, lead=False)
    on, per_worker = model(fixed, 0.003, lead=True)
    assert per_worker == [2000]
    assert on == pytest.approx(6.30, abs=0.02) and off > on + 0.1
    mixed = Scenario("mixed", 2000, 2, 32, 0.0)
    assert model(mixed, 0.003, lead=True)[0] == pytest.approx(model(mixed, 0.003, lead=False)[0])
