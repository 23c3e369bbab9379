"""Graph templates as stored (Keys.graphs, graph_seq, graph, version_secrets,
secret_versions, secrets): the reads and writes
behind exospherehost.graphstore.GraphStore, which owns what the documents mean."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from exospherehost.broker import fields
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
        self,
        name: str,
        version: int,
        document: bytes,
        secrets: Mapping[str, bytes] | None,
        old_secrets_ttl_s: int,
    ) -> None:
        """Write the document and (when any) the version's own secrets, and point the graph
        at the document, in one MULTI; then give the secrets of every older version (and
        those stored before secrets were kept per version) an expiry of
        `old_secrets_ttl_s` if they have none yet (see `retire_secrets`)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self.keys.graph(name, version), document)
        if secrets:
            pipe.hset(self.keys.version_secrets(name, version), mapping=dict(secrets))
            pipe.zadd(self.keys.secret_versions(name), {str(version): version})
        pipe.hset(self.keys.graphs(), name, version)
        await pipe.execute()
        await self.retire_secrets(name, version, old_secrets_ttl_s, legacy=True)

    async def retire_secrets(
        self, name: str, current: int, ttl_s: int, legacy: bool = False
    ) -> list[int]:
        """Give the secrets of `name`'s versions older than `current` (and with `legacy`,
        the graph's hash from before secrets were kept per version: only once a version
        with its own secrets replaced it) an expiry of `ttl_s` where they have none
        (EXPIRE NX: a retired version's clock is not reset by later upserts), and forget
        versions whose secrets are gone. Idempotent: every upsert re-applies it to every
        older version, so one that raced another upsert is retired by the next. Returns
        the older versions whose secrets are still stored."""
        index = self.keys.secret_versions(name)
        raw = await self._client.execute_command("ZRANGE", index, "-inf", f"({current}", "BYSCORE")
        older = [int(v) for v in raw]
        pipe = self._client.pipeline(transaction=False)
        # EXPIRE ... NX needs Redis 7 (as the scripts' `#!lua` flags do).
        for v in older:
            pipe.execute_command("EXPIRE", self.keys.version_secrets(name, v), ttl_s, "NX")
            pipe.execute_command("EXISTS", self.keys.version_secrets(name, v))
        if legacy:
            pipe.execute_command("EXPIRE", self.keys.secrets(name), ttl_s, "NX")
        replies = await pipe.execute()
        exists = replies[1 : 2 * len(older) : 2]
        gone = [v for v, e in zip(older, exists, strict=True) if not e]
        if gone:
            await self._client.zrem(index, *(str(v) for v in gone))
        return [v for v, e in zip(older, exists, strict=True) if e]

    async def running_versions(
        self, name: str, versions: Collection[int], chunk: int = 1000
    ) -> set[int]:
        """Which of `versions` have a RUNNING run among `name`'s indexed runs (its newest
        RUN_INDEX_SIZE), newest first, in pipelined chunks; stops once all are found."""
        wanted = {str(v).encode(): v for v in versions}
        found: set[int] = set()
        if not wanted:
            return found
        ids = await self._client.zrevrange(self.keys.runs(name), 0, -1)
        for i in range(0, len(ids), chunk):
            pipe = self._client.pipeline(transaction=False)
            for run_id in ids[i : i + chunk]:
                run = self.keys.run(run_id.decode())
                pipe.execute_command("HMGET", run, fields.RUN_VERSION, fields.RUN_STATUS)
            for version, status in await pipe.execute():
                if status == fields.RUNNING.encode() and version in wanted:
                    found.add(wanted[version])
            if len(found) == len(wanted):
                break
        return found

    async def remove(self, name: str, version: int, ttl_s: int, keep_runs: bool) -> bool:
        """Take graph `name` out of the namespace (no new runs or cron fires; `get_graph`
        does not find it), in one MULTI: its pointer, and unless `keep_runs` its run index;
        its current version's secrets get the expiry of a replaced version's (runs left
        to finish still read them). Documents of its versions stay (runs pinned to them,
        their redrives); the version counter stays, so a graph of the same name upserted
        later gets new version numbers. False when it was not there (any more)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self.keys.graphs(), name)
        if keep_runs:
            pipe.execute_command("SADD", self.keys.retired_graphs(), name)
        else:
            pipe.delete(self.keys.runs(name))
        pipe.execute_command("EXPIRE", self.keys.version_secrets(name, version), ttl_s, "NX")
        pipe.execute_command("EXPIRE", self.keys.secrets(name), ttl_s, "NX")
        replies = await pipe.execute()
        return bool(replies[0])

    async def drop_run_indexes(self, name: str, lanes: Sequence[Keys]) -> None:
        """Delete `name`'s run index on each of `lanes` (other lanes than lane 0, whose
        index `remove` drops: on a cluster each lane is its own slot, outside that MULTI)."""
        for keys in lanes:
            if keys.lane != self.keys.lane:
                await self._client.execute_command("DEL", keys.runs(name))

    async def retired(self) -> list[str]:
        """Graphs deleted while runs of them were in flight (`remove` with keep_runs)."""
        members = await self._client.execute_command("SMEMBERS", self.keys.retired_graphs())
        return sorted(m.decode() for m in members)

    async def forget_retired(self, names: Sequence[str]) -> None:
        """Drop `names` from the retired set: no run of theirs is listed any more."""
        if names:
            await self._client.execute_command("SREM", self.keys.retired_graphs(), *names)

    async def sweep_lease(self, period_s: int) -> bool:
        """True for the one caller per `period_s` that gets to sweep the namespace."""
        return bool(
            await self._client.execute_command(
                "SET", self.keys.secrets_sweep(), "1", "NX", "EX", period_s
            )
        )

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

    async def secrets(self, name: str, version: int | None) -> dict[bytes, bytes]:
        """The secrets of version `version` of `name` as stored: name -> Fernet token;
        `version` None reads the graph's hash from before secrets were kept per version."""
        keys = self.keys
        key = keys.secrets(name) if version is None else keys.version_secrets(name, version)
        return await self._client.hgetall(key)

    async def extend_secrets(self, name: str, version: int, ttl_s: int) -> None:
        """Push the expiry of a replaced version's secrets to `ttl_s` from now (EXPIRE GT:
        the current version's, which have none, stay persistent)."""
        key = self.keys.version_secrets(name, version)
        await self._client.execute_command("EXPIRE", key, ttl_s, "GT")

    async def secrets_of(self, graphs: Mapping[str, int | None]) -> dict[str, dict[bytes, bytes]]:
        """`secrets` of each graph -> version in `graphs`, in one pipelined round trip."""
        if not graphs:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for name, version in graphs.items():
            pipe.hgetall(
                self.keys.secrets(name)
                if version is None
                else self.keys.version_secrets(name, version)
            )
        return dict(zip(graphs, await pipe.execute(), strict=True))
