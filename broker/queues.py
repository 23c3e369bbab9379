"""Read-only figures of node streams (backlog, pending, delayed, consumers) and the output
streams of graphless states, as frozen records: for StateManager, `exosphere status` and a
Runtime's metrics gauges."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError

from exospherehost.broker import fields as f
from exospherehost.broker.client import RedisClient, StreamEntry
from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import GROUP, NODES_PATTERN, Keys

_OUT_STATE, _OUT_STATUS = f.OUT_STATE.encode(), f.OUT_STATUS.encode()
_OUT_OUTPUTS, _OUT_DATA, _OUT_ERROR = (
    f.OUT_OUTPUTS.encode(),
    f.OUT_DATA.encode(),
    f.OUT_ERROR.encode(),
)


@dataclass(frozen=True, slots=True)
class QueueCounts:
    length: int  # entries on the stream: backlog + pending (settled entries are deleted)
    pending: int  # delivered to a worker, not yet settled
    delayed: int  # waiting in the delayed set for their due time


LIVE_IDLE_MS = 30_000
"""A consumer idle in its group (XINFO) for less than this (the default visibility
timeout) counts as a live worker."""

RECORD_WINDOW_MS = 60_000
"""...or one whose worker record (Keys.workers: a Runtime rewrites it every 5 s, its
clock) was written this recently: twice the record's 30 s expiry, for clock skew. A
consumer in that index is judged by it alone: killed, it stops counting within a minute.

ALIVE_WINDOW_MS = 300_000: ...otherwise (a Runtime that writes no worker record), one
recorded in the namespace's alive set (Keys.alive) this recently: Runtimes record
themselves there every half of their consumer idle bound (by default max(10 x visibility
timeout, 5 min)), also while their streams are empty (Redis 7.0 does not refresh the
idle time of a consumer whose read returned nothing)."""

ALIVE_WINDOW_MS = 300_000


@dataclass(frozen=True, slots=True)
class NodeStats:
    length: int
    delayed: int
    pending: int
    lag: int | None  # entries the group has yet to read, as Redis reports it
    consumers: int  # live ones: workers that read or said they were alive lately
    oldest_pending_ms: int  # since the oldest pending entry was delivered (0: none)
    consumers_total: int = 0  # in the group, dead workers' included (until pruned)


@dataclass(frozen=True, slots=True)
class StreamCounters:
    added: int  # entries ever added to the stream (Redis >= 7)
    length: int


@dataclass(frozen=True, slots=True)
class Output:
    """An entry of a node's output stream: the result of a graphless state."""

    entry_id: str
    state_id: str
    status: str  # SUCCEEDED | FAILED | PRUNED
    outputs: Any  # decoded outputs (success) or data (prune); None for a failure
    error: str | None

    @classmethod
    def parse(cls, entry_id: bytes, e: dict[bytes, bytes]) -> Output:
        payload = e.get(_OUT_OUTPUTS, e.get(_OUT_DATA))
        return cls(
            entry_id.decode(),
            e[_OUT_STATE].decode(),
            e[_OUT_STATUS].decode(),
            None if payload is None else unpack(payload),
            e[_OUT_ERROR].decode() if _OUT_ERROR in e else None,
        )


class QueueReader:
    """Figures of `keys`' lane; with `lanes` (lane 0's reader) the figures of a node are
    summed over every lane in use (consumers and the oldest pending age: the largest).
    Output streams are lane 0's: the SDK enqueues graphless states there (one stream a
    reader follows with one cursor)."""

    __slots__ = ("_client", "_lanes", "keys")

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        lanes: Callable[[], Awaitable[list[Keys]]] | None = None,
    ) -> None:
        self._client = client
        self.keys = keys
        self._lanes = lanes

    async def _lane_keys(self) -> list[Keys]:
        return [self.keys] if self._lanes is None else await self._lanes()

    async def counts(self, node: str) -> QueueCounts:
        """Stream length, pending and delayed counts of `node` (pending 0 when the stream
        or its group is missing)."""
        length = pending = delayed = 0
        for keys in await self._lane_keys():
            stream = keys.queue(node)
            length += await self._client.xlen(stream)
            try:
                info = await self._client.xpending(stream, GROUP)
                pending += int(info["pending"])
            except Exception:
                pass
            delayed += await self._client.zcard(keys.delayed(node))
        return QueueCounts(int(length), pending, int(delayed))

    async def stats(self, node: str) -> NodeStats:
        """The figures of `node` in one pipelined round trip; a missing stream or group
        reads as zeros."""
        lanes = await self._lane_keys()
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            q = keys.queue(node)
            pipe.xlen(q)
            pipe.zcard(keys.delayed(node))
            pipe.xinfo_groups(q)
            pipe.xinfo_consumers(q, GROUP)
            pipe.xpending_range(q, GROUP, min="-", max="+", count=1)
            pipe.execute_command("ZRANGE", keys.alive(), 0, -1, "WITHSCORES")
        pipe.execute_command("ZRANGE", self.keys.workers(), 0, -1, "WITHSCORES")
        pipe.execute_command("TIME")
        replies = await pipe.execute(raise_on_error=False)
        records, now = replies[-2:]
        parts = []
        for i in range(0, len(replies) - 2, 6):
            length, delayed, groups, consumers, oldest, alive = replies[i : i + 6]
            parts.append(
                _node_stats(length, delayed, groups, consumers, oldest, alive, records, now)
            )
        if len(parts) == 1:
            return parts[0]
        lags = [p.lag for p in parts]
        return NodeStats(
            length=sum(p.length for p in parts),
            delayed=sum(p.delayed for p in parts),
            pending=sum(p.pending for p in parts),
            lag=None if None in lags else sum(int(lag or 0) for lag in lags),
            # Every Runtime of the node serves every lane: a worker counts once.
            consumers=max(p.consumers for p in parts),
            oldest_pending_ms=max(p.oldest_pending_ms for p in parts),
            consumers_total=max(p.consumers_total for p in parts),
        )

    async def streams(self) -> list[str]:
        """Nodes with a stream in the namespace (SCAN of the queue keys), registered or
        not: a state enqueued for a node no Runtime serves sits on one."""
        prefix = self.keys.queue("")
        found = {
            k.decode()[len(prefix) :]
            async for k in self._client.scan_iter(match=prefix + "*", count=1000)
        }
        return sorted(found)

    async def counters(self, nodes: Sequence[str]) -> dict[str, StreamCounters]:
        """node -> its stream's counters (summed over lanes), in one round trip; nodes
        whose stream is missing (or whose Redis predates entries-added) are left out."""
        lanes = await self._lane_keys()
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            for node in nodes:
                pipe.xinfo_stream(keys.queue(node))
        replies = iter(await pipe.execute(raise_on_error=False))
        out: dict[str, StreamCounters] = {}
        for _ in lanes:
            for node in nodes:
                info = next(replies)
                if isinstance(info, dict) and info.get("entries-added") is not None:
                    had = out.get(node, StreamCounters(0, 0))
                    out[node] = StreamCounters(
                        had.added + int(info["entries-added"]), had.length + int(info["length"])
                    )
        return out

    async def outputs(
        self, node: str, after: str, count: int, block_ms: int | None
    ) -> list[Output]:
        """Results on `node`'s output stream after entry id `after` ("0": from the
        start), oldest first; with `block_ms`, waiting that long for the first."""
        stream = self.keys.output(node)
        entries: list[StreamEntry]
        if block_ms is None:
            entries = await self._client.xrange(
                stream, min=f"({after}" if after != "0" else "-", count=count
            )
        else:
            reply = await self._client.xread({stream: after}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        return [Output.parse(i, e) for i, e in entries]

    async def newest_outputs(self, node: str, count: int) -> list[Output]:
        """The newest `count` results on `node`'s output stream, oldest first."""
        entries = await self._client.xrevrange(self.keys.output(node), count=count)
        return [Output.parse(i, e) for i, e in reversed(entries)]


def _node_stats(
    length: Any,
    delayed: Any,
    groups: Any,
    consumers: Any,
    oldest: Any,
    alive: Any,
    records: Any,
    now: Any,
) -> NodeStats:
    """One lane's figures of a node from its pipelined replies (errors read as 0)."""
    group = groups[0] if isinstance(groups, list) and groups else {}
    members = consumers if isinstance(consumers, list) else []
    return NodeStats(
        length=int(length) if isinstance(length, int) else 0,
        delayed=int(delayed) if isinstance(delayed, int) else 0,
        pending=int(group.get("pending", 0)),
        lag=group.get("lag"),
        consumers=_live(members, alive, records, now),
        oldest_pending_ms=(
            int(oldest[0]["time_since_delivered"]) if isinstance(oldest, list) and oldest else 0
        ),
        consumers_total=len(members),
    )


def _scores(reply: Any) -> dict[str, float]:
    """member -> score of a ZRANGE ... WITHSCORES reply (flat, or pairs; {} on an error)."""
    if not isinstance(reply, list):
        return {}
    if reply and isinstance(reply[0], list | tuple):
        pairs = [(m, sc) for m, sc in reply]
    else:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
    return {(m.decode() if isinstance(m, bytes) else str(m)): float(sc) for m, sc in pairs}


def _live(consumers: list[Any], alive: Any, records: Any, now: Any) -> int:
    """How many of the group's consumers (XINFO CONSUMERS) are live workers: idle less
    than LIVE_IDLE_MS; else, for one in the worker-record index, a record written within
    RECORD_WINDOW_MS; else, in the alive set within ALIVE_WINDOW_MS."""
    seen, written = _scores(alive), _scores(records)
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000 if isinstance(now, list | tuple) else 0
    live = 0
    for c in consumers:
        name = c.get("name", b"")
        name = name.decode() if isinstance(name, bytes) else str(name)
        if int(c.get("idle", LIVE_IDLE_MS)) < LIVE_IDLE_MS:
            live += 1
        elif name in written:
            live += now_ms - written[name] <= RECORD_WINDOW_MS
        elif now_ms - seen.get(name, -1e18) <= ALIVE_WINDOW_MS:
            live += 1
    return live


async def namespaces(client: RedisClient) -> list[str]:
    """Namespaces with a node registry on this Redis (SCAN, not KEYS; on a Redis Cluster
    every primary is scanned), leaving out those the ACL user may not read: SCAN lists
    every key, and a view spanning namespaces should skip the ones it cannot show
    rather than fail on them (one pipelined EXISTS per namespace tells)."""
    found: dict[str, bytes] = {}  # namespace -> its registry key
    async for k in client.scan_iter(match=NODES_PATTERN, count=1000):
        name = k.decode()
        found[name[name.index("{") + 1 : name.rindex("}")]] = k
    names = sorted(found)
    if not names:
        return names
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(found[name])
    replies = await pipe.execute(raise_on_error=False)
    return [n for n, r in zip(names, replies, strict=True) if not isinstance(r, NoPermissionError)]
