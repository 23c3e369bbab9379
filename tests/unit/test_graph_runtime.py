"""Pure graph runtime: successors, carried context, fan-in group bookkeeping."""

from __future__ import annotations

from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import GraphNodeModel, UnitesModel, UnitesStrategyEnum

NS = "ns"


def node(
    ident: str, inputs: dict[str, object], nxt: list[str] | None = None, unites: str | None = None
) -> GraphNodeModel:
    return GraphNodeModel(
        node_name=ident.upper(),
        namespace=NS,
        identifier=ident,
        inputs=inputs,
        next_nodes=nxt,
        unites=UnitesModel(identifier=unites) if unites else None,
    )


def fan_in() -> CompiledGraph:
    return CompiledGraph.build(
        "g",
        1,
        [
            node("x", {"n": "${{ store.n }}"}, ["b"]),
            node("b", {"v": "${{ x.outputs.v }}"}, ["c"]),
            node("c", {"v": "${{ b.outputs.v }}"}, ["u"]),
            node("u", {"all": "${{ c.outputs.v }}", "n": "${{ store.n }}"}, ["after"], unites="x"),
            node("after", {"total": "${{ u.outputs.total }}"}),
        ],
    )


def test_only_referenced_ancestor_outputs_are_carried() -> None:
    g = CompiledGraph.build(
        "g",
        1,
        [
            node("a", {}, ["b"]),
            node("b", {"x": "${{ a.outputs.x }}"}, ["c"]),
            node("c", {"y": "${{ a.outputs.y }}", "t": "b=${{ b.outputs.z }}"}),
        ],
    )
    done = g.complete("a", "s1", {}, {}, (), [{"x": 1, "y": [1, 2], "unused": "big"}], False)
    [(succ, grp)] = done.successors
    assert succ.inputs == {"x": 1} and grp == {}
    assert succ.ctx == {"a": {"y": [1, 2]}}  # `x` is not needed below b, `unused` never
    done = g.complete("b", "s2", succ.ctx, {}, (), [{"z": {"k": 1}}], False)
    [(succ2, _)] = done.successors
    assert succ2.inputs == {"y": [1, 2], "t": 'b={"k":1}'}
    assert g.complete("c", "s3", succ2.ctx, {}, (), [{}], False).leaf


def test_fan_out_creates_one_successor_per_output_with_branch_paths() -> None:
    g = fan_in()
    done = g.complete("x", "X1", {"store": {"n": 3}}, {}, (), [{"v": i} for i in range(3)], True)
    assert [s.inputs for s, _ in done.successors] == [{"v": 0}, {"v": 1}, {"v": 2}]
    assert [s.path for s, _ in done.successors] == [(0,), (1,), (2,)]
    assert all(grp == {"u": "X1"} for _, grp in done.successors)
    [step] = done.groups
    assert step.unite == "u" and step.xid == "X1" and step.open_delta == 3
    assert step.init is not None and step.init["store"] == {"n": 3}


def test_members_keep_the_group_count_and_branches_leave_their_values() -> None:
    g = fan_in()
    done = g.complete("b", "B1", {}, {"u": "X1"}, (1,), [{"v": 10}], False)
    assert [s.node.identifier for s, _ in done.successors] == ["c"]
    [step] = done.groups
    assert (step.xid, step.open_delta, step.collected) == ("X1", 0, [])  # -1 itself, +1 c
    # c's child is the uniting node: no state is emitted, the branch is collected.
    done = g.complete("c", "C1", {}, {"u": "X1"}, (1,), [{"v": 10}], False)
    assert done.successors == []
    [step] = done.groups
    assert step.open_delta == -1
    assert step.collected == [{"p": [1], "n": "c", "o": {"c": {"v": 10}}}]


def test_unite_inputs_list_branch_values_in_branch_order() -> None:
    g = fan_in()
    collected = [
        {"p": [2], "o": {"c": {"v": 20}}},
        {"p": [0], "o": {"c": {"v": 0}}},
        {"p": [1], "o": {"c": {"v": 10}}},
    ]
    assert g.unite_inputs("u", {"store": {"n": 3}}, collected) == {"all": [0, 10, 20], "n": 3}


def test_a_branch_collected_twice_counts_once_with_its_later_values() -> None:
    """A branch re-run by retry_state before the unite fired leaves a second item for the
    same place (path and node): the unite sees the later one, once. Items without a node
    (written by an older SDK) are all kept."""
    g = fan_in()
    collected = [
        {"p": [0], "n": "c", "o": {"c": {"v": 0}}},
        {"p": [1], "n": "c", "o": {"c": {"v": 10}}},
        {"p": [0], "n": "c", "o": {"c": {"v": 5}}},
    ]
    assert g.unite_inputs("u", {"store": {"n": 3}}, collected) == {"all": [5, 10], "n": 3}
    old = [{"p": [0], "o": {"c": {"v": 1}}}, {"p": [0], "o": {"c": {"v": 2}}}]
    assert g.unite_inputs("u", {"store": {"n": 3}}, old) == {"all": [1, 2], "n": 3}
    # After the unite, states are outside the group again.
    done = g.complete("u", "U1", {}, {}, (), [{"total": 30}], False)
    [(succ, grp)] = done.successors
    assert succ.inputs == {"total": 30} and grp == {} and done.groups == []


def test_strategies_are_compiled() -> None:
    g = CompiledGraph.build(
        "g",
        1,
        [
            node("x", {}, ["b"]),
            GraphNodeModel(
                node_name="U",
                namespace=NS,
                identifier="u",
                inputs={},
                unites=UnitesModel(identifier="x", strategy=UnitesStrategyEnum.ALL_DONE),
            ),
            node("b", {}, ["u"]),
        ],
    )
    assert g.unites["u"].strategy is UnitesStrategyEnum.ALL_DONE
    assert g.unites["u"].members == frozenset({"b"}) and g.targets == {"x": ("u",)}


def test_a_node_without_a_fan_in_role_emits_successors_and_no_group_steps() -> None:
    nodes = [node("a", {}, ["b"]), node("b", {"v": "${{ a.outputs.v }}"})]
    chain = CompiledGraph.build("c", 1, nodes)
    done = chain.complete("a", "s1", {}, {}, [], [{"v": 3}], False)
    assert [(s.node.identifier, s.inputs, grp) for s, grp in done.successors] == [
        ("b", {"v": 3}, {})
    ]
    assert done.groups == [] and not done.leaf
