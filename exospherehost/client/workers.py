"""StateManager methods over what Runtime processes say about themselves (worker records and
throughput buckets, broker/workers.py) and what the consumer groups say about them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker.streams import Broker
from exospherehost.broker.workers import BUCKET_S, RECORD_TTL_S, STOPPED_TTL_S
from exospherehost.errors import InvalidArgument


@dataclass(frozen=True)
class WorkerInfo:
    """One worker (a Runtime process, i.e. one consumer), as its record and the consumer
    groups tell it. `state`: serving | stopped (left cleanly) | lost (its record expired:
    killed, hung or cut off from Redis) | unknown (in a group, with no record: a Runtime
    of an older version, or silent for over an hour)."""

    consumer: str
    state: str
    last_seen_ms: int | None  # ms ago (None: never heard from)
    runtime: str | None = None
    host: str | None = None
    pid: int | None = None
    nodes: list[str] = field(default_factory=list)
    concurrency: int | None = None
    inflight: int | None = None  # read or claimed, not settled yet
    executing: int | None = None
    processed: int | None = None  # executions that succeeded or pruned, since it started
    failed: int | None = None  # executions that raised, since it started
    started_ms: int | None = None
    pending: int = 0  # entries its consumers hold in the groups (XINFO CONSUMERS)
    groups: list[str] = field(default_factory=list)  # nodes whose group lists it
    per_node: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Throughput:
    """Per node, states done (succeeded or pruned) and failed per BUCKET_S bucket, oldest
    first, from `start_ms`; the bucket still filling is left out."""

    start_ms: int
    bucket_s: int
    nodes: dict[str, dict[str, list[int]]]


def _consumer_part(name: str, index: int) -> str | None:
    """A part of a Runtime's consumer name `runtime:host:pid:random`."""
    parts = name.rsplit(":", 3)
    return parts[index] if len(parts) == 4 else None


class WorkersMixin:
    """StateManager methods over the namespace's workers; needs `broker`."""

    broker: Broker

    async def workers(self) -> list[WorkerInfo]:
        """Every worker heard from in the last hour or listed in a node's group: serving
        ones first, then stopped, lost and unknown; within each, by consumer name."""
        board = self.broker.workers
        nodes = await self.broker.registry.names()
        records, groups, alive = await asyncio.gather(
            board.records(), board.consumers(nodes), board.alive()
        )
        in_groups: dict[str, tuple[int, int, list[str]]] = {}  # name -> pending, idle, nodes
        for node, consumers in groups.items():
            for c in consumers:
                pending, idle, listed = in_groups.get(c.name, (0, c.idle_ms, []))
                in_groups[c.name] = (pending + c.pending, min(idle, c.idle_ms), [*listed, node])
        now_ms = int(time.time() * 1000)
        out: list[WorkerInfo] = []
        for r in records:
            pending, _, listed = in_groups.pop(r.consumer, (0, 0, []))
            rec: dict[str, Any] = r.record or {}
            if r.record is None:
                state, seen = "lost", max(now_ms - r.written_ms, 0)
            elif rec.get("state") == "stopped":
                state, seen = "stopped", max(STOPPED_TTL_S * 1000 - r.ttl_ms, 0)
            else:
                state, seen = "serving", max(RECORD_TTL_S * 1000 - r.ttl_ms, 0)
            out.append(
                WorkerInfo(
                    r.consumer,
                    state,
                    seen,
                    runtime=rec.get("runtime", _consumer_part(r.consumer, 0)),
                    host=rec.get("host", _consumer_part(r.consumer, 1)),
                    pid=_int(rec.get("pid", _consumer_part(r.consumer, 2))),
                    nodes=list(rec.get("nodes") or listed),
                    concurrency=_int(rec.get("concurrency")),
                    inflight=_now(state, rec.get("inflight")),
                    executing=_now(state, rec.get("executing")),
                    processed=_int(rec.get("processed")),
                    failed=_int(rec.get("failed")),
                    started_ms=_int(rec.get("started_ms")),
                    pending=pending,
                    groups=listed,
                    per_node=dict(rec.get("per_node") or {}),
                )
            )
        for name, (pending, idle, listed) in in_groups.items():
            seen = now_ms - alive[name] if name in alive else idle
            out.append(
                WorkerInfo(
                    name,
                    "unknown",
                    max(seen, 0),
                    runtime=_consumer_part(name, 0),
                    host=_consumer_part(name, 1),
                    pid=_int(_consumer_part(name, 2)),
                    nodes=listed,
                    pending=pending,
                    groups=listed,
                )
            )
        order = {"serving": 0, "stopped": 1, "lost": 2, "unknown": 3}
        out.sort(key=lambda w: (order[w.state], w.consumer))
        return out

    async def in_use(self) -> bool:
        """Whether the namespace exists on this Redis: registered nodes, graphs, dead
        letters or workers heard from in the last hour."""
        return await self.broker.workers.namespace_in_use()

    async def throughput(self, minutes: int = 15) -> Throughput:
        """Done and failed states per node per 10 s over the last `minutes` (at most 20,
        as long as Runtimes keep their buckets), every registered node listed."""
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 20:
            raise InvalidArgument(f"minutes must be an int from 1 to 20, got {minutes!r}")
        now = int(time.time())
        end = now - now % BUCKET_S  # the bucket still filling is left out
        start = end - minutes * 60
        nodes = await self.broker.registry.names()
        series = await self.broker.workers.throughput(start, end, nodes)
        return Throughput(start * 1000, BUCKET_S, series)


def _now(state: str, value: object) -> int | None:
    """A figure of the present: as recorded while serving, 0 once stopped cleanly, not
    known (None) for a worker that went silent."""
    return _int(value) if state == "serving" else 0 if state == "stopped" else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
