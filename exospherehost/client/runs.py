"""Run status, waiting, results and history: the read side of graph runs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import Keys, check_name
from exospherehost.broker.streams import RawRedis
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
        return self.status != "RUNNING"


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


class RunsMixin:
    """StateManager methods over runs; needs `client` and `keys`."""

    client: RawRedis
    keys: Keys

    async def status(self, run_id: str) -> RunStatus:
        raw = await self.client.hgetall(self.keys.run(check_name("run id", run_id)))
        if not raw:
            raise RunNotFound(f"run {run_id!r} not found (unknown, or expired after retention)")
        h = {k.decode(): v.decode() for k, v in raw.items()}
        counts: dict[str, NodeCounts] = {}
        kinds = {"s": "succeeded", "f": "failed", "p": "pruned", "r": "retried", "k": "skipped"}
        notes: dict[str, str] = {}
        for k, v in h.items():
            kind, sep, ident = k.partition(":")
            if not sep:
                continue
            if kind == "why":
                notes[ident] = v
                continue
            c = counts.setdefault(ident, NodeCounts())
            if kind == "c":
                c.pending += int(v)
            elif kind in kinds:
                setattr(c, kinds[kind], int(v))
        for c in counts.values():
            c.pending -= c.succeeded + c.failed + c.pruned
        return RunStatus(
            run_id,
            h.get("graph", ""),
            h.get("status", "RUNNING"),
            int(h.get("open", 0)),
            int(h.get("created_ms", 0)),
            int(h["finished_ms"]) if "finished_ms" in h else None,
            counts,
            notes,
        )

    async def wait(self, run_id: str, timeout: float = 60.0) -> RunStatus:
        """Wait until the run is finished; raises TimeoutError naming the run."""
        return (await self.wait_all([run_id], timeout))[run_id]

    async def wait_all(self, run_ids: Iterable[str], timeout: float = 60.0) -> dict[str, RunStatus]:
        """Wait until every run is finished, following the namespace's event stream (one
        connection however many runs); raises TimeoutError naming what is unfinished."""
        waiting = {check_name("run id", r) for r in run_ids}
        deadline = time.monotonic() + timeout
        last = await self._events_tail()  # before the first check: no event is missed
        candidates = set(waiting)
        while True:
            finished = await self._finished(candidates)
            waiting -= finished
            if not waiting:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                some = sorted(waiting)[:5]
                raise WaitTimedOut(
                    f"{len(waiting)} run(s) not finished after {timeout}s, e.g. {some}"
                )
            block = max(1, int(min(left, MAX_BLOCK_S) * 1000))
            reply = await self.client.xread({self.keys.events(): last}, count=10_000, block=block)
            candidates = set()
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    run = fields.get(b"run", b"").decode()
                    if run in waiting:
                        candidates.add(run)
            if not reply:
                candidates = set(waiting)  # idle second: re-check all (covers trimmed events)
        return {r: await self.status(r) for r in run_ids}

    async def _finished(self, run_ids: set[str]) -> set[str]:
        ids = list(run_ids)
        done: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for r in chunk:
                pipe.hget(self.keys.run(r), "status")
            for r, st in zip(chunk, await pipe.execute(), strict=True):
                if st is None:
                    raise RunNotFound(f"run {r!r} not found (unknown, or expired after retention)")
                if st != b"RUNNING":
                    done.add(r)
        return done

    async def _events_tail(self) -> bytes | str:
        tail = await self.client.xrevrange(self.keys.events(), count=1)
        return tail[0][0] if tail else "0"

    async def results(self, run_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """Outputs of the run's leaf states ({identifier, state, outputs}); with `timeout`,
        wait for the run to finish first."""
        check_name("run id", run_id)
        if timeout is not None:
            await self.wait(run_id, timeout)
        raw = await self.client.lrange(self.keys.run_results(run_id), 0, -1)
        return [unpack(r) for r in raw]

    async def list_runs(self, graph_name: str, offset: int = 0, count: int = 50) -> list[RunStatus]:
        """Recent runs of a graph, newest first (runs expired after retention are dropped)."""
        check_name("graph name", graph_name)
        ids = await self.client.zrevrange(self.keys.runs(graph_name), offset, offset + count - 1)
        out: list[RunStatus] = []
        gone: list[bytes] = []
        for raw in ids:
            try:
                out.append(await self.status(raw.decode()))
            except RunNotFound:
                gone.append(raw)
        if gone:
            await self.client.zrem(self.keys.runs(graph_name), *gone)
        return out

    async def run_history(self, run_id: str) -> list[StateRecord]:
        """Every settled outcome of the run's states, in settle order."""
        raw = await self.client.lrange(self.keys.run_history(check_name("run id", run_id)), 0, -1)
        out: list[StateRecord] = []
        for r in raw:
            d = unpack(r)
            out.append(
                StateRecord(
                    d["state"],
                    d["identifier"] or "",
                    d["node"],
                    d["status"],
                    int(d["attempt"]),
                    d["error"],
                    int(d["time_ms"]),
                )
            )
        return out
