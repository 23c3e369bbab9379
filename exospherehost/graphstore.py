"""Graph templates in Redis: versioned, immutable documents; a per-process compiled cache.

A run pins the version it was triggered with, so upserting a graph never changes a run in
flight. Documents are msgpack maps (see `GraphDoc`).

A version number means one template forever, also when Redis loses its data (a restart
without persistence, FLUSHDB): Runtimes and StateManagers cache compiled graphs by (name,
version) for their whole life, so a counter restarting at 1 would have them run the old
template under the new number. Hence a graph's counter starts at Redis's clock in µs
(see `version_floor`) whenever it is missing, and counts up by one per upsert from
there; versions stay increasing integers across a loss."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from exospherehost.broker.client import Redis, RedisClient, typed_client
from exospherehost.broker.codec import pack, unpack
from exospherehost.broker.graphs import GraphRecords
from exospherehost.broker.keys import Keys
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import GraphNodeModel, RetryPolicyModel, StoreConfigModel
from exospherehost.secrets import SecretsCipher, SecretsError, decrypt_secrets


class GraphDoc(TypedDict):
    name: str
    version: int
    nodes: list[dict[str, Any]]
    retry_policy: dict[str, Any] | None
    store_config: dict[str, Any] | None
    triggers: list[dict[str, Any]]
    secret_names: list[str]
    validation_status: str
    validation_errors: list[str]
    updated_ms: int


def compile_doc(doc: GraphDoc) -> CompiledGraph:
    rp, sc = doc["retry_policy"], doc["store_config"]
    return CompiledGraph.build(
        doc["name"],
        doc["version"],
        [GraphNodeModel.model_validate(n) for n in doc["nodes"]],
        RetryPolicyModel.model_validate(rp) if rp is not None else None,
        StoreConfigModel.model_validate(sc) if sc is not None else None,
    )


def version_floor(seconds: int, micros: int) -> int:
    """Where a graph's version counter starts when it is missing: Redis's clock (TIME) in
    microseconds since the epoch (16 digits; exact in a double until the year 2255).

    Why this cannot repeat a version: the versions handed out before a loss are at most
    (the time the lost counter started) + (upserts since), in microseconds. The restarted
    counter starts at the time of the restart. Reaching it would have taken more than one
    upsert per microsecond over the lost counter's whole life, more than Redis can run (one
    HINCRBY per upsert; milliseconds proved too coarse: a test upserted 3 times per ms). It
    assumes Redis's clock does not step back by more than the lost counter's age. A counter
    that survives (or one from before this scheme, starting at 1) is simply incremented."""
    return seconds * 1_000_000 + micros


class GraphStore:
    def __init__(self, client: Redis | RedisClient, keys: Keys) -> None:
        self.keys = keys
        self.records = GraphRecords(typed_client(client), keys)

    async def next_version(self, name: str) -> int:
        """A version number of `name` never handed out before, even if Redis lost the
        counter (see the module docstring). Two round trips; upserts are rare."""
        seconds, micros = await self.records.clock()
        return await self.records.next_version(name, version_floor(seconds, micros))

    async def save(self, doc: GraphDoc, secrets: dict[str, bytes] | None) -> None:
        """Write the document and the graph's (already encrypted) secrets, and point the
        graph at the document, in one MULTI."""
        await self.records.save(doc["name"], doc["version"], pack(doc), secrets)

    async def current_version(self, name: str) -> int | None:
        return await self.records.current_version(name)

    async def versions(self) -> dict[str, int]:
        """Every graph of the namespace -> its current version."""
        return await self.records.versions()

    async def load(self, name: str, version: int) -> GraphDoc | None:
        raw = await self.records.document(name, version)
        return None if raw is None else unpack(raw)

    async def current(self, name: str) -> GraphDoc | None:
        version = await self.current_version(name)
        return None if version is None else await self.load(name, version)

    async def names(self) -> list[str]:
        return await self.records.names()

    async def stored_secrets(self, name: str) -> dict[bytes, bytes]:
        """The graph's secrets as stored: name -> Fernet token (see exospherehost.secrets)."""
        return await self.records.secrets(name)

    async def stored_secrets_of(self, names: list[str]) -> dict[str, dict[bytes, bytes]]:
        """`stored_secrets` of each graph in `names`, in one round trip."""
        return await self.records.secrets_of(names)


class GraphCache:
    """Compiled graphs and their decrypted secrets by (name, version), loaded once per
    process. Concurrent first uses of one version share one load. Secrets that cannot be
    decrypted are kept as the SecretsError, which fails the states that need them."""

    def __init__(self, store: GraphStore, cipher: SecretsCipher | None = None) -> None:
        self.store = store
        self.cipher = cipher
        self.compiled: dict[tuple[str, int], CompiledGraph] = {}
        self._secrets: dict[tuple[str, int], dict[str, str] | SecretsError] = {}
        self._loading: dict[tuple[str, int], asyncio.Future[CompiledGraph | None]] = {}

    async def get(self, name: str, version: int) -> CompiledGraph | None:
        key = (name, version)
        graph = self.compiled.get(key)
        if graph is not None:
            return graph
        pending = self._loading.get(key)
        if pending is not None:
            return await pending
        fut: asyncio.Future[CompiledGraph | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            doc = await self.store.load(name, version)
            graph = compile_doc(doc) if doc is not None else None
            if graph is not None:
                stored = await self.store.stored_secrets(name)
                try:
                    self._secrets[key] = decrypt_secrets(self.cipher, name, stored)
                except SecretsError as exc:
                    self._secrets[key] = exc
                self.compiled[key] = graph
            fut.set_result(graph)
            return graph
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: the caller re-raises it
            raise
        finally:
            del self._loading[key]

    def secrets(self, name: str, version: int) -> dict[str, str] | SecretsError:
        return self._secrets.get((name, version), {})
