"""Names that become parts of Redis keys (namespaces, node class names, graph names, node
identifiers, run ids) are checked with a FULL match against `A-Z a-z 0-9 _ . -`."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from exospherehost.broker.keys import NAME_ALPHABET, KeyNameError, check_name
from exospherehost.graph.validation import validate_graph
from exospherehost.node import NodeValidationError, validate_nodes

BAD = ["Größe", "a}b", "x:y", "has space", "ok\n", "", "{ns}", "a" * 201, "tab\t", "é"]
GOOD = ["A-z0-9_.-", "a", "Z", "0", "node.v2", "my_node-1", "a" * 200]
NOWHERE = "redis://127.0.0.1:9"  # never connected to: names are refused before any I/O


def node_class(name: str) -> type[BaseNode]:
    class Inputs(BaseModel):
        x: int = 0

    class Outputs(BaseModel):
        x: int = 0

    async def execute(self: Any) -> Any:
        return self.Outputs(x=self.inputs.x)

    return type(name, (BaseNode,), {"Inputs": Inputs, "Outputs": Outputs, "execute": execute})


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("kind", ["namespace", "node name", "graph name"])
def test_check_name_refuses_bad_names_naming_them(kind: str, bad: str) -> None:
    with pytest.raises(KeyNameError) as info:
        check_name(kind, bad)
    assert f"{kind} {bad!r} is not valid" in str(info.value)
    assert NAME_ALPHABET in str(info.value)


@pytest.mark.parametrize("good", GOOD)
def test_check_name_accepts_the_documented_alphabet(good: str) -> None:
    assert check_name("namespace", good) == good


@pytest.mark.parametrize("bad", [b"bytes", None, 3])
def test_check_name_refuses_non_strings(bad: object) -> None:
    with pytest.raises(KeyNameError, match="is not valid"):
        check_name("namespace", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD)
def test_node_class_with_bad_name_is_refused_naming_class_and_alphabet(bad: str) -> None:
    cls = node_class(bad)
    with pytest.raises(NodeValidationError) as info:
        validate_nodes([cls])
    text = str(info.value)
    assert repr(bad) in text and NAME_ALPHABET in text, text
    with pytest.raises(NodeValidationError, match="is not valid"):
        Runtime(namespace="ns", name="r", nodes=[cls], redis_url=NOWHERE)


def test_node_class_name_problems_are_listed_with_the_others() -> None:
    good, bad = node_class("Fine"), node_class("x:y")
    with pytest.raises(NodeValidationError) as info:
        validate_nodes([good, bad, node_class("has space")])
    text = str(info.value)
    assert "'x:y'" in text and "'has space'" in text and "'Fine'" not in text, text


@pytest.mark.parametrize("good", GOOD)
def test_node_class_with_good_name_is_accepted(good: str) -> None:
    cls = node_class(good)
    assert validate_nodes([cls]) == [cls]
    assert Runtime(namespace=good, name=good, nodes=[cls], redis_url=NOWHERE).nodes == [cls]


@pytest.mark.parametrize("bad", BAD)
def test_runtime_and_state_manager_refuse_bad_namespaces(bad: str) -> None:
    namespace = re.escape(f"namespace {bad!r} is not valid")
    with pytest.raises(KeyNameError, match=namespace):
        Runtime(namespace=bad, name="r", nodes=[node_class("N")], redis_url=NOWHERE)
    with pytest.raises(KeyNameError, match=namespace):
        StateManager(bad, redis_url=NOWHERE)
    with pytest.raises(KeyNameError, match=re.escape(f"name {bad!r} is not valid")):
        Runtime(namespace="ns", name=bad, nodes=[node_class("N")], redis_url=NOWHERE)


@pytest.mark.parametrize("bad", BAD)
async def test_state_manager_refuses_bad_graph_names_and_run_ids(bad: str) -> None:
    sm = StateManager("ns", redis_url=NOWHERE)
    try:
        graph = [GraphNodeModel(node_name="N", namespace="ns", identifier="n", inputs={})]
        for call in (
            lambda: sm.upsert_graph(bad, graph, validation_timeout=0),
            lambda: sm.get_graph(bad),
            lambda: sm.trigger(bad),
            lambda: sm.list_runs(bad),
        ):
            with pytest.raises(KeyNameError, match=re.escape(f"graph name {bad!r} is not valid")):
                await call()
        for call in (
            lambda: sm.status(bad),
            lambda: sm.results(bad),
            lambda: sm.run_history(bad),
            lambda: sm.wait(bad, timeout=1),
            lambda: sm.run_store(bad),
        ):
            with pytest.raises(KeyNameError, match=re.escape(f"run id {bad!r} is not valid")):
                await call()
        for call in (
            lambda: sm.enqueue(bad, {}),
            lambda: sm.outputs(bad),
            lambda: sm.pending(bad),
        ):
            with pytest.raises(KeyNameError, match=re.escape(f"node name {bad!r} is not valid")):
                await call()
    finally:
        await sm.close()


# GraphNodeModel strips surrounding whitespace off names, so "ok\n" arrives as "ok".
GRAPH_BAD = [b for b in BAD if b.strip() == b and b]


@pytest.mark.parametrize("bad", GRAPH_BAD)
def test_graph_identifiers_and_node_names_are_checked(bad: str) -> None:
    nodes = [
        GraphNodeModel(node_name="Fine", namespace="ns", identifier=bad, inputs={}),
        GraphNodeModel(node_name=bad, namespace="ns", identifier="fine", inputs={}),
    ]
    errors = validate_graph("ns", nodes)
    assert f"node identifier {bad!r} is not valid: use 1-200 characters from {NAME_ALPHABET}" in (
        errors
    ), errors
    assert any(f"node name {bad!r} is not valid" in e and "'fine'" in e for e in errors), errors


def test_graph_with_good_names_has_no_name_errors() -> None:
    nodes = [
        GraphNodeModel(node_name=g, namespace="ns", identifier=f"i{n}{g}", inputs={})
        for n, g in enumerate(GOOD[:-1])
    ]
    assert not [e for e in validate_graph("ns", nodes) if "is not valid" in e]
