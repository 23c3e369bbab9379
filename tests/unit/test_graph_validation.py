"""Unit tests for exospherehost.graph.validation (pure, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from exospherehost.graph.validation import (
    NodeSchema,
    common_ancestors,
    root_identifier,
    validate_graph,
)
from exospherehost.models import GraphNodeModel, StoreConfigModel, UnitesModel

NS = "ns"


def node(
    identifier: str,
    next_nodes: list[str] | None = None,
    inputs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    namespace: str = NS,
    unites: str | None = None,
) -> GraphNodeModel:
    return GraphNodeModel(
        node_name=name or identifier.capitalize(),
        namespace=namespace,
        identifier=identifier,
        inputs=inputs or {},
        next_nodes=next_nodes,
        unites=UnitesModel(identifier=unites) if unites else None,
    )


def schema(
    inputs: set[str] | None = None,
    required: set[str] | None = None,
    outputs: set[str] | None = None,
    secrets: set[str] | None = None,
) -> NodeSchema:
    return NodeSchema(
        inputs=frozenset(inputs or ()),
        required_inputs=frozenset(required if required is not None else inputs or ()),
        outputs=frozenset(outputs or ()),
        secrets=frozenset(secrets or ()),
    )


def one_error(errors: list[str], *fragments: str) -> str:
    """Exactly one error, containing every fragment."""
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def chain_with_fan_out() -> list[GraphNodeModel]:
    # a -> b -> {c, d}
    return [
        node("a", ["b"], {"x": "literal"}),
        node("b", ["c", "d"], {"y": "${{ a.outputs.out }}", "z": "${{ store.region }}"}),
        node("c", None, {"v": "${{ b.outputs.out }} and ${{ a.outputs.out }}"}),
        node("d", None, {"w": {"nested": ["${{ a.outputs.out }}"]}}),
    ]


def diamond(inputs_d: dict[str, Any], unites: str | None = None) -> list[GraphNodeModel]:
    # a -> {b, c} -> d
    return [
        node("a", ["b", "c"]),
        node("b", ["d"]),
        node("c", ["d"]),
        node("d", None, inputs_d, unites=unites),
    ]


# --- valid graphs --------------------------------------------------------------------


def test_valid_chain_with_fan_out_has_no_errors() -> None:
    store = StoreConfigModel(required_keys=["region"])
    assert validate_graph(NS, chain_with_fan_out(), store) == []


def test_valid_graph_with_schemas_and_secrets_has_no_errors() -> None:
    nodes = [
        node("a", ["b"], {"x": "1"}, name="A"),
        node("b", None, {"y": "${{ a.outputs.out }}"}, name="B"),
    ]
    schemas = {
        "A": schema({"x"}, outputs={"out"}, secrets={"token"}),
        "B": schema({"y", "opt"}, required={"y"}),
    }
    assert validate_graph(NS, nodes, None, schemas, {"token": "s3cret"}) == []


def test_single_node_graph_is_valid() -> None:
    assert validate_graph(NS, [node("only")]) == []


def test_store_key_from_default_values_is_declared() -> None:
    nodes = [node("a", None, {"x": "${{ store.k }}"})]
    assert validate_graph(NS, nodes, StoreConfigModel(default_values={"k": 1})) == []


# --- basic shape ---------------------------------------------------------------------


def test_empty_graph() -> None:
    one_error(validate_graph(NS, []), "no nodes")


def test_duplicate_identifiers() -> None:
    errors = validate_graph(NS, [node("a", ["b"]), node("b"), node("b")])
    one_error(errors, "'b'", "used by 2 nodes")


def test_namespace_mismatch() -> None:
    errors = validate_graph(NS, [node("a", ["b"]), node("b", namespace="other")])
    one_error(errors, "'b'", "'other'", "'ns'")


def test_unknown_next_node() -> None:
    errors = validate_graph(NS, [node("a", ["ghost"])])
    one_error(errors, "'a'", "unknown identifier 'ghost'", "next_nodes")


def test_unknown_unites_target() -> None:
    errors = validate_graph(NS, [node("a", ["b"]), node("b", unites="ghost")])
    one_error(errors, "'b'", "unites unknown identifier 'ghost'")


def test_unites_itself() -> None:
    errors = validate_graph(NS, [node("a", ["b"]), node("b", unites="b")])
    one_error(errors, "'b'", "unites itself")


def test_unites_target_must_be_common_ancestor() -> None:
    errors = validate_graph(NS, diamond({}, unites="b"))
    one_error(errors, "'d'", "unites 'b'", "not an ancestor")


def test_unites_common_ancestor_is_valid() -> None:
    assert validate_graph(NS, diamond({}, unites="a")) == []


# --- roots, cycles, reachability -----------------------------------------------------


def test_more_than_one_root_names_them() -> None:
    errors = validate_graph(NS, [node("a", ["c"]), node("b", ["c"]), node("c")])
    one_error(errors, "2 root nodes", "a, b")


def test_no_root() -> None:
    errors = validate_graph(NS, [node("a", ["b"]), node("b", ["a"])])
    assert any("no root node" in e for e in errors), errors
    assert any("cycle" in e and "a -> b -> a" in e for e in errors), errors
    assert not any("not reachable" in e for e in errors), errors


def test_cycle_below_root_names_nodes_on_it() -> None:
    nodes = [node("r", ["a"]), node("a", ["b"]), node("b", ["c"]), node("c", ["a"])]
    one_error(validate_graph(NS, nodes), "cycle", "a -> b -> c -> a")


def test_self_loop_is_a_cycle() -> None:
    one_error(validate_graph(NS, [node("r", ["a"]), node("a", ["a"])]), "cycle", "a -> a")


def test_unreachable_cycle_is_reported_as_cycle_and_unreachable() -> None:
    nodes = [node("r"), node("x", ["y"]), node("y", ["x"])]
    errors = validate_graph(NS, nodes)
    assert any("x -> y -> x" in e for e in errors), errors
    assert any("'x' is not reachable from the root 'r'" in e for e in errors), errors
    assert any("'y' is not reachable from the root 'r'" in e for e in errors), errors


def test_nodes_unreachable_from_any_root() -> None:
    # Two roots, plus a cycle that no root leads into.
    nodes = [node("r1"), node("r2"), node("x", ["y"]), node("y", ["x"])]
    errors = validate_graph(NS, nodes)
    assert any("2 root nodes" in e for e in errors), errors
    assert any("'x' is not reachable from any root" in e for e in errors), errors


def test_larger_strongly_connected_component_lists_all_members() -> None:
    # a -> b -> a and b -> c -> a: one component {a, b, c}; shortest cycle is a -> b -> a.
    nodes = [node("r", ["a"]), node("a", ["b"]), node("b", ["a", "c"]), node("c", ["a"])]
    error = one_error(validate_graph(NS, nodes), "a -> b -> a")
    assert "a, b, c" in error


# --- templates in inputs -------------------------------------------------------------


def test_malformed_placeholder_names_node_field_and_text() -> None:
    nodes = [node("a", ["b"]), node("b", None, {"q": "x ${{ a.output.y }}"})]
    one_error(validate_graph(NS, nodes), "'b'", "'q'", "${{ a.output.y }}")


def test_output_ref_to_unknown_node() -> None:
    nodes = [node("a", ["b"]), node("b", None, {"q": "${{ ghost.outputs.y }}"})]
    one_error(validate_graph(NS, nodes), "'b'", "'q'", "${{ ghost.outputs.y }}", "'ghost'")


def test_output_ref_to_self() -> None:
    nodes = [node("a", ["b"]), node("b", None, {"q": "${{ b.outputs.y }}"})]
    one_error(validate_graph(NS, nodes), "'b'", "'q'", "own outputs")


def test_output_ref_to_descendant_is_rejected() -> None:
    nodes = [node("a", ["b"], {"q": "${{ b.outputs.y }}"}), node("b")]
    one_error(validate_graph(NS, nodes), "'a'", "'q'", "'b' is not an ancestor of 'a'")


def test_output_ref_to_sibling_branch_is_rejected() -> None:
    nodes = [
        node("a", ["b", "c"]),
        node("b"),
        node("c", None, {"q": "${{ b.outputs.y }}"}),
    ]
    one_error(validate_graph(NS, nodes), "'c'", "'b' is not an ancestor of 'c'")


def test_diamond_rejects_reference_to_node_on_only_one_path() -> None:
    errors = validate_graph(NS, diamond({"q": "${{ b.outputs.y }}"}))
    one_error(errors, "'d'", "'q'", "${{ b.outputs.y }}", "not an ancestor")


def test_diamond_accepts_reference_to_node_on_every_path() -> None:
    assert validate_graph(NS, diamond({"q": "${{ a.outputs.y }}"})) == []


def test_unites_allows_target_and_its_ancestors_only() -> None:
    # r -> t -> {b, c} -> d (unites t): d may read t and r, but not b.
    nodes = [
        node("r", ["t"]),
        node("t", ["b", "c"]),
        node("b", ["d"]),
        node("c", ["d"]),
        node(
            "d",
            None,
            {"ok1": "${{ t.outputs.x }}", "ok2": "${{ r.outputs.x }}", "bad": "${{ b.outputs.x }}"},
            unites="t",
        ),
    ]
    one_error(validate_graph(NS, nodes), "'d'", "'bad'", "'b' is not an ancestor")


def test_unites_target_is_readable_even_off_the_common_path() -> None:
    # d unites b, which is not a common ancestor: that is reported once, for the unites,
    # while reading b's outputs is allowed because d waits for b's subtree.
    errors = validate_graph(NS, diamond({"q": "${{ b.outputs.y }}"}, unites="b"))
    one_error(errors, "'d'", "unites 'b'")


def test_store_ref_without_store_config() -> None:
    nodes = [node("a", None, {"q": "${{ store.k }}"})]
    one_error(validate_graph(NS, nodes), "'a'", "'q'", "${{ store.k }}", "StoreConfigModel")


def test_store_ref_to_undeclared_key() -> None:
    nodes = [node("a", None, {"q": "${{ store.k }}"})]
    store = StoreConfigModel(required_keys=["other"], default_values={"another": 1})
    one_error(validate_graph(NS, nodes, store), "'a'", "'k' is not declared", "StoreConfigModel")


# --- schemas and secrets -------------------------------------------------------------


def test_unregistered_node() -> None:
    nodes = [node("a", name="Fetch")]
    assert validate_graph(NS, nodes, schemas={}) == [
        "node Fetch (identifier a) is not registered in namespace ns; "
        "start a Runtime that serves it"
    ]


def test_missing_required_input() -> None:
    nodes = [node("a", None, {"x": 1}, name="A")]
    errors = validate_graph(NS, nodes, schemas={"A": schema({"x", "y"})})
    one_error(errors, "'a'", "missing required input 'y'")


def test_optional_input_may_be_omitted() -> None:
    nodes = [node("a", None, {"x": 1}, name="A")]
    assert validate_graph(NS, nodes, schemas={"A": schema({"x", "y"}, required={"x"})}) == []


def test_input_not_in_schema() -> None:
    nodes = [node("a", None, {"x": 1, "extra": 2}, name="A")]
    errors = validate_graph(NS, nodes, schemas={"A": schema({"x"})})
    one_error(errors, "'a'", "'extra'", "does not declare")


def test_output_field_must_exist_in_referenced_schema() -> None:
    nodes = [
        node("a", ["b"], name="A"),
        node("b", None, {"q": "${{ a.outputs.nope }}"}, name="B"),
    ]
    schemas = {"A": schema(outputs={"out"}), "B": schema({"q"})}
    one_error(
        validate_graph(NS, nodes, schemas=schemas),
        "'b'",
        "'q'",
        "node A (identifier a) has no output 'nope'",
        "out",
    )


def test_missing_secret() -> None:
    nodes = [node("a", name="A")]
    schemas = {"A": schema(secrets={"token", "key"})}
    errors = validate_graph(NS, nodes, schemas=schemas, secrets={"key": "v"})
    one_error(errors, "'a'", "secret 'token'")


def test_secrets_not_checked_when_not_given() -> None:
    nodes = [node("a", name="A")]
    assert validate_graph(NS, nodes, schemas={"A": schema(secrets={"token"})}) == []


# --- everything at once --------------------------------------------------------------


def test_all_errors_reported_at_once() -> None:
    nodes = [
        node("a", ["b", "ghost"], {"x": "${{ store.nope }}"}, name="A"),
        node("b", ["c"], {"bad": "${{ a.outputs }}"}, name="B", namespace="elsewhere"),
        node("c", ["b"], {"y": "${{ zz.outputs.f }}"}, name="C", unites="nowhere"),
        node("c", None, {}, name="C"),
        node("lonely", None, {"s": "${{ c.outputs.f }}"}, name="Unregistered"),
    ]
    schemas = {"A": schema(), "B": schema({"bad"}), "C": schema({"y"}, secrets={"pw"})}
    errors = validate_graph(NS, nodes, StoreConfigModel(), schemas, secrets={})
    expected_fragments = [
        "'c' is used by 2 nodes",
        "'b' is in namespace 'elsewhere'",
        "unknown identifier 'ghost'",
        "2 root nodes (a, lonely)",
        "b -> c -> b",
        "unites unknown identifier 'nowhere'",
        "'nope' is not declared",
        "${{ a.outputs }}",
        "no node 'zz'",
        "'lonely' input 's' references ${{ c.outputs.f }}",
        "node Unregistered (identifier lonely) is not registered",
        "input 'x', which A does not declare",
        "secret 'pw'",
    ]
    for fragment in expected_fragments:
        assert any(fragment in e for e in errors), (fragment, errors)


def test_malformed_combinations_never_crash() -> None:
    nodes = [
        node("a", ["a", "b", "x"], {"q": "${{ b.outputs.z }}"}, unites="b"),
        node("b", ["a"], {"q": "${{ a.outputs.z }} ${{ store.k }}"}, unites="a"),
        node("b", ["zz"]),
    ]
    errors = validate_graph(NS, nodes, None, {}, {})
    assert errors  # must report, not raise
    assert all(isinstance(e, str) for e in errors)


# --- common_ancestors / root_identifier ----------------------------------------------


def test_common_ancestors_of_diamond() -> None:
    assert common_ancestors(diamond({})) == {
        "a": frozenset(),
        "b": frozenset({"a"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
    }


def test_common_ancestors_matches_intersection_definition() -> None:
    # r -> a -> {b, c}; b -> {d, e}; c -> e; d -> f; e -> f
    edges = {
        "r": ["a"],
        "a": ["b", "c"],
        "b": ["d", "e"],
        "c": ["e"],
        "d": ["f"],
        "e": ["f"],
        "f": [],
    }
    nodes = [node(i, e or None) for i, e in edges.items()]
    parents: dict[str, list[str]] = {i: [p for p, cs in edges.items() if i in cs] for i in edges}
    expected: dict[str, frozenset[str]] = {}
    for ident in edges:  # already topologically ordered
        ps = parents[ident]
        expected[ident] = (
            frozenset.intersection(*(expected[p] | {p} for p in ps)) if ps else frozenset()
        )
    assert common_ancestors(nodes) == expected
    assert expected["f"] == frozenset({"r", "a"})
    assert expected["d"] == frozenset({"r", "a", "b"})


def test_common_ancestors_tolerates_cycles_and_unknown_edges() -> None:
    nodes = [node("r", ["a", "ghost"]), node("a", ["b"]), node("b", ["a", "c"]), node("c")]
    # a, b are on a cycle and c is downstream of it: not computable, so omitted.
    assert common_ancestors(nodes) == {"r": frozenset()}


def test_common_ancestors_with_two_roots() -> None:
    nodes = [node("r1", ["c"]), node("r2", ["c"]), node("c", ["d"]), node("d")]
    assert common_ancestors(nodes) == {
        "r1": frozenset(),
        "r2": frozenset(),
        "c": frozenset(),
        "d": frozenset({"c"}),
    }


def test_common_ancestors_long_chain_does_not_recurse() -> None:
    n = 3000
    nodes = [node(f"n{i}", [f"n{i + 1}"] if i + 1 < n else None) for i in range(n)]
    assert validate_graph(NS, nodes) == []
    assert common_ancestors(nodes)[f"n{n - 1}"] == frozenset(f"n{i}" for i in range(n - 1))


def test_root_identifier() -> None:
    assert root_identifier(chain_with_fan_out()) == "a"


def test_root_identifier_rejects_ambiguous_graph() -> None:
    with pytest.raises(ValueError, match="exactly one root"):
        root_identifier([node("a"), node("b")])


def test_identical_errors_are_reported_once() -> None:
    nodes = [node("a", ["b"], name="A"), node("b", name="B"), node("b", name="B")]
    errors = validate_graph(
        NS, nodes, schemas={"A": schema(), "B": schema(secrets={"pw"})}, secrets={}
    )
    assert len(errors) == len(set(errors)), errors
    assert sum("secret 'pw'" in e for e in errors) == 1


def test_unite_bypassed_by_a_node_outside_the_target_group_is_rejected() -> None:
    from exospherehost.models import UnitesModel

    ns = "ns"
    nodes = [
        GraphNodeModel(
            node_name="N", namespace=ns, identifier="root", inputs={}, next_nodes=["x", "side"]
        ),
        GraphNodeModel(node_name="N", namespace=ns, identifier="x", inputs={}, next_nodes=["b"]),
        GraphNodeModel(node_name="N", namespace=ns, identifier="side", inputs={}, next_nodes=["b"]),
        GraphNodeModel(node_name="N", namespace=ns, identifier="b", inputs={}, next_nodes=["u"]),
        GraphNodeModel(
            node_name="N",
            namespace=ns,
            identifier="u",
            inputs={},
            unites=UnitesModel(identifier="x"),
        ),
    ]
    errors = validate_graph(ns, nodes)
    assert any("unites 'x'" in e for e in errors), errors


def test_version_floor_is_redis_time_in_microseconds() -> None:
    from exospherehost.graphstore import version_floor

    assert version_floor(1_764_582_725, 999_999) == 1_764_582_725_999_999
    assert version_floor(8_000_000_000, 0) < 2**53  # exact as a double (Lua, JSON) until 2223
    assert version_floor(0, 0) == 0
