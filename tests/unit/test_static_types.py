"""upsert_graph's static type check (graph/fieldtypes.py, validation._check_types): a
mapping pydantic would refuse at every run is refused when the graph is stored, naming
node, field, expected and found type; one lax pydantic may accept is never refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode
from exospherehost.graph.fieldtypes import describe, field_types, refused
from exospherehost.graph.validation import NodeSchema, validate_graph
from exospherehost.models import GraphNodeModel, UnitesModel
from exospherehost.node import node_schema, returns

NS = "ns"


class Item(BaseModel):
    k: int


class Split(BaseNode):
    class Inputs(BaseModel):
        n: int

    class Outputs(BaseModel):
        tag: str
        value: int

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(tag="t", value=i) for i in range(self.inputs.n)]


class One(BaseNode):
    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        tag: str
        value: int
        items: list[int]
        maybe: str | None

    async def execute(self) -> Outputs | None:
        return None


class Takes(BaseNode):
    class Inputs(BaseModel):
        tag: str = ""
        tags: list[str] = []
        n: int = 0
        f: float = 0.0
        flag: bool = False
        item: Item | None = None
        anything: Any = None

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        return self.Outputs(ok=True)


class Unknown(BaseNode):
    class Inputs(BaseModel):
        n: int

    class Outputs(BaseModel):
        tag: str

    async def execute(self):  # type: ignore[no-untyped-def]  # no annotation: either
        return self.Outputs(tag="x")


SCHEMAS = {
    c.__name__: NodeSchema.from_registered(node_schema(c)) for c in (Split, One, Takes, Unknown)
}


def n(
    ident: str,
    name: str,
    inputs: dict[str, Any],
    next_nodes: list[str] | None = None,
    unites: str | None = None,
) -> GraphNodeModel:
    return GraphNodeModel(
        node_name=name,
        namespace=NS,
        identifier=ident,
        inputs=inputs,
        next_nodes=next_nodes,
        unites=UnitesModel(identifier=unites) if unites else None,
    )


def errors(*nodes: GraphNodeModel) -> list[str]:
    return validate_graph(NS, list(nodes), None, SCHEMAS, None)


def test_returns_reads_the_execute_annotation() -> None:
    assert returns(Split) == "many"
    assert returns(One) == "one"
    assert returns(Takes) == "one"
    assert returns(Unknown) == "either"


def test_field_types_from_json_schemas() -> None:
    got = field_types(Takes.Inputs.model_json_schema())
    assert got["tag"] == {"string"}
    assert got["tags"] == {"array"}
    assert got["n"] == {"integer"}
    assert got["item"] == {"object", "null"}  # $ref + anyOf null
    assert got["anything"] is None
    assert describe(got["item"]) == "None | dict"


@pytest.mark.parametrize(
    ("target", "source", "bad"),
    [
        ({"string"}, {"array"}, True),
        ({"string"}, {"integer"}, True),  # pydantic v2 does not turn numbers into str
        ({"integer"}, {"string"}, False),  # "5" -> 5 in lax mode
        ({"number"}, {"integer"}, False),
        ({"boolean"}, {"integer"}, False),
        ({"array"}, {"string"}, True),
        ({"object"}, {"array"}, True),
        ({"string", "null"}, {"null"}, False),
        (None, {"array"}, False),
        ({"string"}, None, False),
    ],
)
def test_refused_only_when_no_value_can_pass(
    target: set[str] | None, source: set[str] | None, bad: bool
) -> None:
    t = frozenset(target) if target is not None else None
    s = frozenset(source) if source is not None else None
    assert refused(t, s) is bad


def test_the_issue_case_a_uniting_str_fed_by_a_fanning_out_target_is_refused() -> None:
    got = errors(
        n("split", "Split", {"n": 3}, ["square"]),
        n("square", "One", {"value": "${{ split.outputs.value }}"}, ["unite"]),
        n("unite", "Takes", {"tag": "${{ split.outputs.tag }}"}, unites="split"),
    )
    assert len(got) == 1, got
    msg = got[0]
    for part in ("'unite'", "(Takes)", "input 'tag'", "expects str", "gets list", "fan-out"):
        assert part in msg, (part, msg)


def test_a_uniting_list_field_fed_by_the_branches_is_accepted_and_a_str_refused() -> None:
    graph = [
        n("split", "Split", {"n": 3}, ["one"]),
        n("one", "One", {"value": "${{ split.outputs.value }}"}, ["u"]),
    ]
    assert errors(*graph, n("u", "Takes", {"tags": "${{ one.outputs.tag }}"}, unites="split")) == []
    [msg] = errors(*graph, n("u", "Takes", {"tag": "${{ one.outputs.tag }}"}, unites="split"))
    assert "every branch of 'split'" in msg


def test_a_fan_out_successor_gets_one_value_per_branch_not_a_list() -> None:
    assert (
        errors(
            n("split", "Split", {"n": 3}, ["t"]),
            n("t", "Takes", {"tag": "${{ split.outputs.tag }}"}),
        )
        == []
    )


def test_literals_and_scalar_outputs_of_the_wrong_type_are_refused() -> None:
    got = errors(
        n("one", "One", {"value": 1}, ["t"]),
        n(
            "t",
            "Takes",
            {
                "tag": "${{ one.outputs.value }}",  # int into str
                "tags": "x",  # str into list
                "n": "${{ one.outputs.items }}",  # list into int
                "f": "7",  # lax: accepted
                "flag": 1,  # lax: accepted
                "anything": [1],
            },
        ),
    )
    assert len(got) == 3, got
    text = "\n".join(got)
    assert "input 'tag' expects str but gets int (${{ one.outputs.value }})" in text
    assert "input 'tags' expects list but gets str" in text
    assert "input 'n' expects int but gets list" in text


def test_text_with_placeholders_is_a_str() -> None:
    one = n("one", "One", {"value": 1}, ["t"])
    assert errors(one, n("t", "Takes", {"tag": "v=${{ one.outputs.value }}"})) == []
    [msg] = errors(one, n("t", "Takes", {"tags": "v=${{ one.outputs.value }}"}))
    assert "expects list but gets str (text with placeholders is a str)" in msg


def test_an_unannotated_target_and_store_values_are_not_judged() -> None:
    assert (
        errors(
            n("u0", "Unknown", {"n": 1}, ["one"]),
            n("one", "One", {"value": 1}, ["t"]),
            n("t", "Takes", {"tag": "${{ u0.outputs.tag }}"}, unites="u0"),
        )
        == []
    )


def test_registrations_without_types_check_nothing() -> None:
    old = {
        name: NodeSchema(s.inputs, s.required_inputs, s.outputs, s.secrets)
        for name, s in SCHEMAS.items()
    }
    nodes = [
        n("split", "Split", {"n": 3}, ["unite"]),
        n("unite", "Takes", {"tag": "${{ split.outputs.tag }}"}, unites="split"),
    ]
    assert validate_graph(NS, nodes, None, old, None) == []
