"""The workloads by name, with their default sizes and the unit of their rates: the one
table the CLI and the report read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.harness import Ctx
from benchmarks.latency import latency
from benchmarks.memory import memory
from benchmarks.throughput import enqueue_rate, w1_drain, w2_pipeline, w3_fan

Workload = Callable[[Ctx, int, int, str], Awaitable[dict[str, Any]]]
"""(ctx, n, processes, label) -> the measurement's figures."""

WORKLOADS: dict[str, Workload] = {
    "w1": w1_drain,
    "w2": w2_pipeline,
    "enqueue": enqueue_rate,
    "w3": w3_fan,
    "latency": latency,
    "memory": memory,
}
DEFAULT_N = {
    "w1": 20_000,
    "w2": 5_000,
    "w3": 100,
    "enqueue": 100_000,
    "latency": 10_000,
    "memory": 1_000_000,
}
UNIT = {
    "w1": "states/s",
    "w2": "runs/s",
    "w3": "runs/s",
    "enqueue": "states/s",
    "latency": "states/s",
    "memory": "states/s",
}
ALL = ["enqueue", "w1", "w2", "w3"]
"""What `--workload all` runs; `latency` and `memory` take 10-60 s each, so they are
asked for by name."""
TABLES = ("w4",)
"""Workloads with a table of their own instead of a rate per process count: `w4`, slow
nodes and workers joining late (benchmarks/fairness.py; scenarios, not `--n`)."""
