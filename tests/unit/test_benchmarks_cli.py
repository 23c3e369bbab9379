"""`python -m benchmarks.bench` keeps its options and its table: the commands
benchmarks/README.md gives parse as documented, and a summarised row prints as before."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench import parse_args
from benchmarks.report import markdown, summarise
from benchmarks.workloads import ALL


def test_the_readme_commands_parse() -> None:
    args = parse_args(
        shlex.split("--workload enqueue,w1,w2,w3 --processes 1,2 --wait-quiet 3 --output out.json")
    )
    assert args.workload == ["enqueue", "w1", "w2", "w3"]
    assert args.processes == [1, 2]
    assert args.wait_quiet == 3.0
    assert args.output == Path("out.json")
    args = parse_args(shlex.split("--workload w1 --processes 1 --peers --peer-repeat 3 --repeat 9"))
    assert (args.workload, args.peers, args.peer_repeat, args.repeat) == (["w1"], True, 3, 9)
    assert parse_args([]).workload == ALL
    assert parse_args(["--workload", "latency,all"]).workload == ["latency", *ALL]


@pytest.mark.parametrize(
    "argv", [["--workload", "w9"], ["--processes", "0"], ["--n", "0"], ["--repeat", "0"]]
)
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def _run(rate: float) -> dict[str, Any]:
    return {"n": 1000, "seconds": 1000 / rate, "rate": rate, "worker_cpu": 0.5}


def test_a_summarised_row_prints_as_a_table_row() -> None:
    row = summarise("w2", 1, [_run(100.0), _run(300.0), _run(200.0)])
    assert (row["median_rate"], row["min_rate"], row["max_rate"]) == (200.0, 100.0, 300.0)
    lines = markdown([row]).splitlines()
    assert lines[0].startswith("| system | workload | N | procs | median | min | max | unit |")
    assert lines[2] == (
        "| exospherehost | w2 | 1,000 | 1 | 200 | 100 | 300 | runs/s (= 600 states/s) | - "
        "| 5.000 | 0.50 | - | - | - | - |"
    )


def test_cluster_and_lanes_options_parse_and_are_limited_to_w1_w2() -> None:
    args = parse_args(shlex.split("--cluster --workload w1,w2 --lanes 1,3,6 --processes 1,2"))
    assert (args.cluster, args.lanes, args.masters) == (True, [1, 3, 6], 3)
    assert parse_args([]).lanes == [1]
    for argv in (
        "--cluster --workload w3",
        "--lanes 3 --workload all",
        "--cluster --workload w1 --peers",
        "--lanes 0 --workload w1",
        "--lanes 257 --workload w1",
        "--lanes x --workload w1",
    ):
        with pytest.raises(SystemExit):
            parse_args(shlex.split(argv))


def test_master_shares_split_a_window_over_the_masters() -> None:
    from benchmarks.harness import Snapshot, master_shares

    def snap(at: float, nodes: tuple[tuple[str, int, int, float], ...]) -> Snapshot:
        return Snapshot(at, 0.0, 0.0, 0.0, 0.0, {}, nodes)

    a = snap(0.0, (("n1", 100, 10, 1.0), ("n2", 100, 10, 1.0)))
    b = snap(2.0, (("n1", 400, 40, 2.0), ("n2", 200, 20, 1.5)))
    shares = master_shares(a, b)
    assert [s["calls"] for s in shares] == [300, 100]
    assert [s["calls_share"] for s in shares] == [0.75, 0.25]
    assert [s["top_level_share"] for s in shares] == [0.75, 0.25]
    assert [s["redis_cpu"] for s in shares] == [0.5, 0.25]
    assert [s["cpu_share"] for s in shares] == [0.667, 0.333]


def test_a_cluster_row_prints_lanes_and_master_shares_busiest_first() -> None:
    def masters(shares: tuple[float, ...]) -> list[dict[str, Any]]:
        return [
            {
                "node": f"n{i}",
                "calls": int(s * 100),
                "calls_share": s,
                "top_level_share": s,
                "cpu_share": s,
                "redis_cpu": s,
            }
            for i, s in enumerate(shares)
        ]

    # Each repeat's namespace lands on other masters: the shares are ranked, not per node.
    orders = [(0.5, 0.3, 0.2), (0.2, 0.5, 0.3), (0.3, 0.2, 0.5)]
    runs = [
        {**_run(rate), "lanes": 3, "masters": masters(order)}
        for rate, order in zip((100.0, 200.0, 300.0), orders, strict=True)
    ]
    row = summarise("w2", 2, runs)
    assert row["lanes"] == 3
    assert [m["calls_share"] for m in row["masters"]] == [0.5, 0.3, 0.2]
    table = markdown([row], scaling=True).splitlines()
    assert table[0].startswith("| workload | N | lanes | procs | median |")
    assert table[2].startswith("| w2 | 1,000 | 3 | 2 | 200 | 100 | 300 | runs/s | 0.50 | - |")
    assert "| 0.50 / 0.30 / 0.20 |" in table[2]
