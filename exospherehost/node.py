"""BaseNode: what users subclass, and the checks a Runtime runs on node classes."""

from __future__ import annotations

import inspect
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from exospherehost.broker.keys import name_problem
from exospherehost.errors import NodeValidationError as NodeValidationError  # old import path
from exospherehost.store import RunStore, StoreUnavailable

if TYPE_CHECKING:
    from exospherehost.broker.streams import Broker


class BaseNode(ABC):
    """A unit of work. Subclasses define `Inputs`, `Outputs`, optional `Secrets`
    (pydantic models) and `async def execute(self)` returning `Outputs` or a list of
    `Outputs` (a list fans out: one successor state per element).

    Execution is at-least-once (a state whose worker died is run again elsewhere),
    so `execute` should be idempotent; stage transitions are exactly-once.

    A state of a graph run reads and writes the run's key-value store through
    `self.store` (`await self.store.get(key)`, `.set(key, value)`, `.all()`, ...).

    `timeout` (seconds, or None for no bound) bounds each execution: one that runs longer
    is cancelled and counts as a failure under the retry policy.
    """

    timeout: ClassVar[float | None] = None

    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    class Secrets(BaseModel):
        pass

    # Set by the Runtime before `execute`; typed loosely because each subclass narrows them.
    inputs: Any
    secrets: Any
    state_id: str
    run_id: str | None
    _node_name: ClassVar[str]
    _broker: Broker | None = None  # set by the Runtime: backs `store`
    _store: RunStore | None = None

    def __init__(self) -> None:
        self.inputs = None
        self.secrets = None
        self.state_id = ""
        self.run_id = None

    @property
    def store(self) -> RunStore:
        """The key-value store of this state's graph run (see `RunStore`): values given to
        `trigger(store=...)` plus the graph's defaults, and whatever nodes of the run wrote.
        Raises StoreUnavailable for a state enqueued without a graph."""
        if self._store is None:
            if self.run_id is None:
                raise StoreUnavailable(
                    f"{type(self).__name__}.store is only available to states of a graph "
                    f"run; state {self.state_id!r} was enqueued without a graph"
                )
            if self._broker is None:
                raise StoreUnavailable(
                    f"{type(self).__name__}.store needs the Runtime's Redis connection: it "
                    f"is available only while a Runtime executes the node"
                )
            self._store = RunStore(self._broker, self.run_id)
        return self._store

    @abstractmethod
    async def execute(self) -> Any:
        """Do the work with `self.inputs` / `self.secrets`; return Outputs or list[Outputs]."""


def _model_problems(cls: type, attr: str) -> list[str]:
    model = getattr(cls, attr, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return [f"{cls.__name__}.{attr} must be a pydantic BaseModel subclass, got {model!r}"]
    return []


def _timeout_problems(cls: type) -> list[str]:
    timeout = getattr(cls, "timeout", None)
    if timeout is None:
        return []
    # bool is an int, and inf / nan would pass `> 0` or fail oddly in asyncio.timeout.
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        return [
            f"{cls.__name__}.timeout must be a positive number of seconds or None, got {timeout!r}"
        ]
    return []


def node_problems(cls: object) -> list[str]:
    """Every reason `cls` cannot be served by a Runtime (empty when it can)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseNode)):
        return [f"{cls!r} is not a subclass of exospherehost.BaseNode"]
    problems: list[str] = []
    # The class name names the node's streams and registry entry: a key part.
    bad_name = name_problem("node class name", cls.__name__)
    if bad_name is not None:
        problems.append(f"{bad_name} (class {cls.__module__}.{cls.__qualname__})")
    for attr in ("Inputs", "Outputs", "Secrets"):
        problems += _model_problems(cls, attr)
    execute = getattr(cls, "execute", None)
    if execute is None or getattr(execute, "__isabstractmethod__", False):
        problems.append(f"{cls.__name__} must implement `async def execute(self)`")
    elif not inspect.iscoroutinefunction(execute):
        problems.append(f"{cls.__name__}.execute must be `async def`, it is a plain function")
    problems += _timeout_problems(cls)
    if inspect.isabstract(cls) and not problems:
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        problems.append(f"{cls.__name__} is abstract (unimplemented: {missing})")
    return problems


def validate_nodes(nodes: Sequence[object] | Iterable[object]) -> list[type[BaseNode]]:
    """Check all node classes at once; raise one NodeValidationError listing every problem."""
    nodes = list(nodes)
    problems: list[str] = []
    if not nodes:
        problems.append("nodes must list at least one BaseNode subclass")
    seen: dict[str, object] = {}
    for cls in nodes:
        found = node_problems(cls)
        problems += found
        if found or not isinstance(cls, type):
            continue
        name = cls.__name__
        if name in seen:
            problems.append(f"duplicate node name {name!r}: {seen[name]!r} and {cls!r}")
        seen[name] = cls
    if problems:
        raise NodeValidationError("invalid nodes:\n- " + "\n- ".join(problems))
    return [c for c in nodes if isinstance(c, type) and issubclass(c, BaseNode)]


def node_schema(cls: type[BaseNode]) -> dict[str, Any]:
    """What a Runtime registers for graph validation: JSON schemas of the three models, and
    what `execute` is annotated to return (for the type check of a uniting node's inputs)."""
    return {
        "name": cls.__name__,
        "inputs_schema": cls.Inputs.model_json_schema(),
        "outputs_schema": cls.Outputs.model_json_schema(),
        "secrets_schema": cls.Secrets.model_json_schema(),
        "returns": returns(cls),
    }


def returns(cls: type[BaseNode]) -> str:
    """ "one" when `execute` is annotated to return one Outputs (or None), "many" for a list
    of them (a fan-out), "either" for both or no (readable) annotation."""
    try:
        hints = typing.get_type_hints(cls.execute, localns=dict(vars(cls)))
    except Exception:  # a forward reference it cannot resolve: say nothing
        return "either"
    hint = hints.get("return")
    if hint is None:
        return "either"
    one = many = False
    for part in typing.get_args(hint) if _is_union(hint) else (hint,):
        if part is type(None):
            continue
        if typing.get_origin(part) is list:
            many = True
        elif isinstance(part, type) and issubclass(part, BaseModel):
            one = True
        else:
            return "either"
    if one != many:
        return "one" if one else "many"
    return "either"


def _is_union(hint: object) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
