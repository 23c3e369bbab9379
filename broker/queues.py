"""Read-only figures of node streams (backlog, pending, delayed, consumers) and the output
streams of graphless states, as frozen records: for StateManager, `exosphere status` and a
Runtime's metrics gauges."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class NodeStats:
    length: int
    delayed: int
    pending: int
    lag: int | None  # entries the group has yet to read, as Redis reports it
    consumers: int
    oldest_pending_ms: int  # since the oldest pending entry was delivered (0: none)


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
        replies = await pipe.execute(raise_on_error=False)
        parts = [_node_stats(*replies[i : i + 5]) for i in range(0, len(replies), 5)]
        if len(parts) == 1:
            return parts[0]
        lags = [p.lag for p in parts]
        return NodeStats(
            length=sum(p.length for p in parts),
            delayed=sum(p.delayed for p in parts),
            pending=sum(p.pending for p in parts),
            lag=None if None in lags else sum(int(lag or 0) for lag in lags),
            consumers=max(p.consumers for p in parts),
            oldest_pending_ms=max(p.oldest_pending_ms for p in parts),
        )

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


def _node_stats(length: Any, delayed: Any, groups: Any, consumers: Any, oldest: Any) -> NodeStats:
    """One lane's figures of a node from its five pipelined replies (errors read as 0)."""
    group = groups[0] if isinstance(groups, list) and groups else {}
    return NodeStats(
        length=int(length) if isinstance(length, int) else 0,
        delayed=int(delayed) if isinstance(delayed, int) else 0,
        pending=int(group.get("pending", 0)),
        lag=group.get("lag"),
        consumers=len(consumers) if isinstance(consumers, list) else 0,
        oldest_pending_ms=(
            int(oldest[0]["time_since_delivered"]) if isinstance(oldest, list) and oldest else 0
        ),
    )


async def namespaces(client: RedisClient) -> list[str]:
    """Namespaces with a node registry on this Redis (SCAN, not KEYS)."""
    found = set()
    async for k in client.scan_iter(match=NODES_PATTERN, count=1000):
        name = k.decode()
        found.add(name[name.index("{") + 1 : name.rindex("}")])
    return sorted(found)
