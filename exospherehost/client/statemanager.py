"""StateManager: graphs, triggers, enqueueing and results, straight on Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from exospherehost.broker import queues
from exospherehost.broker.client import typed_client
from exospherehost.broker.codec import Envelope, encode, unpack
from exospherehost.broker.fields import RUNNING
from exospherehost.broker.keys import MAX_LANES, Keys, check_name
from exospherehost.broker.serverinfo import eviction_check
from exospherehost.broker.streams import Broker
from exospherehost.client.deadletters import DeadLetter, DeadLettersMixin
from exospherehost.client.retry import RetryMixin
from exospherehost.client.runs import (
    MAX_BLOCK_S,
    NodeCounts,
    RunNotFound,
    RunsMixin,
    RunStatus,
    StateRecord,
)
from exospherehost.client.workers import WorkersMixin
from exospherehost.config import legacy_arguments, resolve
from exospherehost.errors import GraphNotFound, InvalidArgument, WaitTimedOut
from exospherehost.errors import GraphValidationError as GraphValidationError  # old import path
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.graph.cron import CronExpressionError, check_expression
from exospherehost.graph.runplan import plan_run, run_store
from exospherehost.graph.storevalues import encode_store
from exospherehost.graph.validation import NodeSchema, validate_graph
from exospherehost.graphstore import GraphDoc, GraphStore, compile_doc
from exospherehost.ids import new_id
from exospherehost.limits import SizeLimits, biggest
from exospherehost.models import (
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    StoreConfigModel,
)
from exospherehost.secrets import require_cipher

log = logging.getLogger("exospherehost.client")

__all__ = [
    "DeadLetter",
    "GraphValidationError",
    "NodeCounts",
    "RunNotFound",
    "RunStatus",
    "StateManager",
    "StateRecord",
    "StateResult",
]


@dataclass
class StateResult:
    """One entry of a node's output stream (a state enqueued without a graph)."""

    entry_id: str
    state_id: str
    status: str  # SUCCEEDED | FAILED | PRUNED
    outputs: Any = None
    error: str | None = None


def _schema_of(raw: str) -> NodeSchema:
    return NodeSchema.from_registered(json.loads(raw))


def _check_delay(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{name} must be a non-negative int (milliseconds), got {value!r}")


def _inputs_dict(inputs: Mapping[str, Any] | BaseModel, what: str) -> dict[str, Any]:
    if isinstance(inputs, BaseModel):
        return inputs.model_dump()
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{what} must be a dict or pydantic model, got {type(inputs).__name__}")
    bad = [k for k in inputs if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{what} keys must be strings, got {bad!r}")
    return dict(inputs)


def _trigger_errors(
    triggers: Sequence[CronTrigger], store_config: StoreConfigModel | None
) -> list[str]:
    errors: list[str] = []
    for t in triggers:
        try:
            check_expression(t.expression)
        except CronExpressionError as exc:
            errors.append(str(exc))
    if triggers and store_config is not None:
        missing = [k for k in store_config.required_keys if k not in store_config.default_values]
        if missing:
            errors.append(
                f"a graph with cron triggers cannot require store keys without a default "
                f"value (a scheduled run has no trigger store): {missing}"
            )
    return errors


LANES_CACHE_S = 2.0
"""How long a StateManager keeps the namespace's lane count before reading it again."""


class StateManager(RunsMixin, RetryMixin, DeadLettersMixin, WorkersMixin):
    def __init__(
        self,
        namespace: str,
        redis_url: str | None = None,
        key: str | None = None,
        *,
        # The original SDK's arguments, accepted where they cost nothing (README: Migrating).
        state_manager_uri: str | None = None,
        state_manager_version: str | None = None,
        size_limits: SizeLimits | None = None,
    ) -> None:
        redis_url = legacy_arguments(
            redis_url, state_manager_uri, state_manager_version, "state_manager_version"
        )
        self.namespace = check_name("namespace", namespace)
        # What enqueue and trigger refuse (SizeLimitExceeded); default: the environment.
        if size_limits is not None and not isinstance(size_limits, SizeLimits):
            raise InvalidArgument(
                f"size_limits must be an exospherehost.limits.SizeLimits, got {size_limits!r}"
            )
        self.size_limits = size_limits if size_limits is not None else SizeLimits.from_env()
        self.config = resolve(redis_url, key)
        # The connection, for closing (and for tests that poke Redis directly); every
        # command goes through the broker and its readers.
        self.client = self.config.client()
        self.broker = Broker(self.client, namespace)
        self.keys: Keys = self.broker.keys
        self.graphs = GraphStore(self.broker.client, self.keys)
        self._compiled: dict[tuple[str, int], CompiledGraph] = {}
        self._server_checked = False
        self._start_lanes: list[int] = [0]  # where new runs go (round robin), re-read ...
        self._lanes_read = -LANES_CACHE_S  # ... every LANES_CACHE_S (monotonic time)
        # Round robin from a random lane: many short-lived clients (one CLI trigger each)
        # must not all start on lane 0.
        self._next_lane = random.randrange(MAX_LANES)
        self._streams: tuple[float, list[str]] | None = None  # (monotonic time, SCAN found)

    async def _check_server(self) -> None:
        """Before the first write: warn (once per StateManager) when Redis may evict what
        is written (broker/serverinfo.py). A client warns instead of refusing as a Runtime
        does: it may be the tool that reads out what is left."""
        if self._server_checked:
            return
        self._server_checked = True
        verdict = await eviction_check(self.broker.client)
        if verdict is not None:
            log.warning("%s", verdict[1])

    async def close(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> StateManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- states without a graph ---------------------------------------------------------
    async def enqueue(
        self, node_name: str, inputs: Mapping[str, Any] | BaseModel, delay_ms: int = 0
    ) -> str:
        """Put one state on `node_name`'s stream (after `delay_ms`); returns its state id."""
        return (await self.enqueue_many(node_name, [inputs], delay_ms))[0]

    async def enqueue_many(
        self,
        node_name: str,
        inputs: Iterable[Mapping[str, Any] | BaseModel],
        delay_ms: int = 0,
    ) -> list[str]:
        """Put many states on `node_name`'s stream in pipelined batches (or, with
        `delay_ms`, in its delayed set, promoted when due); returns their state ids."""
        check_name("node name", node_name)
        _check_delay("delay_ms", delay_ms)
        ids: list[str] = []
        envelopes: list[bytes] = []
        limit = self.size_limits.state_bytes
        for i, item in enumerate(inputs):
            state_id = new_id()
            ids.append(state_id)
            values = _inputs_dict(item, f"inputs[{i}]")
            envelope = encode(Envelope(state_id, values))
            if len(envelope) > limit:
                raise self.size_limits.exceeded(
                    "a state of node",
                    f"{node_name} (inputs[{i}])",
                    len(envelope),
                    "state_bytes",
                    "biggest: " + biggest([("inputs", values)]),
                )
            envelopes.append(envelope)
        await self._check_server()  # after the arguments: a bad one is refused without Redis
        if delay_ms:
            due = int(time.time() * 1000) + delay_ms
            await self.broker.delay(node_name, envelopes, due)
        else:
            await self.broker.publish(node_name, envelopes)
        return ids

    async def outputs(
        self, node_name: str, after: str = "0", count: int = 1000, block_ms: int | None = None
    ) -> list[StateResult]:
        """Results of graphless states of `node_name`, oldest first, after entry id `after`."""
        check_name("node name", node_name)
        return [
            StateResult(o.entry_id, o.state_id, o.status, o.outputs, o.error)
            for o in await self.broker.queues.outputs(node_name, after, count, block_ms)
        ]

    async def newest_outputs(self, node_name: str, count: int = 20) -> list[StateResult]:
        """The newest `count` results of graphless states of `node_name`, oldest first."""
        check_name("node name", node_name)
        return [
            StateResult(o.entry_id, o.state_id, o.status, o.outputs, o.error)
            for o in await self.broker.queues.newest_outputs(node_name, count)
        ]

    async def wait_for_states(
        self, node_name: str, state_ids: Iterable[str], timeout: float = 30.0
    ) -> dict[str, StateResult]:
        """Follow `node_name`'s output stream until every state in `state_ids` has a result."""
        wanted = set(state_ids)
        found: dict[str, StateResult] = {}
        after = "0"
        deadline = time.monotonic() + timeout
        while wanted - found.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(wanted - found.keys())
                raise WaitTimedOut(f"{missing} of {len(wanted)} states of {node_name} not done")
            block = max(1, int(min(left, MAX_BLOCK_S) * 1000))
            batch = await self.outputs(node_name, after, 1000, block_ms=block)
            for r in batch:
                after = r.entry_id
                if r.state_id in wanted:
                    found[r.state_id] = r
        return found

    # -- graphs -------------------------------------------------------------------------
    async def _schemas(self) -> dict[str, NodeSchema]:
        raw = await self.broker.registry.schemas()
        return {k: _schema_of(v) for k, v in raw.items()}

    async def upsert_graph(
        self,
        graph_name: str,
        graph_nodes: Sequence[GraphNodeModel],
        secrets: Mapping[str, str] | None = None,
        retry_policy: RetryPolicyModel | None = None,
        store_config: StoreConfigModel | None = None,
        triggers: Sequence[CronTrigger] | None = None,
        validation_timeout: float = 60.0,
        polling_interval: float = 0.2,
    ) -> dict[str, Any]:
        """Validate and store a graph. Structural problems are rejected at once, all
        listed; nodes not yet registered by a Runtime are waited for up to
        `validation_timeout` seconds (as the original state manager validates
        asynchronously). Raises GraphValidationError; returns the stored graph.

        `secrets` are encrypted with EXOSPHERE_SECRETS_KEY before they are stored (a
        ConfigError says how to make a key when it is not set). `triggers` are cron
        triggers (see exospherehost.runtime.cron), fired by the namespace's Runtimes."""
        check_name("graph name", graph_name)
        nodes = [GraphNodeModel.model_validate(n) for n in graph_nodes]
        # Models or their dicts (a template file's JSON), as nodes and triggers are.
        retry_policy = _model_or_none(RetryPolicyModel, retry_policy, "retry_policy")
        store_config = _model_or_none(StoreConfigModel, store_config, "store_config")
        secret_map = {str(k): str(v) for k, v in (secrets or {}).items()}
        cipher = require_cipher(graph_name) if secret_map else None
        cron = [CronTrigger.model_validate(t) for t in triggers or ()]
        trigger_errors = _trigger_errors(cron, store_config)
        errors = validate_graph(self.namespace, nodes, store_config, None, secret_map)
        errors += trigger_errors
        if errors:
            raise GraphValidationError(graph_name, errors)
        if store_config is not None:  # a default over its limit would fail every trigger
            encode_store(store_config.default_values, self.size_limits)
        deadline = time.monotonic() + validation_timeout
        while True:
            schemas = await self._schemas()
            errors = validate_graph(self.namespace, nodes, store_config, schemas, secret_map)
            errors += trigger_errors
            unregistered = {n.node_name for n in nodes} - schemas.keys()
            if not errors or not unregistered or time.monotonic() >= deadline:
                break
            await asyncio.sleep(polling_interval)
        if errors:  # before next_version: a refused graph uses up no version number
            raise GraphValidationError(graph_name, errors)
        doc: GraphDoc = {
            "name": graph_name,
            "version": await self.graphs.next_version(graph_name),
            "nodes": [n.model_dump(mode="json") for n in nodes],
            "retry_policy": retry_policy.model_dump(mode="json") if retry_policy else None,
            "store_config": store_config.model_dump(mode="json") if store_config else None,
            "triggers": [t.model_dump(mode="json") for t in cron],
            "secret_names": sorted(secret_map),
            "validation_status": "VALID",
            "validation_errors": [],
            "updated_ms": int(time.time() * 1000),
        }
        await self.graphs.save(doc, cipher.encrypt(secret_map) if cipher else {})
        return dict(doc)

    async def delete_graph(self, graph_name: str, force: bool = False) -> int:
        """Delete a graph template: no new runs or cron fires of it, `get_graph` raises
        GraphNotFound. Refused (InvalidArgument, saying how many) while runs of it are
        RUNNING, unless `force`: those then finish on the version they started with (and
        stay listed). Returns how many were left running. A graph of the same name
        upserted later starts at a new version number."""
        check_name("graph name", graph_name)
        version = await self.graphs.current_version(graph_name)
        if version is None:
            raise GraphNotFound(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
        running = (await self.list_runs(graph_name, count=1, status=RUNNING)).total
        if running and not force:
            raise InvalidArgument(
                f"graph {graph_name!r} has {running} run(s) in flight: wait for them, cancel "
                f"them (sm.cancel; list them with list_runs({graph_name!r}, "
                f"status='RUNNING')), or delete_graph({graph_name!r}, force=True) to let "
                f"them finish on their version"
            )
        if not await self.graphs.remove(
            graph_name, version, keep_runs=running > 0, lanes=await self.broker.lane_keys()
        ):
            raise GraphNotFound(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
        self._compiled = {k: v for k, v in self._compiled.items() if k[0] != graph_name}
        return running

    async def get_graph(self, graph_name: str) -> dict[str, Any]:
        doc = await self.graphs.current(check_name("graph name", graph_name))
        if doc is None:
            raise GraphNotFound(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
        return dict(doc)

    async def _compiled_current(self, graph_name: str) -> CompiledGraph:
        version = await self.graphs.current_version(check_name("graph name", graph_name))
        if version is None:
            raise GraphNotFound(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
        key = (graph_name, version)
        if key not in self._compiled:
            doc = await self.graphs.load(graph_name, version)
            assert doc is not None, "graph pointer names a missing version"
            self._compiled[key] = compile_doc(doc)
        return self._compiled[key]

    # -- runs ---------------------------------------------------------------------------
    async def trigger(
        self,
        graph_name: str,
        inputs: Mapping[str, Any] | None = None,
        store: Mapping[str, Any] | None = None,
        start_delay: int = 0,
    ) -> str:
        """Start a run of the graph's current version; returns the run id.
        `start_delay` is in milliseconds (as in the original SDK)."""
        return (await self.trigger_many(graph_name, [inputs], store, start_delay))[0]

    async def trigger_many(
        self,
        graph_name: str,
        inputs: Iterable[Mapping[str, Any] | None],
        store: Mapping[str, Any] | None = None,
        start_delay: int = 0,
    ) -> list[str]:
        """Start one run per element of `inputs` (each as `trigger(inputs=...)`, sharing
        `store`), in a few round trips; returns the run ids in order."""
        _check_delay("start_delay", start_delay)
        graph = await self._compiled_current(graph_name)
        full_store = run_store(graph, _inputs_dict(store or {}, "store"))
        encoded = encode_store(full_store, self.size_limits)  # once for all the runs
        now = int(time.time() * 1000)
        given = [_inputs_dict(item or {}, f"inputs[{i}]") for i, item in enumerate(inputs)]
        lanes = await self._lanes_for(len(given))
        starts = [
            plan_run(
                graph,
                self.keys.on_lane(lane),
                inputs=item,
                store=full_store,
                start_delay_ms=start_delay,
                now_ms=now,
                limits=self.size_limits,
                encoded_store=encoded,
            )
            for lane, item in zip(lanes, given, strict=True)
        ]
        await self._check_server()
        await self.broker.start_runs(starts)
        return [s.run_id for s in starts]

    async def _lanes_for(self, n: int) -> list[int]:
        """The lanes (tag numbers) of the next `n` runs: the namespace's current lanes,
        round robin; the count is read at most every LANES_CACHE_S (a run started on a
        lane of the count just replaced is still served: see exospherehost.runtime.lanes)."""
        if time.monotonic() - self._lanes_read >= LANES_CACHE_S:
            _, self._start_lanes, _ = await self.broker.lanes()
            self._lanes_read = time.monotonic()
        lanes, first = self._start_lanes, self._next_lane % len(self._start_lanes)
        self._next_lane = (first + n) % len(lanes)
        return [lanes[(first + i) % len(lanes)] for i in range(n)]

    async def set_lanes(self, count: int) -> list[int]:
        """Spread the namespace's runs over `count` lanes (1 to 256; 1 is the default):
        lanes are hash tags that land on evenly spaced Redis Cluster slots, each served
        by its own read and settle calls in every Runtime. Safe while runs flow: a run
        stays on the lane it started on, and Runtimes serve a lane of an older count as
        long as it holds anything. Returns the lanes' tag numbers (lane 0 is 0)."""
        tags = await self.broker.set_lanes(count)
        self._lanes_read = -LANES_CACHE_S  # our next trigger reads it again
        return tags

    async def lanes(self) -> dict[str, Any]:
        """The namespace's lanes: {"count": k, "current": tag numbers of the k lanes,
        "in_use": tag numbers of every lane that may hold something (current and older)}."""
        count, current, used = await self.broker.lanes()
        return {"count": count, "current": current, "in_use": sorted(used.union(current))}

    async def run_store(self, run_id: str) -> dict[str, Any]:
        """The run's store as it is now (trigger values, defaults and nodes' writes)."""
        raw = await self.broker.store_all(check_name("run id", run_id))
        return {k.decode(): unpack(v) for k, v in raw.items()}

    async def graph_names(self) -> list[str]:
        return await self.graphs.names()

    async def listed_graphs(self) -> list[str]:
        """The graphs a namespace-wide run listing covers: every current graph, and those
        deleted (force) while runs of them were in flight, until none of their runs is
        indexed any more."""
        names = set(await self.graphs.names())
        retired = [g for g in await self.graphs.retired() if g not in names]
        empty = [g for g in retired if await self._runs.count_between(g, None, None) == 0]
        await self.graphs.forget_retired(empty)
        return sorted(names.union(retired).difference(empty))

    async def node_names(self) -> list[str]:
        """Nodes registered in this namespace by Runtimes."""
        return await self.broker.registry.names()

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes registered in this namespace, by name: `inputs_schema`, `outputs_schema`
        and `secrets_schema` (JSON schemas of the node's models), `secrets` (the names),
        `returns` (what `execute` is annotated to return: one, many or either),
        `runtime` (the Runtime name that registered it last) and `registered_ms`."""
        out: dict[str, dict[str, Any]] = {}
        for name, raw in sorted((await self.broker.registry.schemas()).items()):
            doc = json.loads(raw)
            doc["secrets"] = sorted((doc.get("secrets_schema") or {}).get("properties") or {})
            out[name] = doc
        return out

    async def node_stats(self) -> dict[str, dict[str, Any]]:
        """Per node with a registry entry or a stream (SCAN): backlog, pending, delayed,
        live consumers (and all in the group), oldest pending age (ms), and whether a
        Runtime registered it (a stream of an unregistered node is served by nobody);
        one pipelined round trip per node."""
        registered = set(await self.node_names())
        out: dict[str, dict[str, Any]] = {}
        for node in sorted(registered | set(await self._stream_nodes())):
            s = await self.broker.queues.stats(node)
            out[node] = {
                "length": s.length,
                "delayed": s.delayed,
                "pending": s.pending,
                "lag": s.lag,
                "consumers": s.consumers,
                "consumers_total": s.consumers_total,
                "oldest_pending_ms": s.oldest_pending_ms,
                "registered": node in registered,
            }
        return out

    STREAMS_SCAN_S = 10.0
    """How long node_stats reuses the queue streams a SCAN found: a SCAN walks the whole
    keyspace, and dashboards ask every second."""

    async def _stream_nodes(self) -> list[str]:
        now = time.monotonic()
        if self._streams is None or now - self._streams[0] >= self.STREAMS_SCAN_S:
            self._streams = (now, await self.broker.queues.streams())
        return self._streams[1]

    @staticmethod
    async def namespaces(redis_url: str | None = None, key: str | None = None) -> list[str]:
        """Namespaces that have registered nodes on this Redis (SCAN, not KEYS)."""
        client = resolve(redis_url, key).client()
        try:
            return await queues.namespaces(typed_client(client))
        finally:
            await client.aclose()

    async def pending(self, node_name: str) -> dict[str, int]:
        """Backlog and pending (delivered, unsettled) counts of a node's stream."""
        c = await self.broker.queues.counts(check_name("node name", node_name))
        return {"length": c.length, "pending": c.pending, "delayed": c.delayed}


M = TypeVar("M", bound=BaseModel)


def _model_or_none(model: type[M], value: object, name: str) -> M | None:
    """`value` as `model` (an instance, or a mapping validated into one); None stays None.
    Anything else is refused naming the argument."""
    if value is None or isinstance(value, model):
        return value
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"{name} must be a {model.__name__} or a mapping, got {type(value).__name__}"
        )
    return model.model_validate(value)
