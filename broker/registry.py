"""The namespace's node registry (Keys.nodes): node name -> the schema JSON a Runtime
registered, which graphs are validated against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exospherehost.broker.client import RedisClient
from exospherehost.broker.keys import Keys


class NodeRegistry:
    __slots__ = ("_client", "_key")

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._key = keys.nodes()

    async def register(self, schemas: Mapping[str, str]) -> None:
        """Record (or overwrite) the schema JSON of each node in one HSET."""
        await self._client.hset(self._key, mapping=schemas)

    async def missing(self, names: Sequence[str]) -> list[str]:
        """The `names` without a registry entry: one pipelined HEXISTS per name."""
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hexists(self._key, name)
        present = await pipe.execute()
        return [n for n, p in zip(names, present, strict=True) if not p]

    async def names(self) -> list[str]:
        """Registered node names, sorted."""
        return sorted(k.decode() for k in await self._client.hkeys(self._key))

    async def schemas(self) -> dict[str, str]:
        """Node name -> its registered schema JSON."""
        raw = await self._client.hgetall(self._key)
        return {k.decode(): v.decode() for k, v in raw.items()}
