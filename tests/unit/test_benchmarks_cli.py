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
