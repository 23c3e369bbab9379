"""Run status, waiting, results and history: the read side of graph runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from exospherehost.broker import runs as rec
from exospherehost.broker.codec import unpack
from exospherehost.broker.fields import CANCELLED_OPEN, RUN_STATUSES, RUNNING
from exospherehost.broker.keys import check_name
from exospherehost.broker.runs import RunRecord, RunsReader, StateLinks
from exospherehost.broker.streams import Broker
from exospherehost.errors import InvalidArgument, WaitTimedOut
from exospherehost.errors import RunNotFound as RunNotFound  # old import path

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
    status: str  # RUNNING | SUCCEEDED | FAILED | CANCELLED
    open: int
    created_ms: int
    finished_ms: int | None
    nodes: dict[str, NodeCounts] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # identifier -> why a unite did not fire

    @property
    def done(self) -> bool:
        return self.status != RUNNING


class RunPage(list[RunStatus]):
    """A page of `list_runs`: the runs (a list, newest first) and `total`, how many runs
    match the listing's filters in all."""

    def __init__(self, runs: Iterable[RunStatus] = (), total: int = 0) -> None:
        super().__init__(runs)
        self.total = total


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


@dataclass
class StateDetail:
    """The record of one state of a run (StateManager.state / run_graph): what its last
    settle wrote, or PENDING for a state created but not settled yet (then only its
    parents, created time, node and identifier... as far as known). A field whose msgpack
    was over the per-field cap holds {"__truncated__": its size in bytes, "preview": the
    start of its text}; `truncated` names those fields."""

    state_id: str
    run_id: str
    node: str
    identifier: str
    status: str  # SUCCEEDED | FAILED | PRUNED | RETRYING | PENDING
    attempt: int  # 1-based; 0 while PENDING
    inputs: dict[str, Any] | None
    outputs: Any  # a map, or a list of maps (a fan-out); None unless SUCCEEDED
    error: str | None  # FAILED, or RETRYING: the failed attempt's error
    pruned: dict[str, Any] | None  # PRUNED: the data the node pruned with
    parents: list[str]
    created_ms: int | None  # when its parent's settle (or the run's start) created it
    queued_ms: int | None  # when this attempt was queued
    started_ms: int | None  # when this attempt's execution began (None: never executed)
    finished_ms: int | None
    worker: str  # the Runtime consumer that settled it
    truncated: list[str] = field(default_factory=list)
    retry_of: str | None = None  # the state retry_state re-ran as this one
    retried_as: str | None = None  # the state retry_state made of this one


@dataclass
class RunGraph:
    """Every state of a run (state id -> detail), the edges parent -> child, and the
    retries (state -> the state retry_state made of it; the retry has the same parents)."""

    run_id: str
    states: dict[str, StateDetail]
    edges: list[tuple[str, str]]
    retries: list[tuple[str, str]] = field(default_factory=list)


_REC_NAMES = {
    rec.REC_INPUTS: "inputs",
    rec.REC_OUTPUTS: "outputs",
    rec.REC_ERROR: "error",
    rec.REC_PRUNED: "pruned",
}


def _detail(
    run_id: str,
    state_id: str,
    record: dict[str, Any] | None,
    pointer: list[Any] | None,
    parents: list[str],
    run_created_ms: int | None,
) -> StateDetail:
    if pointer is not None:
        created: int | None = int(pointer[1])
    elif record is not None and record.get(rec.REC_UNITE) is None and not parents:
        created = run_created_ms  # a root state: created by the run's start
    elif record is not None and record.get(rec.REC_ATTEMPT) == 1:
        created = record.get(rec.REC_QUEUED_MS)  # a unite: created when it fired
    else:
        created = None
    if record is None:
        return StateDetail(
            state_id, run_id, "", "", "PENDING", 0, None, None, None, None,
            parents, created, None, None, None, "",
        )  # fmt: skip
    truncated = [
        name
        for key, name in _REC_NAMES.items()
        if isinstance(record.get(key), dict) and rec.TRUNCATED in record[key]
    ]
    started = record.get(rec.REC_STARTED_MS) or None
    return StateDetail(
        state_id,
        run_id,
        record.get(rec.REC_NODE, ""),
        record.get(rec.REC_IDENTIFIER) or "",
        record.get(rec.REC_STATUS, ""),
        int(record.get(rec.REC_ATTEMPT, 0)),
        record.get(rec.REC_INPUTS),
        record.get(rec.REC_OUTPUTS),
        record.get(rec.REC_ERROR),
        record.get(rec.REC_PRUNED),
        parents,
        created,
        record.get(rec.REC_QUEUED_MS),
        started,
        record.get(rec.REC_FINISHED_MS),
        record.get(rec.REC_WORKER, ""),
        truncated,
    )


def _unite_parents(
    unite: str, target: str, records: dict[str, dict[str, Any]], pointers: dict[str, list[Any]]
) -> list[str]:
    """The parents of a uniting state: the last state of each branch of its fan-in group
    (members with no child), or the target itself when the fan-out had no branch."""
    has_child = {p[0] for p in pointers.values()}
    ends = sorted(
        sid
        for sid, r in records.items()
        if (r.get(rec.REC_GROUPS) or {}).get(unite) == target and sid not in has_child
    )
    return ends or [target]


DAY = timedelta(days=1)
"""cancel's default retention: the Runtime's default `run_retention`."""

_SCAN_CHUNK = 2000
"""Runs whose status one pipelined read checks, when a listing filters by status."""


def _newest_first(item: tuple[str, str, int]) -> tuple[int, str]:
    # Reversed: newest first, and equal times by run id descending, as ZREVRANGEBYSCORE
    # orders them, so a page cut inside equal times agrees with what Redis returned.
    return item[2], item[1]


def _check_page(offset: int, count: int) -> None:
    for name, value, least in (("offset", offset, 0), ("count", count, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(f"{name} must be an int >= {least}, got {value!r}")


def _ms(name: str, when: datetime | None) -> int | None:
    """`when` in ms since the epoch (a naive datetime is taken as UTC)."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        raise InvalidArgument(f"{name} must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


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
    open_ = record.open
    if open_ < CANCELLED_OPEN // 2:  # cancelled: what is left to drop (cancel_run.lua)
        open_ -= CANCELLED_OPEN
    return RunStatus(
        run_id,
        record.graph,
        record.status,
        open_,
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

    async def cancel(self, run_id: str, retention: timedelta = DAY) -> RunStatus:
        """Cancel a running run: it ends now as CANCELLED (waiters wake); states of it that
        are queued, delayed or running are settled, when reached, without successors,
        retries or results, and no unite of it fires. Idempotent: a finished run (any
        status) is left as it is. Its records expire after `retention` (the Runtime's
        `run_retention` does it for runs that finish). Returns the run's status."""
        check_name("run id", run_id)
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else -1
        if seconds < 0:
            raise InvalidArgument(f"retention must be a non-negative timedelta, got {retention!r}")
        if await self.broker.cancel_run(run_id, int(seconds)) == "MISSING":
            raise _not_found(run_id)
        return await self.status(run_id)

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

    async def graph_names(self) -> list[str]:
        raise NotImplementedError  # StateManager's

    async def listed_graphs(self) -> list[str]:
        raise NotImplementedError  # StateManager's

    async def list_runs(
        self,
        graph_name: str | None = None,
        offset: int = 0,
        count: int = 50,
        *,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> RunPage:
        """A page of runs, newest first: of one graph, or of every graph of the namespace
        (`graph_name=None`); only those with `status` (RUNNING, SUCCEEDED, FAILED) and
        created in [since, until] when given. The page is a list of RunStatus whose
        `total` says how many runs match. Without a status filter it costs one sorted-set
        read per graph; with one, a pipelined status read of every run in the time range
        (bound it with `since`). Runs expired after their retention are dropped from the
        index when a listing meets them."""
        _check_page(offset, count)
        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgument(
                f"status must be one of {', '.join(sorted(RUN_STATUSES))}, got {status!r}"
            )
        lo, hi = _ms("since", since), _ms("until", until)
        graphs = (
            [check_name("graph name", graph_name)]
            if graph_name is not None
            else await self.listed_graphs()
        )
        if status is None:
            total = sum([await self._runs.count_between(g, lo, hi) for g in graphs])
            picked = await self._newest(graphs, lo, hi, offset + count)
            page = picked[offset : offset + count]
        else:
            total, page = await self._matching(graphs, lo, hi, status, offset, count)
        out = RunPage(total=total)
        gone: dict[str, list[str]] = {}
        for graph, run_id, _ in page:
            try:
                out.append(await self.status(run_id))
            except RunNotFound:
                gone.setdefault(graph, []).append(run_id)
        for graph, ids in gone.items():
            await self._runs.forget(graph, ids)
        return out

    async def _newest(
        self, graphs: list[str], lo: int | None, hi: int | None, limit: int
    ) -> list[tuple[str, str, int]]:
        """The newest `limit` (graph, run id, created ms) over `graphs`."""
        found: list[tuple[str, str, int]] = []
        for g in graphs:
            found += [(g, r, t) for r, t in await self._runs.created_between(g, lo, hi, 0, limit)]
        found.sort(key=_newest_first, reverse=True)
        return found[:limit]

    async def _matching(
        self,
        graphs: list[str],
        lo: int | None,
        hi: int | None,
        status: str,
        offset: int,
        count: int,
    ) -> tuple[int, list[tuple[str, str, int]]]:
        """Every run in the range with `status`: how many, and the page of them."""
        # Runs started while we page would shift the offsets: page below "now".
        hi = int(time.time() * 1000) if hi is None else hi
        found: list[tuple[str, str, int]] = []
        for g in graphs:
            start = 0
            while True:
                chunk = await self._runs.created_between(g, lo, hi, start, _SCAN_CHUNK)
                if not chunk:
                    break
                start += len(chunk)
                statuses = await self._runs.statuses([r for r, _ in chunk])
                found += [
                    (g, r, t) for (r, t), st in zip(chunk, statuses, strict=True) if st == status
                ]
        found.sort(key=_newest_first, reverse=True)
        return len(found), found[offset : offset + count]

    async def run_history(self, run_id: str) -> list[StateRecord]:
        """Every settled outcome of the run's states, in settle order."""
        history = await self._runs.history(check_name("run id", run_id))
        return [
            StateRecord(h.state_id, h.identifier, h.node, h.status, h.attempt, h.error, h.time_ms)
            for h in history
        ]

    async def state(self, run_id: str, state_id: str) -> StateDetail:
        """The record of one state of a run: node, identifier, status, attempt, inputs,
        outputs / error / prune data, parents, times, worker (see StateDetail). Raises
        RunNotFound when the run or the state is not known (or expired with the run)."""
        check_name("run id", run_id)
        if not isinstance(state_id, str) or not state_id:
            raise InvalidArgument(f"state_id must be a non-empty string, got {state_id!r}")
        raw, raw_pointer, retried_as, retry_of = await self._runs.state_raw(run_id, state_id)
        record = None if raw is None else unpack(raw)
        pointer = None if raw_pointer is None else unpack(raw_pointer)
        if record is None and pointer is None and retry_of is None:
            if await self._runs.run(run_id) is None:
                raise _not_found(run_id)
            raise RunNotFound(
                f"state {state_id!r} of run {run_id!r} has no record (not a state of this run, "
                f"or the run's Runtimes keep none: Runtime(state_records='off'))"
            )
        if record is not None and record.get(rec.REC_UNITE) is not None:
            records, pointers = await self._runs.state_records(run_id)
            parents = _unite_parents(
                record.get(rec.REC_IDENTIFIER) or "", record[rec.REC_UNITE], records, pointers
            )
        else:
            parents = [] if pointer is None else [pointer[0]]
        created = None
        if pointer is None and not parents:
            run = await self._runs.run(run_id)
            created = None if run is None else run.created_ms
        detail = _detail(run_id, state_id, record, pointer, parents, created)
        detail.retry_of, detail.retried_as = retry_of, retried_as
        return detail

    async def run_graph(self, run_id: str) -> RunGraph:
        """Every state of a run with its record (PENDING: created, not settled yet) and
        the edges parent -> child: a successor's parent is the state whose settle created
        it; a uniting state's parents are the last states of its group's branches."""
        check_name("run id", run_id)
        run = await self._runs.run(run_id)
        if run is None:
            raise _not_found(run_id)
        links = StateLinks()
        records, pointers = await self._runs.state_records(run_id, links)
        parents: dict[str, list[str]] = {}
        for sid in records.keys() | pointers.keys() | links.retry_of.keys():
            r = records.get(sid)
            if r is not None and r.get(rec.REC_UNITE) is not None:
                parents[sid] = _unite_parents(
                    r.get(rec.REC_IDENTIFIER) or "", r[rec.REC_UNITE], records, pointers
                )
            else:
                parents[sid] = [pointers[sid][0]] if sid in pointers else []
        states = {
            sid: _detail(run_id, sid, records.get(sid), pointers.get(sid), ps, run.created_ms)
            for sid, ps in parents.items()
        }
        for sid, detail in states.items():
            detail.retry_of = links.retry_of.get(sid)
            detail.retried_as = links.retried_as.get(sid)
        edges = sorted((p, sid) for sid, ps in parents.items() for p in ps)
        retries = sorted(links.retried_as.items())
        return RunGraph(run_id, states, edges, retries)
