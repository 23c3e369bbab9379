"""Run one state through its node and turn whatever happens into an Outcome value.

Whatever node code raises — BaseException included: CancelledError it raised itself,
GeneratorExit, KeyboardInterrupt, SystemExit, custom subclasses — and whatever decoding,
validating or serialising raise, ends as an Outcome; only the worker's own cancellation
(grace period over at shutdown) propagates. Inputs that cannot be decoded or validated
fail permanently (a retry would see the same inputs); anything raised by node code
(`execute`, an `Outputs` serializer, a timeout) is retried per the retry policy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from exospherehost.errors import InputError as InputError  # old import path
from exospherehost.errors import SizeLimitExceeded
from exospherehost.errors import TimedOut as TimedOut  # old import path
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.node import BaseNode
from exospherehost.runtime.outcomes import Completed, Failed, Job, Outcome, Pruned, Requeued
from exospherehost.secrets import SecretsError
from exospherehost.signals import PruneSignal, ReQueueAfterSignal
from exospherehost.store import StoreUnavailable

if TYPE_CHECKING:
    from exospherehost.broker.streams import Broker


_MAX_MESSAGE = 2_000  # chars of an exception's message kept in an error string
_MAX_TRACEBACK = 16_000  # chars of a traceback kept (head and tail) for the dead letter


def describe(exc: BaseException) -> str:
    """`Class: message` (the class alone when the message is empty), bounded in length."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the error it describes
        text = "<str() failed>"
    if len(text) > _MAX_MESSAGE:
        text = f"{text[:_MAX_MESSAGE]}... ({len(text)} chars)"
    return f"{name}: {text}" if text else name


def format_traceback(exc: BaseException) -> str:
    """The traceback of `exc` with its chain, bounded: a deep recursion keeps its ends."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # formatting must never be what fails a settle
        return describe(exc)
    if len(text) > _MAX_TRACEBACK:
        head, tail = _MAX_TRACEBACK // 4, _MAX_TRACEBACK * 3 // 4
        text = f"{text[:head]}\n... ({len(text) - head - tail} chars left out) ...\n{text[-tail:]}"
    return text


def shutdown_cancel() -> bool:
    """Whether the running task was asked to cancel: a CancelledError then belongs to
    whoever cancelled it (the worker's shutdown), not to node code that raised it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class InternalErrors:
    """Bugs in our own code path, each failing one state. Logged at ERROR with the
    traceback the first time per (where, class), then at most once per `every` seconds
    with a count: a bug hit by every state must not log per state."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self.log = logger
        self.every = every
        self._seen: dict[tuple[str, type[BaseException]], list[float]] = {}

    def report(self, where: str, exc: BaseException) -> None:
        key = (where, type(exc))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = [now, 0]
            self.log.error(
                "internal error while %s (a bug: the state fails, the worker goes on)",
                where,
                exc_info=exc,
            )
            return
        seen[1] += 1
        if now - seen[0] >= self.every:
            self.log.error(
                "internal error while %s again, %d times since logged: %s",
                where,
                int(seen[1]),
                describe(exc),
            )
            seen[0], seen[1] = now, 0


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
    timeout: float | None = None  # the node's bound on one execution (s)

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
            node.timeout,
        )

    def parse_inputs(self, raw: dict[str, Any], foreign: bool) -> BaseModel:
        """Validate inputs. Values from a plain XADD are strings: where the model wants
        something else, a JSON value (`{"k":1}`, `[1,2]`, `3`, `true`) is decoded first."""
        if foreign:
            raw = _decode_foreign(raw, self.str_fields)
        # The validator itself: model_validate only forwards to it (~0.4 us per call).
        return self.cls.Inputs.__pydantic_validator__.validate_python(raw)  # type: ignore[no-any-return]

    def outputs(self, job: Job, result: Any) -> Outcome:
        out_cls = self.cls.Outputs
        # The serializer itself is what model_dump() calls, minus ~0.3 us of forwarding.
        if isinstance(result, out_cls):
            return Completed(job, [result.__pydantic_serializer__.to_python(result)], False)
        if result is None:
            # As the original SDK: the state succeeds with empty outputs and its next
            # nodes run (a `[]` is a fan-out into no branches: the branch ends).
            return Completed(job, [{}], False)
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


def _decode_foreign(raw: dict[str, Any], str_fields: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k in str_fields:
            out[k] = v
            continue
        try:
            out[k] = _maybe_json(v)
        except RecursionError as exc:  # JSON nested deeper than the interpreter's stack
            raise InputError(f"{k}: {describe(exc)}") from exc
    return out


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
    inputs: dict[str, Any] | None = None,
) -> Outcome:
    """`secrets`: the graph's decrypted secrets, or why they cannot be had (which fails
    only nodes that declare secrets). `broker`: backs `self.store` (created on first use).
    `inputs`: rendered by the worker (store values read for it), instead of the envelope's."""
    env = job.env
    if env.run_id is not None:
        if graph is None:
            reason = f"graph {env.graph!r} version {env.graph_version} not found"
            return Failed(job, reason, "", permanent=True, started=False)
        if env.identifier not in graph.nodes:
            reason = f"graph {env.graph!r} has no node {env.identifier!r}"
            return Failed(job, reason, "", permanent=True, started=False)
    try:
        model = spec.parse_inputs(env.inputs if inputs is None else inputs, env.foreign)
    except ValidationError as exc:
        reason = f"invalid inputs for {spec.name}: {_short(exc)}"
        return Failed(job, reason, "", permanent=True, started=False)
    except InputError as exc:
        return Failed(
            job, f"invalid inputs for {spec.name}: {exc}", "", permanent=True, started=False
        )
    except BaseException as exc:  # a validator raising anything else: still bad inputs
        reason = f"invalid inputs for {spec.name}: {describe(exc)}"
        return Failed(job, reason, format_traceback(exc), permanent=True, started=False)
    if isinstance(secrets, SecretsError):
        if spec.cls.Secrets.model_fields:
            return Failed(
                job, f"secrets for {spec.name}: {secrets}", "", permanent=True, started=False
            )
        secrets = {}
    secret_model: BaseModel
    if spec.empty_secrets is not None:
        secret_model = spec.empty_secrets  # nothing to validate: one shared instance
    else:
        try:
            secret_model = spec.cls.Secrets.model_validate(secrets)
        except ValidationError as exc:
            reason = f"missing secrets for {spec.name}: {_short(exc)}"
            return Failed(job, reason, "", permanent=True, started=False)
        except BaseException as exc:
            reason = f"invalid secrets for {spec.name}: {describe(exc)}"
            return Failed(job, reason, format_traceback(exc), permanent=True, started=False)
    # The smaller of the job's and the node's bound; None (the usual case) costs nothing.
    limit = spec.timeout
    if job.timeout is not None and (limit is None or job.timeout < limit):
        limit = job.timeout
    try:
        node = spec.cls()
        node.state_id = env.state_id
        node.run_id = env.run_id
        node._broker = broker
        node.inputs = model
        node.secrets = secret_model
        if limit is None:
            result = await node.execute()
        else:
            result = await _bounded(node, limit)
    except PruneSignal as sig:
        return Pruned(job, sig.data)
    except ReQueueAfterSignal as sig:
        return Requeued(job, int(sig.delay.total_seconds() * 1000))
    except StoreUnavailable as exc:  # no store for this state: a retry cannot help
        return Failed(job, f"StoreUnavailable: {exc}", format_traceback(exc), permanent=True)
    except SizeLimitExceeded as exc:  # e.g. a self.store write over its limit: deterministic
        return Failed(job, describe(exc), format_traceback(exc), permanent=True)
    except TimedOut as exc:
        return Failed(job, f"{spec.name}.execute {exc}", format_traceback(exc))
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) and shutdown_cancel():
            raise  # the worker's own: it releases the state
        return Failed(job, describe(exc), format_traceback(exc))
    try:
        return spec.outputs(job, result)
    except BaseException as exc:  # a field serializer raising: node code, like execute
        reason = f"{spec.name}.Outputs cannot be serialised: {describe(exc)}"
        return Failed(job, reason, format_traceback(exc))


async def _bounded(node: BaseNode, limit: float) -> Any:
    """`node.execute()` cancelled after `limit` seconds (raising TimedOut); a TimeoutError
    the node raises itself stays its own."""
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            return await node.execute()
    except TimeoutError as exc:
        if scope.expired():
            raise TimedOut(limit) from exc
        raise
