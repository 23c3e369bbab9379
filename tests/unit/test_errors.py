"""The error tree: every SDK error is an ExosphereError and still the builtin it was, keeps
its old import path, and public calls raise the tree's classes."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

import exospherehost
from exospherehost import BaseNode, ReQueueAfterSignal, Runtime, StateManager, errors
from exospherehost.broker import errors as broker_errors
from exospherehost.client.deadletters import DeadLetter, redrive_fields
from exospherehost.graph.runplan import run_store
from exospherehost.graphstore import compile_doc
from exospherehost.models import GraphNodeModel
from exospherehost.store import RunStore, check_store_key
from exospherehost.testing import PrivateServer

NOWHERE = "redis://127.0.0.1:1"  # never connected to: these calls fail before any I/O

# Each error and the base it had before the tree (user code may catch that).
OLD_BASE: dict[str, type[BaseException]] = {
    "ConfigError": ValueError,
    "ConnectionSetupError": ValueError,  # new (issue 14): was an endless outage retry
    "PermissionRefused": NoPermissionError,  # new (issue 14): redis-py's bare refusal
    "CronExpressionError": ValueError,
    "CorruptRecord": ValueError,  # new: RunRecord.parse raised a bare ValueError
    "GraphNotFound": KeyError,  # get_graph / trigger raised a bare KeyError
    "GraphValidationError": ValueError,
    "InputError": ValueError,
    "InvalidArgument": ValueError,  # the bare ValueErrors of argument checks
    "KeyNameError": ValueError,
    "KeyRefused": ResponseError,
    "MalformedEntry": ValueError,
    "MetricsPortError": OSError,
    "NodeValidationError": ValueError,
    "PrivateServerError": RuntimeError,  # exospherehost.testing raised bare RuntimeErrors
    "RedriveRefused": ValueError,
    "RetryRefused": ValueError,
    "RunNotFound": KeyError,
    "SecretsError": RuntimeError,
    "ShutdownAbandoned": RedisConnectionError,
    "SizeLimitExceeded": ValueError,  # new (issue 17.6): a ValueError like other bad input
    "StoreUnavailable": RuntimeError,
    "StoreConflict": TimeoutError,
    "TemplateError": ValueError,
    "TimedOut": Exception,
    "WaitTimedOut": TimeoutError,  # the waits raised a bare TimeoutError
}

# Where each error was defined before exospherehost.errors; those paths must keep working.
OLD_HOME = {
    "ConfigError": "exospherehost.config",
    "CronExpressionError": "exospherehost.graph.cron",
    "GraphValidationError": "exospherehost.client.statemanager",
    "InputError": "exospherehost.runtime.execution",
    "KeyNameError": "exospherehost.broker.keys",
    "KeyRefused": "exospherehost.broker.streams",
    "MalformedEntry": "exospherehost.broker.codec",
    "MetricsPortError": "exospherehost.runtime.metrics",
    "NodeValidationError": "exospherehost.node",
    "RedriveRefused": "exospherehost.client.deadletters",
    "RunNotFound": "exospherehost.client.runs",
    "SecretsError": "exospherehost.secrets",
    "ShutdownAbandoned": "exospherehost.runtime.worker",
    "StoreUnavailable": "exospherehost.store",
    "TemplateError": "exospherehost.graph.templating",
    "TimedOut": "exospherehost.runtime.execution",
}

# Exceptions of the SDK that are deliberately outside the tree (see exospherehost.errors).
SIGNALS = {"PruneSignal", "ReQueueAfterSignal"}


def _module_errors() -> dict[str, type[BaseException]]:
    """The exception classes exospherehost.errors holds (its own and the broker's)."""
    homes = {errors.__name__, broker_errors.__name__}
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ in homes
    }


def test_the_errors_module_exports_every_error_it_holds() -> None:
    assert set(errors.__all__) == set(_module_errors())


def test_every_error_is_an_exosphere_error_and_keeps_its_old_base() -> None:
    held = _module_errors()
    assert set(held) == set(OLD_BASE) | {"ExosphereError"}
    for name, cls in held.items():
        assert issubclass(cls, errors.ExosphereError), name
        if name != "ExosphereError":
            assert issubclass(cls, OLD_BASE[name]), name


def test_the_root_and_the_broker_errors_are_one_class_each() -> None:
    assert errors.ExosphereError is broker_errors.ExosphereError
    assert issubclass(errors.ExosphereError, Exception)
    for name in ("InvalidArgument", "KeyNameError", "KeyRefused", "MalformedEntry"):
        assert getattr(errors, name) is getattr(broker_errors, name)


def test_the_broker_s_errors_import_nothing_of_the_sdk() -> None:
    tree = ast.parse(Path(inspect.getfile(broker_errors)).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    sdk = [m for m in imported if m.split(".")[0] == "exospherehost"]
    assert all(m.startswith("exospherehost.broker") for m in sdk), sdk


@pytest.mark.parametrize(("name", "module"), sorted(OLD_HOME.items()))
def test_old_import_paths_still_work(name: str, module: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_every_exception_class_the_sdk_defines_is_in_the_tree() -> None:
    # A new `class XError(ValueError)` anywhere in the package fails here until it joins.
    outside: list[str] = []
    for info in pkgutil.walk_packages(exospherehost.__path__, "exospherehost."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (the dashboard's) not installed
            continue
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and obj.__name__ not in SIGNALS
                and not issubclass(obj, errors.ExosphereError)
            ):
                outside.append(f"{module.__name__}.{obj.__name__}")
    assert outside == []


def test_the_signals_stay_outside_the_tree() -> None:
    for name in SIGNALS:
        cls = getattr(exospherehost, name)
        assert issubclass(cls, Exception) and not issubclass(cls, errors.ExosphereError)


def test_the_tree_drawn_in_the_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    for name in _module_errors():
        assert re.search(rf"^ +{name}\b", doc, re.M), name


def test_the_readme_draws_the_same_tree() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Errors", 1)[1].split("\n## ", 1)[0]
    for name in _module_errors():
        assert re.search(rf"^ *{name}\b", section, re.M), name


# -- public calls raise the tree's classes, still caught by the old builtin -------------


class Echo(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        y: int

    async def execute(self) -> Outputs:
        return self.Outputs(y=self.inputs.x)


def test_a_bad_namespace_name_is_a_key_name_error_and_a_value_error() -> None:
    with pytest.raises(errors.KeyNameError, match="namespace 'a b' is not valid") as info:
        StateManager("a b", redis_url=NOWHERE)
    assert isinstance(info.value, errors.InvalidArgument)
    assert isinstance(info.value, ValueError)


def test_a_bad_runtime_argument_is_an_invalid_argument() -> None:
    with pytest.raises(ValueError, match="workers must be a positive number, got 0") as info:
        Runtime(namespace="ns", name="r", nodes=[Echo], redis_url=NOWHERE, workers=0)
    assert type(info.value) is errors.InvalidArgument


def test_a_bad_node_class_is_a_node_validation_error() -> None:
    with pytest.raises(exospherehost.ExosphereError) as info:
        Runtime(namespace="ns", name="r", nodes=[object], redis_url=NOWHERE)
    assert type(info.value) is errors.NodeValidationError


async def test_a_bad_graph_is_a_graph_validation_error_and_a_value_error() -> None:
    sm = StateManager("ns", redis_url=NOWHERE)
    nodes = [GraphNodeModel(node_name="Echo", namespace="ns", identifier="a", next_nodes=["b"])]
    try:
        with pytest.raises(ValueError, match="'b'") as info:
            await sm.upsert_graph("g", nodes)
        assert type(info.value) is errors.GraphValidationError
    finally:
        await sm.close()


async def test_a_negative_delay_is_an_invalid_argument() -> None:
    sm = StateManager("ns", redis_url=NOWHERE)
    try:
        with pytest.raises(errors.InvalidArgument, match="delay_ms must be a non-negative int"):
            await sm.enqueue("Echo", {"x": 1}, delay_ms=-1)
    finally:
        await sm.close()


async def test_a_wait_that_gives_up_is_wait_timed_out_and_a_timeout_error() -> None:
    sm = StateManager("ns", redis_url=NOWHERE)
    try:
        with pytest.raises(TimeoutError, match="1 of 1 states of Echo not done") as info:
            await sm.wait_for_states("Echo", ["s1"], timeout=0)
        assert type(info.value) is errors.WaitTimedOut
    finally:
        await sm.close()


def test_bad_store_keys_and_signal_delays_are_invalid_arguments() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"store key 'a\.b' cannot contain '\.'"):
        check_store_key("a.b")
    with pytest.raises(errors.InvalidArgument, match="must not be negative"):
        ReQueueAfterSignal(timedelta(seconds=-1))


def test_a_dead_letter_without_its_entry_is_refused() -> None:
    dead = DeadLetter("1-0", "Echo", "s", None, None, 1, 1, "E", "", 0, "1-0", {})
    with pytest.raises(ValueError, match="dead letter 1-0 has no original entry") as info:
        redrive_fields(dead)
    assert type(info.value) is errors.RedriveRefused


def test_missing_required_store_keys_at_trigger_are_an_invalid_argument() -> None:
    graph = compile_doc(
        {
            "name": "g",
            "version": 1,
            "nodes": [{"node_name": "Echo", "namespace": "ns", "identifier": "a", "inputs": {}}],
            "retry_policy": None,
            "store_config": {"required_keys": ["k"], "default_values": {}},
            "triggers": [],
            "secret_names": [],
            "validation_status": "VALID",
            "validation_errors": [],
            "updated_ms": 0,
        }
    )
    with pytest.raises(errors.InvalidArgument, match=r"requires store keys \['k'\]"):
        run_store(graph, {})


class _Nothing:
    """Stands in for Redis where a call only needs "there is no such thing" (unit tests
    run without a server): no run hash, no graph, no store to write."""

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {}

    async def current(self, name: str) -> None:
        return None

    async def current_version(self, name: str) -> None:
        return None

    async def store_set(self, run_id: str, values: dict[str, bytes]) -> bool:
        return False

    async def run(self, run_id: str) -> None:
        return None


async def test_a_missing_run_or_graph_is_caught_as_a_key_error() -> None:
    sm = StateManager("ns", redis_url=NOWHERE)
    await sm.close()
    sm.broker.runs = _Nothing()  # type: ignore[assignment]
    sm.graphs = _Nothing()  # type: ignore[assignment]
    with pytest.raises(KeyError, match="run 'nope' not found") as run_info:
        await sm.status("nope")
    assert type(run_info.value) is errors.RunNotFound
    with pytest.raises(KeyError, match="graph 'nope' not found in namespace 'ns'") as graph_info:
        await sm.get_graph("nope")
    assert type(graph_info.value) is errors.GraphNotFound
    with pytest.raises(errors.GraphNotFound):
        await sm.trigger("nope")


async def test_writing_the_store_of_an_expired_run_is_run_not_found() -> None:
    store = RunStore(_Nothing(), "gone")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="run 'gone' not found") as info:
        await store.set("k", 1)
    assert type(info.value) is errors.RunNotFound


def test_private_server_misuse_raises_the_tree_s_classes() -> None:
    with pytest.raises(errors.InvalidArgument, match="port out of range: 70000"):
        PrivateServer(port=70000)
    with pytest.raises(RuntimeError, match=r"restart\(\) before start\(\)") as info:
        PrivateServer().restart()
    assert type(info.value) is errors.PrivateServerError
