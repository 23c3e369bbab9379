"""Graph templates as stored (Keys.graphs, graph_seq, graph, secrets): the reads and writes
behind exospherehost.graphstore.GraphStore, which owns what the documents mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exospherehost.broker.client import RedisClient
from exospherehost.broker.keys import Keys


class GraphRecords:
    __slots__ = ("_client", "keys")

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self.keys = keys

    async def clock(self) -> tuple[int, int]:
        """Redis's clock (TIME): (seconds, microseconds)."""
        seconds, micros = await self._client.time()
        return int(seconds), int(micros)

    async def next_version(self, name: str, floor: int) -> int:
        """Count `name`'s version counter up by one, starting it at `floor` when it is
        missing; one MULTI."""
        seq = self.keys.graph_seq()
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(seq, name, floor)  # only when missing
        pipe.hincrby(seq, name, 1)
        _, version = await pipe.execute()
        return int(version)

    async def save(
        self, name: str, version: int, document: bytes, secrets: Mapping[str, bytes] | None
    ) -> None:
        """Write the document and (when given) replace the graph's secrets, and point the
        graph at the document, in one MULTI."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self.keys.graph(name, version), document)
        if secrets is not None:
            pipe.delete(self.keys.secrets(name))
            if secrets:
                pipe.hset(self.keys.secrets(name), mapping=secrets)
        pipe.hset(self.keys.graphs(), name, version)
        await pipe.execute()

    async def current_version(self, name: str) -> int | None:
        v = await self._client.hget(self.keys.graphs(), name)
        return int(v) if v is not None else None

    async def versions(self) -> dict[str, int]:
        """Every graph of the namespace -> its current version."""
        raw = await self._client.hgetall(self.keys.graphs())
        return {k.decode(): int(v) for k, v in raw.items()}

    async def document(self, name: str, version: int) -> bytes | None:
        return await self._client.get(self.keys.graph(name, version))

    async def names(self) -> list[str]:
        return sorted(k.decode() for k in await self._client.hkeys(self.keys.graphs()))

    async def secrets(self, name: str) -> dict[bytes, bytes]:
        """The graph's secrets as stored: name -> Fernet token."""
        return await self._client.hgetall(self.keys.secrets(name))

    async def secrets_of(self, names: Sequence[str]) -> dict[str, dict[bytes, bytes]]:
        """`secrets` of each graph in `names`, in one pipelined round trip."""
        if not names:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.secrets(name))
        return dict(zip(names, await pipe.execute(), strict=True))
