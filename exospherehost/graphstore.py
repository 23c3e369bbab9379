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
import logging
from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict

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
    # True when the version's secrets are its own (Keys.version_secrets); absent in the
    # documents of versions upserted before, whose secrets are the graph's one hash.
    secrets_per_version: NotRequired[bool]


log = logging.getLogger("exospherehost.graphstore")

OLD_SECRETS_TTL_S = 7 * 24 * 3600
"""How long the secrets of a graph version are kept after a newer version replaced it,
counted again from each time a Runtime process first runs a state of that version and, at
each hourly sweep (`keep_live_secrets`), while a run of that version is RUNNING: runs
pinned to the old version see its secrets until then, and after it their states needing
secrets fail, without retries, saying so."""

SECRETS_SWEEP_S = 3600
"""How often one Runtime of a namespace runs `GraphStore.keep_live_secrets`."""


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
    """A namespace's graph documents and their secrets. `old_secrets_ttl_s`: see
    OLD_SECRETS_TTL_S."""

    def __init__(
        self, client: Redis | RedisClient, keys: Keys, old_secrets_ttl_s: int = OLD_SECRETS_TTL_S
    ) -> None:
        self.keys = keys
        self.records = GraphRecords(typed_client(client), keys)
        self.old_secrets_ttl_s = old_secrets_ttl_s

    async def next_version(self, name: str) -> int:
        """A version number of `name` never handed out before, even if Redis lost the
        counter (see the module docstring). Two round trips; upserts are rare."""
        seconds, micros = await self.records.clock()
        return await self.records.next_version(name, version_floor(seconds, micros))

    async def save(self, doc: GraphDoc, secrets: dict[str, bytes] | None) -> None:
        """Write the document and the version's (already encrypted) secrets, and point the
        graph at the document, in one MULTI; older versions' secrets then get their expiry
        (`old_secrets_ttl_s`). Every version has its own secrets: runs pinned to a version
        see that version's, whatever was upserted since. `updated_ms` is set from Redis's
        clock (cron triggers count from it; every scheduler runs on that clock)."""
        doc["secrets_per_version"] = True
        seconds, micros = await self.records.clock()
        doc["updated_ms"] = seconds * 1000 + micros // 1000
        await self.records.save(
            doc["name"], doc["version"], pack(doc), secrets, self.old_secrets_ttl_s
        )

    async def remove(
        self, name: str, version: int, keep_runs: bool, lanes: Sequence[Keys] = ()
    ) -> bool:
        """Delete graph `name` (its current version is `version`): see GraphRecords.remove;
        unless `keep_runs`, its run index goes on every one of `lanes` too."""
        removed = await self.records.remove(name, version, self.old_secrets_ttl_s, keep_runs)
        if removed and not keep_runs:
            await self.records.drop_run_indexes(name, lanes)
        return removed

    async def retired(self) -> list[str]:
        """Graphs deleted while runs of them were in flight (their runs stay listed)."""
        return await self.records.retired()

    async def forget_retired(self, names: Sequence[str]) -> None:
        await self.records.forget_retired(names)

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

    async def stored_secrets(self, doc: GraphDoc) -> dict[bytes, bytes]:
        """The secrets of the version `doc` as stored: name -> Fernet token (see
        exospherehost.secrets); empty when it has none or they are gone."""
        if not doc.get("secret_names"):
            return {}
        per_version = doc.get("secrets_per_version", False)
        return await self.records.secrets(doc["name"], doc["version"] if per_version else None)

    async def current_secrets(self) -> dict[str, dict[bytes, bytes]]:
        """Every graph of the namespace -> the secrets of its current version as stored."""
        wanted: dict[str, int | None] = {}
        for name, version in (await self.versions()).items():
            try:
                doc = await self.load(name, version)
            except Exception as exc:
                # Must not stop every Runtime of the namespace at start: its states fail
                # for good when they are reached, with the reason, and the rest goes on.
                log.error(
                    "graph %r version %d cannot be read (%s): its runs' states will fail",
                    name,
                    version,
                    f"{type(exc).__name__}: {exc}".rstrip(": "),
                )
                continue
            if doc is not None and doc.get("secret_names"):
                wanted[name] = version if doc.get("secrets_per_version", False) else None
        return await self.records.secrets_of(wanted)

    async def extend_secrets(self, name: str, version: int) -> None:
        """Keep a replaced version's secrets `old_secrets_ttl_s` from now (a Runtime runs
        states of it); the current version's stay persistent."""
        await self.records.extend_secrets(name, version, self.old_secrets_ttl_s)

    async def keep_live_secrets(self, lease_s: int = SECRETS_SWEEP_S) -> list[tuple[str, int]]:
        """Once per `lease_s` per namespace (the first caller of the period; others get []):
        give replaced versions' secrets their expiry where they lack one (an upsert that
        raced another), and push it back to `old_secrets_ttl_s` from now for each version
        with a RUNNING run among its graph's indexed runs (the newest 10,000), so secrets
        outlive the runs that need them. Returns the (graph, version)s kept."""
        if not await self.records.sweep_lease(lease_s):
            return []
        kept: list[tuple[str, int]] = []
        for name, current in (await self.versions()).items():
            retired = await self.records.retire_secrets(name, current, self.old_secrets_ttl_s)
            for version in sorted(await self.records.running_versions(name, retired)):
                await self.extend_secrets(name, version)
                kept.append((name, version))
        return kept


def missing_secrets(doc: GraphDoc, ttl_s: int) -> SecretsError:
    names = sorted(doc.get("secret_names") or ())
    return SecretsError(
        f"the secrets {names} of graph {doc['name']!r} version {doc['version']} are no "
        f"longer stored: a version's secrets are kept {_duration(ttl_s)} after a newer "
        f"version replaced it (counted again whenever a Runtime starts running its states, "
        f"and hourly while a run of it is RUNNING among its graph's newest runs); start "
        f"the run again on the current version"
    )


def _duration(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


class GraphCache:
    """Compiled graphs and the decrypted secrets of their version by (name, version),
    loaded once per process. Concurrent first uses of one version share one load. Secrets
    that cannot be decrypted (or are gone) are kept as the SecretsError, which fails the
    states that need them."""

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
            if doc is not None and graph is not None:
                stored = await self.store.stored_secrets(doc)
                try:
                    if doc.get("secret_names") and not stored:
                        raise missing_secrets(doc, self.store.old_secrets_ttl_s)
                    self._secrets[key] = decrypt_secrets(self.cipher, name, stored)
                except SecretsError as exc:
                    self._secrets[key] = exc
                if stored:
                    await self.store.extend_secrets(name, version)
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
