"""Redis I/O of the transport: groups, batched reads, publishing and the Lua script calls.

Everything here is a thin, typed wrapper over one Redis round trip; decisions live elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from broker.keys import ENVELOPE_FIELD, GROUP, Keys
from broker.plan import SettlePlan

RawRedis: TypeAlias = Any
"""A `redis.asyncio.Redis` with decode_responses=False. redis-py's stubs type every reply as
the union of all decode_responses shapes (bytes | str) and mapping arguments invariantly;
this project always uses bytes replies, so the client is handled untyped and replies are
decoded where they are read."""

Entry = tuple[bytes, dict[bytes, bytes]]
"""(entry id, fields) as redis-py returns them with decode_responses=False."""


def _lua(name: str) -> str:
    return resources.files("broker").joinpath("lua", name).read_text()


class Broker:
    """One namespace's streams on one Redis connection pool."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client: RawRedis = client
        self.keys = Keys(namespace)
        # register_script sends EVALSHA and falls back to EVAL on NOSCRIPT (e.g. after a
        # Redis restart flushed the script cache).
        self._settle = client.register_script(_lua("settle.lua"))
        self._promote = client.register_script(_lua("promote.lua"))

    async def ensure_groups(self, nodes: Iterable[str]) -> None:
        """Create each node's stream and group from id 0, so entries added before any
        worker ran are delivered too."""
        for node in nodes:
            try:
                await self.client.xgroup_create(self.keys.queue(node), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self, consumer: str, nodes: Sequence[str], count: int, block_ms: int | None
    ) -> list[tuple[str, list[Entry]]]:
        """One XREADGROUP over all node streams: [(node, entries), ...]."""
        streams = {self.keys.queue(n): ">" for n in nodes}
        reply = await self.client.xreadgroup(
            GROUP,
            consumer,
            streams,
            count=count,
            block=block_ms,
        )
        if not reply:
            return []
        prefix = len(self.keys.queue(""))
        out: list[tuple[str, list[Entry]]] = []
        # RESP2 gives [[stream, entries], ...]; RESP3 gives {stream: [entries]}.
        pairs = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in pairs:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            if isinstance(entries, list) and entries and isinstance(entries[0], list):
                entries = entries[0]
            out.append((name[prefix:], cast(list[Entry], entries)))
        return out

    async def settle(self, plan: SettlePlan) -> list[int]:
        """Run the settle script for the whole plan (one round trip)."""
        if not plan.items:
            return []
        flags = await self._settle(keys=plan.keys, args=[GROUP, plan.encode()])
        return [int(f) for f in cast(list[Any], flags)]

    async def promote(self, nodes: Sequence[str], limit: int = 1000) -> tuple[int, int]:
        """Move due delayed states of `nodes` to their streams: (moved, next_due_ms or -1)."""
        keys: list[str] = []
        for n in nodes:
            keys += (self.keys.delayed(n), self.keys.queue(n))
        moved, next_due = cast(list[int], await self._promote(keys=keys, args=[limit]))
        return int(moved), int(next_due)

    async def publish(self, node: str, envelopes: Sequence[bytes], chunk: int = 1000) -> list[str]:
        """XADD many envelopes to `node`'s stream, pipelined in chunks; returns entry ids."""
        stream = self.keys.queue(node)
        ids: list[str] = []
        for start in range(0, len(envelopes), chunk):
            pipe = self.client.pipeline(transaction=False)
            for env in envelopes[start : start + chunk]:
                pipe.xadd(stream, {ENVELOPE_FIELD: env})
            ids += [i.decode() if isinstance(i, bytes) else str(i) for i in await pipe.execute()]
        return ids
