"""Node classes of the chaos suite and the worker process that serves them.

In-process tests import the classes; subprocess workers run this module:

    python -m tests.chaos.apps URL NAMESPACE

configured by the environment (see `WorkerConfig`), so every scenario starts the same
worker program with different knobs instead of keeping its own copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, field_serializer, field_validator

from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, Runtime
from tests.integration.apps.nodes import Label, SampleNode, Split, Square

# --------------------------------------------------------------------------- graph nodes


class Nap(BaseNode):
    """First stage of the chain graph: sleeps `ms` (awaiting, so the loop stays live)."""

    class Inputs(BaseModel):
        i: int
        ms: int = 0

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        await asyncio.sleep(self.inputs.ms / 1000)
        return self.Outputs(i=self.inputs.i)


class Leaf(BaseNode):
    """Last stage of the chain graph: records which process ran it."""

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int
        pid: int

    async def execute(self) -> Outputs:
        return self.Outputs(i=self.inputs.i, pid=os.getpid())


class Echo(BaseNode):
    """Returns its `tag` (a template constant): shows which graph template a run used."""

    class Inputs(BaseModel):
        tag: str

    class Outputs(BaseModel):
        tag: str

    async def execute(self) -> Outputs:
        return self.Outputs(tag=self.inputs.tag)


def chain_graph(ns: str, ms: int = 0) -> list[GraphNodeModel]:
    """nap (sleeps `ms`) -> leaf."""
    return [
        GraphNodeModel(
            node_name="Nap",
            namespace=ns,
            identifier="nap",
            inputs={"i": 0, "ms": ms},
            next_nodes=["leaf"],
        ),
        GraphNodeModel(
            node_name="Leaf", namespace=ns, identifier="leaf", inputs={"i": "${{ nap.outputs.i }}"}
        ),
    ]


# --------------------------------------------------------------------------- slow and hung


class Sleeper(BaseNode):
    """Sleeps `seconds` (at most `Sleeper.cap`, when an in-process test sets it), then
    succeeds: a healthy slow execution."""

    cap: ClassVar[float | None] = None

    class Inputs(BaseModel):
        seconds: float

    class Outputs(BaseModel):
        slept: float
        pid: int

    async def execute(self) -> Outputs:
        seconds = (
            self.inputs.seconds if Sleeper.cap is None else min(self.inputs.seconds, Sleeper.cap)
        )
        await asyncio.sleep(seconds)
        return self.Outputs(slept=seconds, pid=os.getpid())


class LongHanger(BaseNode):
    """Hangs like Hanger with a longer timeout: long enough to be caught by a kill -9."""

    timeout: ClassVar[float | None] = 5.0

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Hanger(BaseNode):
    """Never returns. Its class-level `timeout` (seconds, read by the Runtime) must end it."""

    timeout: ClassVar[float | None] = 1.0

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        await asyncio.Event().wait()  # nobody ever sets it
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- misbehaving


class ChaosBaseException(BaseException):
    """Not an Exception: an execution raising it must still end in an outcome."""


class OutputsSerializerError(ValueError):
    """Raised by the Outputs field serializer below."""


class Unpackable:
    """A value msgpack cannot carry (and pydantic's JSON fallback does not know)."""


def _recurse(depth: int) -> int:
    return _recurse(depth + 1) + 1


KIND_ERRORS: dict[str, str] = {
    # kind -> what the reason of its failure / dead letter must name
    "cancelled": "CancelledError",
    "base_exception": "ChaosBaseException",
    "generator_exit": "GeneratorExit",
    "keyboard_interrupt": "KeyboardInterrupt",
    "system_exit": "SystemExit",
    "recursion": "RecursionError",
    "validator_keyerror": "KeyError",
    "serializer": "OutputsSerializerError",
    "wrong_type": "returned int",
    "unpackable": "Unpackable",
}
"""Every way `Chaotic` misbehaves, with the words its failure reason must contain."""


class Chaotic(BaseNode):
    """Misbehaves as its `kind` says (a key of KIND_ERRORS); kind 'ok' succeeds."""

    class Inputs(BaseModel):
        kind: str
        n: int = 0

        @field_validator("kind")
        @classmethod
        def _kind(cls, value: str) -> str:
            if value == "validator_keyerror":
                # Not a ValueError: pydantic lets it escape validation unwrapped.
                raise KeyError("validator looked up a key that is not there")
            return value

    class Outputs(BaseModel):
        kind: str
        n: int
        blob: Any = None

        @field_serializer("kind")
        def _kind(self, value: str) -> str:
            if value == "serializer":
                raise OutputsSerializerError("this Outputs refuses to serialise")
            return value

    async def execute(self) -> Any:
        kind = self.inputs.kind
        if kind == "cancelled":
            raise asyncio.CancelledError("a node raising CancelledError on its own")
        if kind == "base_exception":
            raise ChaosBaseException("custom BaseException subclass")
        if kind == "generator_exit":
            raise GeneratorExit("a node raising GeneratorExit")
        if kind == "keyboard_interrupt":
            raise KeyboardInterrupt("a node raising KeyboardInterrupt")
        if kind == "system_exit":
            raise SystemExit("a node calling sys.exit")
        if kind == "recursion":
            return _recurse(0)  # a real RecursionError, with a very deep traceback
        if kind == "wrong_type":
            return 42
        blob = Unpackable() if kind == "unpackable" else None
        return self.Outputs(kind=kind, n=self.inputs.n, blob=blob)


class Picky(BaseNode):
    """Accepts any fields (a plain XADD of thousands); fails until `Picky.accept` is set."""

    accept: ClassVar[bool] = False

    class Inputs(BaseModel, extra="allow"):
        name: str

    class Outputs(BaseModel):
        name: str
        fields: int

    async def execute(self) -> Outputs:
        if not Picky.accept:
            raise RuntimeError("Picky does not accept states yet")
        extra = self.inputs.model_extra or {}
        return self.Outputs(name=self.inputs.name, fields=len(extra) + 1)


ALL: list[type[BaseNode]] = [
    SampleNode,
    Split,
    Square,
    Label,
    Nap,
    Leaf,
    Echo,
    Sleeper,
    Hanger,
    LongHanger,
    Chaotic,
    Picky,
]
BY_NAME = {n.__name__: n for n in ALL}

# --------------------------------------------------------------------------- worker process


@dataclass(frozen=True)
class WorkerConfig:
    """The knobs of a chaos worker process, passed as EXO_CHAOS_* environment variables."""

    nodes: tuple[str, ...]
    visibility: float = 1.0
    max_deliveries: int = 20
    workers: int = 32
    grace: float = 5.0
    retries: int = 1
    consumer_idle: float | None = None  # None: the Runtime's default (minutes)
    prefetch: int | None = None  # None: the Runtime's adaptive read-ahead

    def env(self) -> dict[str, str]:
        return {
            "EXO_CHAOS_NODES": ",".join(self.nodes),
            "EXO_CHAOS_VISIBILITY": str(self.visibility),
            "EXO_CHAOS_MAX_DELIVERIES": str(self.max_deliveries),
            "EXO_CHAOS_WORKERS": str(self.workers),
            "EXO_CHAOS_GRACE": str(self.grace),
            "EXO_CHAOS_RETRIES": str(self.retries),
            "EXO_CHAOS_CONSUMER_IDLE": ""
            if self.consumer_idle is None
            else str(self.consumer_idle),
            "EXO_CHAOS_PREFETCH": "" if self.prefetch is None else str(self.prefetch),
        }

    @classmethod
    def from_env(cls) -> WorkerConfig:
        e = os.environ
        return cls(
            nodes=tuple(e["EXO_CHAOS_NODES"].split(",")),
            visibility=float(e["EXO_CHAOS_VISIBILITY"]),
            max_deliveries=int(e["EXO_CHAOS_MAX_DELIVERIES"]),
            workers=int(e["EXO_CHAOS_WORKERS"]),
            grace=float(e["EXO_CHAOS_GRACE"]),
            retries=int(e["EXO_CHAOS_RETRIES"]),
            consumer_idle=float(e["EXO_CHAOS_CONSUMER_IDLE"] or 0) or None,
            prefetch=int(e["EXO_CHAOS_PREFETCH"]) if e.get("EXO_CHAOS_PREFETCH") else None,
        )


def quick_retries(retries: int) -> RetryPolicyModel:
    """`retries` retries 10 ms apart: failures reach their dead letter fast."""
    return RetryPolicyModel(
        max_retries=retries, strategy=RetryStrategyEnum.FIXED, backoff_factor=10
    )


def runtime(url: str, namespace: str, cfg: WorkerConfig) -> Runtime:
    return Runtime(
        namespace=namespace,
        name="chaos",
        nodes=[BY_NAME[n] for n in cfg.nodes],
        redis_url=url,
        workers=cfg.workers,
        visibility_timeout=cfg.visibility,
        max_deliveries=cfg.max_deliveries,
        grace_period=cfg.grace,
        default_retry_policy=quick_retries(cfg.retries),
        consumer_idle_timeout=cfg.consumer_idle,
        prefetch=cfg.prefetch,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, namespace = sys.argv[1], sys.argv[2]
    runtime(url, namespace, WorkerConfig.from_env()).start()
    print("runtime stopped cleanly", flush=True)


if __name__ == "__main__":
    main()
