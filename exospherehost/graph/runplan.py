"""What starting a graph run writes, decided in Python once for both ways a run starts:
`StateManager.trigger` (applied in one MULTI) and a cron trigger firing (applied by the
cron_fire script after it wins the fire marker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker.codec import Envelope, encode
from exospherehost.broker.keys import Keys
from exospherehost.broker.runstart import RunStart
from exospherehost.errors import InvalidArgument
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.graph.storevalues import check_store_key, encode_store, inline_and_referenced
from exospherehost.ids import new_id
from exospherehost.limits import SizeLimits, biggest, envelope_parts


def run_store(graph: CompiledGraph, given: Mapping[str, Any]) -> dict[str, Any]:
    """The graph's store defaults overlaid with the trigger's values; raises ValueError
    naming missing required keys or invalid key names."""
    for key in given:
        check_store_key(key)
    full = {**graph.store_config.default_values, **given}
    missing = [k for k in graph.store_config.required_keys if k not in full]
    if missing:
        raise InvalidArgument(f"graph {graph.name!r} requires store keys {missing} at trigger")
    return full


def plan_run(
    graph: CompiledGraph,
    keys: Keys,
    *,
    inputs: Mapping[str, Any],
    store: Mapping[str, Any],
    start_delay_ms: int,
    now_ms: int,
    extra_fields: Mapping[str, str | int] | None = None,
    limits: SizeLimits | None = None,
    encoded_store: Mapping[str, bytes] | None = None,
) -> RunStart:
    """The run hash, store, index entry and root state of a new run of `graph`.
    `store` is the full store (see `run_store`); `extra_fields` go into the run hash.
    `limits` (default: from the environment): a store value or a root state over its
    limit raises SizeLimitExceeded; store values over `store_inline_bytes` stay in the
    run store (the root envelope names them). `encoded_store`: `encode_store(store,
    limits)` when the caller has it already (trigger_many, for many runs of one store)."""
    limits = limits if limits is not None else SizeLimits.from_env()
    full_store = dict(store)
    encoded = dict(encoded_store) if encoded_store is not None else encode_store(full_store, limits)
    inline, refs = inline_and_referenced(full_store, encoded, limits)
    root = graph.root_state(inline, dict(inputs), refs)
    run_id = keys.new_run_id(new_id())  # on the lane of `keys` (its id says which)
    env = Envelope(
        new_id(), root.inputs, run_id, graph.name, graph.version, root.node.identifier, root.ctx
    )
    envelope = encode(env)
    if len(envelope) > limits.state_bytes:
        raise limits.exceeded(
            "the first state of a run of graph",
            f"{graph.name!r} (node {root.node.node_name}, identifier {root.node.identifier})",
            len(envelope),
            "state_bytes",
            "biggest: " + biggest(envelope_parts(root.inputs, root.ctx)),
        )
    fields: dict[str, str | int] = {
        f.RUN_GRAPH: graph.name,
        f.RUN_VERSION: graph.version,
        f.RUN_STATUS: f.RUNNING,
        f.RUN_OPEN: 1,
        f.RUN_FAILED: 0,
        f.RUN_CREATED_MS: now_ms,
        f.per_identifier(f.CREATED, root.node.identifier): 1,
    }
    if extra_fields:
        fields.update(extra_fields)
    node = root.node.node_name
    return RunStart(
        run_id=run_id,
        graph=graph.name,
        run_key=keys.run(run_id),
        run_fields=fields,
        store_key=keys.run_store(run_id),
        store=encoded,
        index_key=keys.runs(graph.name),
        created_ms=now_ms,
        target_key=keys.delayed(node) if start_delay_ms else keys.queue(node),
        due_ms=now_ms + start_delay_ms if start_delay_ms else 0,
        envelope=envelope,
    )
