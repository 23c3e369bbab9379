"""Run one state through its node and turn whatever happens into an Outcome value."""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from exospherehost.graph import CompiledGraph
from exospherehost.node import BaseNode
from exospherehost.outcomes import Completed, Failed, Job, Outcome, Pruned, Requeued
from exospherehost.secrets import SecretsError
from exospherehost.signals import PruneSignal, ReQueueAfterSignal
from exospherehost.store import StoreUnavailable

if TYPE_CHECKING:
    from broker.streams import Broker


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
    )


@dataclass(frozen=True, slots=True)
class NodeSpec:
    cls: type[BaseNode]
    name: str
    str_fields: frozenset[str]  # fields typed `str`: a plain-XADD value is taken verbatim
    no_secrets: bool  # the Secrets model declares nothing: skip validating it per state
    empty_secrets: BaseModel | None

    @classmethod
    def of(cls, node: type[BaseNode]) -> NodeSpec:
        fields = node.Inputs.model_fields
        no_secrets = not node.Secrets.model_fields
        return cls(
            node,
            node.__name__,
            frozenset(k for k, f in fields.items() if f.annotation is str),
            no_secrets,
            node.Secrets() if no_secrets else None,
        )

    def parse_inputs(self, raw: dict[str, Any], foreign: bool) -> BaseModel:
        """Validate inputs. Values from a plain XADD are strings: where the model wants
        something else, a JSON value (`{"k":1}`, `[1,2]`, `3`, `true`) is decoded first."""
        if foreign:
            raw = {k: v if k in self.str_fields else _maybe_json(v) for k, v in raw.items()}
        # The validator itself: model_validate only forwards to it (~0.4 us per call).
        return self.cls.Inputs.__pydantic_validator__.validate_python(raw)  # type: ignore[no-any-return]

    def outputs(self, job: Job, result: Any) -> Outcome:
        out_cls = self.cls.Outputs
        # The serializer itself is what model_dump() calls, minus ~0.3 us of forwarding.
        if isinstance(result, out_cls):
            return Completed(job, [result.__pydantic_serializer__.to_python(result)], False)
        if result is None:
            return Completed(job, [], fanout=True)
        if isinstance(result, list) and all(isinstance(r, out_cls) for r in result):
            dumped = [r.__pydantic_serializer__.to_python(r) for r in result]
            return Completed(job, dumped, fanout=True)
        got = type(result).__name__
        return Failed(
            job,
            f"{self.name}.execute returned {got}; expected {self.name}.Outputs, "
            f"a list of them, or None",
            "",
            permanent=True,
        )


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in '{["-0123456789tfn':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


async def execute(
    spec: NodeSpec,
    job: Job,
    graph: CompiledGraph | None,
    secrets: Mapping[str, str] | SecretsError,
    broker: Broker | None = None,
) -> Outcome:
    """`secrets`: the graph's decrypted secrets, or why they cannot be had (which fails
    only nodes that declare secrets). `broker`: backs `self.store` (created on first use)."""
    env = job.env
    if env.run_id is not None:
        if graph is None:
            reason = f"graph {env.graph!r} version {env.graph_version} not found"
            return Failed(job, reason, "", permanent=True)
        if env.identifier not in graph.nodes:
            reason = f"graph {env.graph!r} has no node {env.identifier!r}"
            return Failed(job, reason, "", permanent=True)
    try:
        inputs = spec.parse_inputs(env.inputs, env.foreign)
    except ValidationError as exc:
        return Failed(job, f"invalid inputs for {spec.name}: {_short(exc)}", "", permanent=True)
    if isinstance(secrets, SecretsError):
        if spec.cls.Secrets.model_fields:
            return Failed(job, f"secrets for {spec.name}: {secrets}", "", permanent=True)
        secrets = {}
    secret_model: BaseModel
    if spec.empty_secrets is not None:
        secret_model = spec.empty_secrets  # nothing to validate: one shared instance
    else:
        try:
            secret_model = spec.cls.Secrets.model_validate(secrets)
        except ValidationError as exc:
            reason = f"missing secrets for {spec.name}: {_short(exc)}"
            return Failed(job, reason, "", permanent=True)
    node = spec.cls()
    node.state_id = env.state_id
    node.run_id = env.run_id
    node._broker = broker
    node.inputs = inputs
    node.secrets = secret_model
    try:
        result = await node.execute()
    except PruneSignal as sig:
        return Pruned(job, sig.data)
    except ReQueueAfterSignal as sig:
        return Requeued(job, int(sig.delay.total_seconds() * 1000))
    except StoreUnavailable as exc:  # no store for this state: a retry cannot help
        return Failed(job, f"StoreUnavailable: {exc}", traceback.format_exc(), permanent=True)
    except Exception as exc:
        return Failed(job, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return spec.outputs(job, result)
