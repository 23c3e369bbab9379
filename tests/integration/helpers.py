"""Helpers for integration tests: Runtimes in-process or as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from exospherehost import GraphNodeModel, Runtime, StateManager
from exospherehost.client.runs import RunStatus
from exospherehost.runtime.cancelling import cancel_and_wait

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running(runtime: Runtime, timeout: float = 10.0) -> AsyncIterator[Runtime]:
    """Serve `runtime` in this event loop for the duration of the block, then stop it."""
    task = runtime.start()
    assert task is not None
    try:
        started = asyncio.ensure_future(runtime.started.wait())
        done, _ = await asyncio.wait(
            [started, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # surface the error that ended it
        assert started in done, f"runtime did not start within {timeout}s"
        yield runtime
    finally:
        runtime.stop()
        # Not wait_for: on Python 3.11 it can return quietly when the task swallowed its
        # cancel, hiding a Runtime that does not stop.
        done, _ = await asyncio.wait([task], timeout=timeout)
        if task not in done:
            await cancel_and_wait([task])
            raise AssertionError(f"runtime did not stop within {timeout}s of stop()")
        task.result()


def start_worker(url: str, namespace: str, **env: str) -> subprocess.Popen[str]:
    """One Runtime process (tests/integration/apps/worker_main.py); `env` adds EXO_TEST_*."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.apps.worker_main", url, namespace],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextlib.contextmanager
def worker_processes(
    url: str, namespace: str, count: int, **env: str
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start `count` Runtime processes; SIGTERM them at the end of the block."""
    procs = [start_worker(url, namespace, **env) for _ in range(count)]
    try:
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: Sequence[subprocess.Popen[str]], timeout: float = 20.0) -> list[str]:
    """SIGTERM each process, wait for a clean exit; return their outputs."""
    outs = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outs.append(out or "")
    return outs


def squares_graph(ns: str, items: int | str = 3, base: int = 0) -> list[GraphNodeModel]:
    """split (fan-out) -> square -> label; label reads its parent and its grandparent."""
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="split",
            inputs={"items": items, "base": base},
            next_nodes=["square"],
        ),
        GraphNodeModel(
            node_name="Square",
            namespace=ns,
            identifier="square",
            inputs={"value": "${{ split.outputs.value }}"},
            next_nodes=["label"],
        ),
        GraphNodeModel(
            node_name="Label",
            namespace=ns,
            identifier="label",
            inputs={
                "square": "${{ square.outputs.square }}",
                "value": "${{ split.outputs.value }}",
                "text": "v=${{ split.outputs.value }} sq=${{ square.outputs.square }}",
            },
        ),
    ]


async def assert_step_runs_once(
    sm: StateManager, runs: Sequence[str], statuses: Mapping[str, RunStatus]
) -> None:
    """The end state of a Step1 -> Step2 crash test: every run SUCCEEDED with exactly one
    transition one -> two (also for states executed twice), the result of run k is [k],
    and nothing is left on either stream."""
    assert {s.status for s in statuses.values()} == {"SUCCEEDED"}
    for k, run in enumerate(runs):
        st = statuses[run].nodes
        assert (st["one"].succeeded, st["two"].succeeded, st["two"].pending) == (1, 1, 0), k
    results = await asyncio.gather(*(sm.results(r) for r in runs))
    assert [[x["outputs"]["i"] for x in res] for res in results] == [[k] for k in range(len(runs))]
    for node in ("Step1", "Step2"):
        assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
