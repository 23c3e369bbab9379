"""What each Runtime process says about itself, for dashboards: a worker record (who it is,
what it serves, its counters), rewritten every few seconds with an expiry, and per-node
throughput counters in 10-second buckets. Written by the Runtime's reporter loop (never
on the hot path: one pipelined round trip per REPORT_S), read by StateManager.

    exo:{ns}:worker:{consumer}   string, JSON record, expires RECORD_TTL_S after the last write
    exo:{ns}:workers             zset consumer -> last write (ms); entries older than KEEP_MS go
    exo:{ns}:tput:{minute}       hash `{slot}:{done|failed}:{node}` -> count, slot = 10 s of the
                                 minute (minute = epoch s // 60); expires after TPUT_TTL_S

Bucket times are the writer's wall clock (skewed hosts shift their counts by the skew);
"last seen" is read from the record's remaining TTL, i.e. Redis's clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exospherehost.broker.client import RedisClient
from exospherehost.broker.keys import GROUP, Keys

BUCKET_S = 10
"""Width of a throughput bucket, seconds (six per minute key)."""
RECORD_TTL_S = 30
"""A live worker's record expires this long after its last write (it writes every 5 s)."""
STOPPED_TTL_S = 3600
"""A cleanly stopped worker's last record is kept this long (shown as stopped)."""
KEEP_MS = 3_600_000
"""Workers whose last record is older than this leave the index (dead ones included)."""
TPUT_TTL_S = 20 * 60
"""Throughput minutes are kept this long (the dashboard shows the last 15 minutes)."""


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    consumer: str
    written_ms: int  # when the worker last wrote it (its clock)
    record: dict[str, Any] | None  # None: expired (the worker went silent) or unreadable
    ttl_ms: int  # remaining time to live of the record (-2: gone)


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of one node's group, as XINFO CONSUMERS reports it."""

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # Redis >= 7.2 only


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """(member, score) of a ZRANGE ... WITHSCORES reply, flat or paired (redis-py parses
    it as pairs for some protocol versions)."""
    items = list(reply or ())
    if items and isinstance(items[0], list | tuple):
        return [(m, float(s)) for m, s in items]
    return [(m, float(s)) for m, s in zip(items[::2], items[1::2], strict=True)]


def _slot_field(slot: int, kind: str, node: str) -> str:
    return f"{slot}:{kind}:{node}"


class WorkerBoard:
    __slots__ = ("_client", "keys")

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    async def publish(
        self,
        consumer: str,
        record: Mapping[str, Any],
        now_ms: int,
        counts: Mapping[str, tuple[int, int]] | None = None,
        bucket_s: int | None = None,
        ttl_s: int = RECORD_TTL_S,
    ) -> None:
        """Write `consumer`'s record (expiring after `ttl_s`) and index it; with `counts`
        (node -> (done, failed) since the last publish), add them to the throughput bucket
        that starts at epoch second `bucket_s`. One pipelined round trip."""
        pipe = self._client.pipeline(transaction=False)
        body = json.dumps(dict(record), separators=(",", ":"))
        pipe.execute_command("SET", self.keys.worker(consumer), body, "EX", ttl_s)
        pipe.execute_command("ZADD", self.keys.workers(), now_ms, consumer)
        pipe.execute_command("ZREMRANGEBYSCORE", self.keys.workers(), "-inf", now_ms - KEEP_MS)
        if counts and bucket_s is not None:
            minute, slot = divmod(bucket_s, 60)
            key = self.keys.throughput(minute)
            wrote = False
            for node, (done, failed) in counts.items():
                for kind, n in (("done", done), ("failed", failed)):
                    if n:
                        pipe.execute_command(
                            "HINCRBY", key, _slot_field(slot // BUCKET_S, kind, node), n
                        )
                        wrote = True
            if wrote:
                pipe.execute_command("EXPIRE", key, TPUT_TTL_S)
        await pipe.execute()

    async def records(self) -> list[WorkerRecord]:
        """Every indexed worker, most recently written first, with its record (None once
        expired) and the record's remaining TTL."""
        index = await self._client.execute_command(
            "ZRANGE", self.keys.workers(), 0, -1, "REV", "WITHSCORES"
        )
        pairs = _pairs(index)
        if not pairs:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name, _ in pairs:
            key = self.keys.worker(name.decode())
            pipe.execute_command("GET", key)
            pipe.execute_command("PTTL", key)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for i, (name, score) in enumerate(pairs):
            raw, ttl = replies[2 * i], replies[2 * i + 1]
            record = None
            if isinstance(raw, bytes):
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                record = parsed if isinstance(parsed, dict) else None
            out.append(
                WorkerRecord(
                    name.decode(),
                    int(score),
                    record,
                    int(ttl) if isinstance(ttl, int) else -2,
                )
            )
        return out

    async def throughput(
        self, start_s: int, end_s: int, nodes: Sequence[str] | None = None
    ) -> dict[str, dict[str, list[int]]]:
        """node -> {"done": [...], "failed": [...]}: counts per BUCKET_S bucket from epoch
        second `start_s` (inclusive, rounded down to a bucket) to `end_s` (exclusive), one
        HGETALL per minute in one round trip. `nodes`: always listed, even with no counts."""
        first = start_s - start_s % BUCKET_S
        n = max((end_s - first + BUCKET_S - 1) // BUCKET_S, 0)
        minutes = list(range(first // 60, (first + n * BUCKET_S - 1) // 60 + 1)) if n else []
        pipe = self._client.pipeline(transaction=False)
        for minute in minutes:
            pipe.execute_command("HGETALL", self.keys.throughput(minute))
        replies = await pipe.execute() if minutes else []
        out: dict[str, dict[str, list[int]]] = {
            node: {"done": [0] * n, "failed": [0] * n} for node in nodes or ()
        }
        for minute, reply in zip(minutes, replies, strict=True):
            flat = [] if isinstance(reply, dict) else list(reply)
            items = (
                reply.items()
                if isinstance(reply, dict)
                else zip(flat[::2], flat[1::2], strict=True)
            )
            for raw_field, raw_count in items:
                slot, kind, node = raw_field.decode().split(":", 2)
                index = (minute * 60 + int(slot) * BUCKET_S - first) // BUCKET_S
                if 0 <= index < n and kind in ("done", "failed"):
                    series = out.setdefault(node, {"done": [0] * n, "failed": [0] * n})
                    series[kind][index] += int(raw_count)
        return out

    async def consumers(self, nodes: Sequence[str]) -> dict[str, list[ConsumerInfo]]:
        """node -> the consumers of its group (a missing stream or group: none), in one
        round trip."""
        pipe = self._client.pipeline(transaction=False)
        for node in nodes:
            pipe.xinfo_consumers(self.keys.queue(node), GROUP)
        replies = await pipe.execute(raise_on_error=False)
        out: dict[str, list[ConsumerInfo]] = {}
        for node, reply in zip(nodes, replies, strict=True):
            found = []
            for c in reply if isinstance(reply, list) else ():
                name = c.get("name")
                found.append(
                    ConsumerInfo(
                        name.decode() if isinstance(name, bytes) else str(name),
                        int(c.get("pending", 0)),
                        int(c.get("idle", 0)),
                        int(c["inactive"]) if c.get("inactive") is not None else None,
                    )
                )
            out[node] = found
        return out

    async def namespace_in_use(self) -> bool:
        """Whether anything says the namespace is used on this Redis: registered nodes,
        graphs, dead letters or worker records (one EXISTS)."""
        k = self.keys
        found = await self._client.execute_command(
            "EXISTS", k.nodes(), k.graphs(), k.dead(), k.workers()
        )
        return bool(found)

    async def alive(self) -> dict[str, int]:
        """consumer -> when it last recorded itself alive (Redis time, ms; see
        broker/lua/prune_consumers.lua)."""
        reply = await self._client.execute_command("ZRANGE", self.keys.alive(), 0, -1, "WITHSCORES")
        return {n.decode(): int(s) for n, s in _pairs(reply)}
