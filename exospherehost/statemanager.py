"""StateManager: graphs, triggers, enqueueing and results, straight on Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from broker.codec import Envelope, MalformedEntry, decode, encode, unpack
from broker.keys import ENVELOPE_FIELD, GROUP, Keys, check_name
from broker.streams import Broker, RawRedis
from exospherehost.config import resolve
from exospherehost.graph import CompiledGraph
from exospherehost.graph_validation import NodeSchema, validate_graph
from exospherehost.graphstore import GraphDoc, GraphStore, compile_doc
from exospherehost.models import (
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    StoreConfigModel,
)
from exospherehost.settle import new_id

_MAX_BLOCK_S = 1.0
"""Blocking reads are cut into slices well under the client's socket timeout."""


class GraphValidationError(ValueError):
    def __init__(self, graph: str, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"graph {graph!r} is invalid:\n- " + "\n- ".join(self.errors))


class RunNotFound(KeyError):
    pass


@dataclass
class DeadLetter:
    """A state that could not be processed, with why and what it was."""

    id: str  # entry id in the dead-letter stream
    node: str
    state_id: str
    run_id: str | None
    identifier: str | None
    attempts: int  # executions (first try + retries)
    deliveries: int  # times Redis handed its last entry to a worker
    error: str
    traceback: str
    time_ms: int
    entry: str  # the id it had on its node stream
    original: dict[bytes, bytes]  # the original entry's fields, byte for byte

    @classmethod
    def parse(cls, entry_id: bytes, f: dict[bytes, bytes]) -> DeadLetter:
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items() if k != b"original"}
        original = unpack(f[b"original"]) if b"original" in f else {}
        return cls(
            id=entry_id.decode(),
            node=text.get("node", ""),
            state_id=text.get("state", ""),
            run_id=text.get("run") or None,
            identifier=text.get("identifier") or None,
            attempts=int(text.get("attempts") or 0),
            deliveries=int(text.get("deliveries") or 0),
            error=text.get("error", ""),
            traceback=text.get("traceback", ""),
            time_ms=int(text.get("time_ms") or 0),
            entry=text.get("entry", ""),
            original=original if isinstance(original, dict) else {},
        )


@dataclass
class NodeCounts:
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    pruned: int = 0
    retried: int = 0
    skipped: int = 0  # uniting node: groups that did not fire (ALL_SUCCESS with bad branches)


@dataclass
class RunStatus:
    run_id: str
    graph: str
    status: str  # RUNNING | SUCCEEDED | FAILED
    open: int
    created_ms: int
    finished_ms: int | None
    nodes: dict[str, NodeCounts] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # identifier -> why a unite did not fire

    @property
    def done(self) -> bool:
        return self.status != "RUNNING"


@dataclass
class StateResult:
    """One entry of a node's output stream (a state enqueued without a graph)."""

    entry_id: str
    state_id: str
    status: str  # SUCCEEDED | FAILED | PRUNED
    outputs: Any = None
    error: str | None = None


def _props(schema: dict[str, Any]) -> frozenset[str]:
    return frozenset((schema.get("properties") or {}).keys())


def _schema_of(raw: bytes) -> NodeSchema:
    doc = json.loads(raw)
    ins = doc["inputs_schema"]
    return NodeSchema(
        inputs=_props(ins),
        required_inputs=frozenset(ins.get("required") or ()),
        outputs=_props(doc["outputs_schema"]),
        secrets=_props(doc["secrets_schema"]),
    )


def _check_delay(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (milliseconds), got {value!r}")


def _inputs_dict(inputs: Mapping[str, Any] | BaseModel, what: str) -> dict[str, Any]:
    if isinstance(inputs, BaseModel):
        return inputs.model_dump()
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{what} must be a dict or pydantic model, got {type(inputs).__name__}")
    bad = [k for k in inputs if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{what} keys must be strings, got {bad!r}")
    return dict(inputs)


class StateManager:
    def __init__(
        self, namespace: str, redis_url: str | None = None, key: str | None = None
    ) -> None:
        self.namespace = check_name("namespace", namespace)
        self.config = resolve(redis_url, key)
        self.client: RawRedis = self.config.client()
        self.broker = Broker(self.client, namespace)
        self.keys: Keys = self.broker.keys
        self.graphs = GraphStore(self.client, self.keys)
        self._compiled: dict[tuple[str, int], CompiledGraph] = {}

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
        for i, item in enumerate(inputs):
            state_id = new_id()
            ids.append(state_id)
            envelopes.append(encode(Envelope(state_id, _inputs_dict(item, f"inputs[{i}]"))))
        if delay_ms:
            due = int(time.time() * 1000) + delay_ms
            await self.client.zadd(self.keys.delayed(node_name), dict.fromkeys(envelopes, due))
        else:
            await self.broker.publish(node_name, envelopes)
        return ids

    async def outputs(
        self, node_name: str, after: str = "0", count: int = 1000, block_ms: int | None = None
    ) -> list[StateResult]:
        """Results of graphless states of `node_name`, oldest first, after entry id `after`."""
        stream = self.keys.output(check_name("node name", node_name))
        if block_ms is None:
            entries = await self.client.xrange(
                stream, min=f"({after}" if after != "0" else "-", count=count
            )
        else:
            reply = await self.client.xread({stream: after}, count=count, block=block_ms)
            entries = reply[0][1] if reply else []
        out: list[StateResult] = []
        for entry_id, f in entries:
            out.append(
                StateResult(
                    entry_id.decode(),
                    f[b"state"].decode(),
                    f[b"status"].decode(),
                    unpack(f[b"outputs"])
                    if b"outputs" in f
                    else (unpack(f[b"data"]) if b"data" in f else None),
                    f[b"error"].decode() if b"error" in f else None,
                )
            )
        return out

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
                raise TimeoutError(f"{missing} of {len(wanted)} states of {node_name} not done")
            block = max(1, int(min(left, _MAX_BLOCK_S) * 1000))
            batch = await self.outputs(node_name, after, 1000, block_ms=block)
            for r in batch:
                after = r.entry_id
                if r.state_id in wanted:
                    found[r.state_id] = r
        return found

    # -- graphs -------------------------------------------------------------------------
    async def _schemas(self) -> dict[str, NodeSchema]:
        raw = await self.client.hgetall(self.keys.nodes())
        return {k.decode(): _schema_of(v) for k, v in raw.items()}

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
        asynchronously). Raises GraphValidationError; returns the stored graph."""
        check_name("graph name", graph_name)
        nodes = [GraphNodeModel.model_validate(n) for n in graph_nodes]
        secret_map = {str(k): str(v) for k, v in (secrets or {}).items()}
        errors = validate_graph(self.namespace, nodes, store_config, None, secret_map)
        if errors:
            raise GraphValidationError(graph_name, errors)
        deadline = time.monotonic() + validation_timeout
        while True:
            schemas = await self._schemas()
            errors = validate_graph(self.namespace, nodes, store_config, schemas, secret_map)
            unregistered = {n.node_name for n in nodes} - schemas.keys()
            if not errors or not unregistered or time.monotonic() >= deadline:
                break
            await asyncio.sleep(polling_interval)
        doc: GraphDoc = {
            "name": graph_name,
            "version": await self.graphs.next_version(graph_name),
            "nodes": [n.model_dump(mode="json") for n in nodes],
            "retry_policy": retry_policy.model_dump(mode="json") if retry_policy else None,
            "store_config": store_config.model_dump(mode="json") if store_config else None,
            "triggers": [t.model_dump(mode="json") for t in triggers or ()],
            "secret_names": sorted(secret_map),
            "validation_status": "INVALID" if errors else "VALID",
            "validation_errors": errors,
            "updated_ms": int(time.time() * 1000),
        }
        if errors:
            raise GraphValidationError(graph_name, errors)
        await self.graphs.save(doc, secret_map)
        return dict(doc)

    async def get_graph(self, graph_name: str) -> dict[str, Any]:
        doc = await self.graphs.current(check_name("graph name", graph_name))
        if doc is None:
            raise KeyError(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
        return dict(doc)

    async def _compiled_current(self, graph_name: str) -> CompiledGraph:
        version = await self.graphs.current_version(check_name("graph name", graph_name))
        if version is None:
            raise KeyError(f"graph {graph_name!r} not found in namespace {self.namespace!r}")
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
        _check_delay("start_delay", start_delay)
        graph = await self._compiled_current(graph_name)
        cfg = graph.store_config
        full_store = {**cfg.default_values, **_inputs_dict(store or {}, "store")}
        missing = [k for k in cfg.required_keys if k not in full_store]
        if missing:
            raise ValueError(f"graph {graph_name!r} requires store keys {missing} at trigger")
        root = graph.root_state(full_store, _inputs_dict(inputs or {}, "inputs"))
        run_id = new_id()
        env = Envelope(
            new_id(), root.inputs, run_id, graph.name, graph.version, root.node.identifier, root.ctx
        )
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.keys.run(run_id),
            mapping={
                "graph": graph.name,
                "version": graph.version,
                "status": "RUNNING",
                "open": 1,
                "failed": 0,
                "created_ms": now,
                f"c:{root.node.identifier}": 1,
            },
        )
        pipe.zadd(self.keys.runs(graph.name), {run_id: now})
        if start_delay:
            pipe.zadd(self.keys.delayed(root.node.node_name), {encode(env): now + start_delay})
        else:
            pipe.xadd(self.keys.queue(root.node.node_name), {ENVELOPE_FIELD: encode(env)})
        await pipe.execute()
        return run_id

    async def status(self, run_id: str) -> RunStatus:
        raw = await self.client.hgetall(self.keys.run(run_id))
        if not raw:
            raise RunNotFound(f"run {run_id!r} not found (unknown, or expired after retention)")
        h = {k.decode(): v.decode() for k, v in raw.items()}
        counts: dict[str, NodeCounts] = {}
        kinds = {"s": "succeeded", "f": "failed", "p": "pruned", "r": "retried", "k": "skipped"}
        notes: dict[str, str] = {}
        for k, v in h.items():
            kind, sep, ident = k.partition(":")
            if not sep:
                continue
            if kind == "why":
                notes[ident] = v
                continue
            c = counts.setdefault(ident, NodeCounts())
            if kind == "c":
                c.pending += int(v)
            elif kind in kinds:
                setattr(c, kinds[kind], int(v))
        for c in counts.values():
            c.pending -= c.succeeded + c.failed + c.pruned
        return RunStatus(
            run_id,
            h.get("graph", ""),
            h.get("status", "RUNNING"),
            int(h.get("open", 0)),
            int(h.get("created_ms", 0)),
            int(h["finished_ms"]) if "finished_ms" in h else None,
            counts,
            notes,
        )

    async def wait(self, run_id: str, timeout: float = 60.0) -> RunStatus:
        """Wait until the run is finished; raises TimeoutError naming the run."""
        return (await self.wait_all([run_id], timeout))[run_id]

    async def wait_all(self, run_ids: Iterable[str], timeout: float = 60.0) -> dict[str, RunStatus]:
        """Wait until every run is finished, following the namespace's event stream (one
        connection however many runs); raises TimeoutError naming what is unfinished."""
        waiting = set(run_ids)
        deadline = time.monotonic() + timeout
        last = await self._events_tail()  # before the first check: no event is missed
        candidates = set(waiting)
        while True:
            finished = await self._finished(candidates)
            waiting -= finished
            if not waiting:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                some = sorted(waiting)[:5]
                raise TimeoutError(
                    f"{len(waiting)} run(s) not finished after {timeout}s, e.g. {some}"
                )
            block = max(1, int(min(left, _MAX_BLOCK_S) * 1000))
            reply = await self.client.xread({self.keys.events(): last}, count=10_000, block=block)
            candidates = set()
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    run = fields.get(b"run", b"").decode()
                    if run in waiting:
                        candidates.add(run)
            if not reply:
                candidates = set(waiting)  # idle second: re-check all (covers trimmed events)
        return {r: await self.status(r) for r in run_ids}

    async def _finished(self, run_ids: set[str]) -> set[str]:
        ids = list(run_ids)
        done: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            pipe = self.client.pipeline(transaction=False)
            for r in chunk:
                pipe.hget(self.keys.run(r), "status")
            for r, st in zip(chunk, await pipe.execute(), strict=True):
                if st is None:
                    raise RunNotFound(f"run {r!r} not found (unknown, or expired after retention)")
                if st != b"RUNNING":
                    done.add(r)
        return done

    async def _events_tail(self) -> bytes | str:
        tail = await self.client.xrevrange(self.keys.events(), count=1)
        return tail[0][0] if tail else "0"

    async def results(self, run_id: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """Outputs of the run's leaf states ({identifier, state, outputs}); with `timeout`,
        wait for the run to finish first."""
        if timeout is not None:
            await self.wait(run_id, timeout)
        raw = await self.client.lrange(self.keys.run_results(run_id), 0, -1)
        return [unpack(r) for r in raw]

    # -- dead letters -------------------------------------------------------------------
    async def dead_letters(self, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Dead letters oldest first, from entry id `after` (exclusive unless '-')."""
        start = after if after == "-" else f"({after}"
        entries = await self.client.xrange(self.keys.dead(), min=start, count=count)
        return [DeadLetter.parse(i, f) for i, f in entries]

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        entries = await self.client.xrange(self.keys.dead(), min=dead_id, max=dead_id)
        return DeadLetter.parse(*entries[0]) if entries else None

    async def redrive(self, dead_id: str) -> bool:
        """Put a dead letter back on its node's stream for a fresh set of attempts.
        Idempotent: returns False (and adds nothing) when it was already redriven."""
        dead = await self.dead_letter(dead_id)
        if dead is None:
            return False
        fields: dict[str, bytes | str] = {k.decode(): v for k, v in dead.original.items()}
        if set(fields) == {ENVELOPE_FIELD}:
            try:
                env = decode(b"0-0", dead.original)
            except MalformedEntry:
                pass
            else:
                env.attempt = 0  # a redrive starts the retry budget afresh
                fields = {ENVELOPE_FIELD: encode(env)}
        if not fields:
            raise ValueError(f"dead letter {dead_id} has no original entry to redrive")
        done = await self.broker.redrive(
            dead_id, check_name("node name", dead.node), dead.run_id, dead.identifier or "", fields
        )
        if done < 0:
            raise RunNotFound(f"cannot redrive {dead_id}: run {dead.run_id} expired")
        return done == 1

    async def redrive_all(self) -> int:
        """Redrive every dead letter; returns how many were put back."""
        count = 0
        after = "-"
        while batch := await self.dead_letters(1000, after):
            for dead in batch:
                count += await self.redrive(dead.id)
            after = batch[-1].id
        return count

    async def pending(self, node_name: str) -> dict[str, int]:
        """Backlog and pending (delivered, unsettled) counts of a node's stream."""
        stream = self.keys.queue(check_name("node name", node_name))
        length = await self.client.xlen(stream)
        try:
            info = await self.client.xpending(stream, GROUP)
            pending = int(info["pending"])
        except Exception:
            pending = 0
        delayed = await self.client.zcard(self.keys.delayed(node_name))
        return {"length": int(length), "pending": pending, "delayed": int(delayed)}
