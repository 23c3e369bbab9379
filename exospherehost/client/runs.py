"""Run status, waiting, results and history: the read side of graph runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker.fields import RUNNING
from exospherehost.broker.keys import check_name
from exospherehost.broker.runs import RunRecord, RunsReader
from exospherehost.broker.streams import Broker
from exospherehost.errors import RunNotFound as RunNotFound  # old import path
from exospherehost.errors import WaitTimedOut

MAX_BLOCK_S = 1.0
"""Blocking reads are cut into slices well under the client's socket timeout."""


@dataclass
class NodeCounts:
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    pruned: int = 0
    retried: int = 0
    skipped: int = 0  # uniting node: groups that did not fire (ALL_SUCCESS with bad branches)


@dataclass
class RunStatus:
    run_id: str
    graph: str
    status: str  # RUNNING | SUCCEEDED | FAILED
    open: int
    created_ms: int
    finished_ms: int | None
    nodes: dict[str, NodeCounts] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # identifier -> why a unite did not fire

    @property
    def done(self) -> bool:
        return self.status != RUNNING


@dataclass
class StateRecord:
    """One settled outcome of a state of a run (its history)."""

    state_id: str
    identifier: str
    node: str
    status: str  # SUCCEEDED | FAILED | PRUNED | RETRYING
    attempt: int
    error: str
    time_ms: int


def _not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"run {run_id!r} not found (unknown, or expired after retention)")


def run_status(run_id: str, record: RunRecord) -> RunStatus:
    """The public view of a run hash: per identifier, `pending` = created - settled."""
    counts = {
        ident: NodeCounts(
            c.created - c.succeeded - c.failed - c.pruned,
            c.succeeded,
            c.failed,
            c.pruned,
            c.retried,
            c.skipped,
        )
        for ident, c in record.counts.items()
    }
    return RunStatus(
        run_id,
        record.graph,
        record.status,
        record.open,
        record.created_ms,
        record.finished_ms,
        counts,
        dict(record.notes),
    )


class RunsMixin:
    """StateManager methods over runs; needs `broker`."""

    broker: Broker

    @property
    def _runs(self) -> RunsReader:
        return self.broker.runs

    async def status(self, run_id: str) -> RunStatus:
        record = await self._runs.run(check_name("run id", run_id))
        if record is None:
            raise _not_found(run_id)
        return run_status(run_id, record)

    async def wait(self, run_id: str, timeout: float = 60.0) -> RunStatus:
        """Wait until the run is finished; raises TimeoutError naming the run."""
        return (await self.wait_all([run_id], timeout))[run_id]

    async def wait_all(self, run_ids: Iterable[str], timeout: float = 60.0) -> dict[str, RunStatus]:
        """Wait until every run is finished, following the events stream of each lane the
        runs live on (one connection per lane, however many runs); raises TimeoutError
        naming what is unfinished."""
        run_ids = list(run_ids)
        waiting = {check_name("run id", r) for r in run_ids}
        deadline = time.monotonic() + timeout
        by_lane: dict[int, set[str]] = {}
        for r in waiting:
            by_lane.setdefault(self.broker.keys.for_run(r).lane, set()).add(r)
        left = await asyncio.gather(
            *(self._wait_lane(lane, ids, deadline) for lane, ids in by_lane.items())
        )
        unfinished = set().union(*left)
        if unfinished:
            some = sorted(unfinished)[:5]
            raise WaitTimedOut(
                f"{len(unfinished)} run(s) not finished after {timeout}s, e.g. {some}"
            )
        return {r: await self.status(r) for r in run_ids}

    async def _wait_lane(self, lane: int, waiting: set[str], deadline: float) -> set[str]:
        """Follow lane `lane`'s events until its runs in `waiting` are finished; returns
        those still unfinished at `deadline`."""
        runs = self.broker.on_lane(lane).runs
        last = await runs.events_tail()  # before the first check: no event is missed
        candidates = set(waiting)
        while True:
            finished = await self._finished(candidates)
            waiting -= finished
            if not waiting:
                return waiting
            left = deadline - time.monotonic()
            if left <= 0:
                return waiting
            block = max(1, int(min(left, MAX_BLOCK_S) * 1000))
            events = await runs.events(last, 10_000, block)
            candidates = {e.run_id for e in events if e.run_id in waiting}
            if events:
                last = events[-1].entry_id
            else:
                candidates = set(waiting)  # idle second: re-check all (covers trimmed events)

    async def _finished(self, run_ids: set[str]) -> set[str]:
        ids = list(run_ids)
        done: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for r, st in zip(chunk, await self._runs.statuses(chunk), strict=True):
                if st is None:
                    raise _not_found(r)
                if st != RUNNING:
                    done.add(r)
        return done

    async def results(self, run_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """Outputs of the run's leaf states ({identifier, state, outputs}); with `timeout`,
        wait for the run to finish first."""
        check_name("run id", run_id)
        if timeout is not None:
            await self.wait(run_id, timeout)
        results: list[dict[str, Any]] = await self._runs.results(run_id)
        return results

    async def list_runs(self, graph_name: str, offset: int = 0, count: int = 50) -> list[RunStatus]:
        """Recent runs of a graph, newest first (runs expired after retention are dropped)."""
        check_name("graph name", graph_name)
        out: list[RunStatus] = []
        gone: list[str] = []
        for run_id in await self._runs.run_ids(graph_name, offset, count):
            try:
                out.append(await self.status(run_id))
            except RunNotFound:
                gone.append(run_id)
        if gone:
            await self._runs.forget(graph_name, gone)
        return out

    async def run_history(self, run_id: str) -> list[StateRecord]:
        """Every settled outcome of the run's states, in settle order."""
        history = await self._runs.history(check_name("run id", run_id))
        return [
            StateRecord(h.state_id, h.identifier, h.node, h.status, h.attempt, h.error, h.time_ms)
            for h in history
        ]
