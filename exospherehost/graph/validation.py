"""Static checks of a graph template before it is stored or run. Pure: no I/O, no Redis.

`validate_graph` reports every problem at once (as readable sentences) rather than
stopping at the first, so a user fixes a graph in one round trip. It never raises on a
malformed graph: structural problems (cycles, unknown identifiers, several roots) are
reported and the remaining checks run on whatever part of the graph is well formed.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from exospherehost.broker.keys import name_problem
from exospherehost.graph import fieldtypes
from exospherehost.graph.fieldtypes import Types
from exospherehost.graph.templating import (
    OutputRef,
    Ref,
    StoreRef,
    TemplateError,
    compile_template,
    sole_ref,
)
from exospherehost.models import GraphNodeModel, StoreConfigModel

__all__ = ["NodeSchema", "common_ancestors", "root_identifier", "validate_graph"]


RETURNS_ONE = "one"
RETURNS_MANY = "many"
RETURNS_EITHER = "either"
"""What a node's `execute` is annotated to return: one `Outputs` (or None), a list of them
(a fan-out), or either / not annotated (node.py, `returns`)."""


@dataclass(frozen=True)
class NodeSchema:
    """What a registered node class declares: field names of Inputs/Outputs/Secrets and,
    where the registration says, the fields' JSON types and what `execute` returns."""

    inputs: frozenset[str]
    required_inputs: frozenset[str]
    outputs: frozenset[str]
    secrets: frozenset[str]
    input_types: Mapping[str, Types] = dataclass_field(default_factory=dict)
    output_types: Mapping[str, Types] = dataclass_field(default_factory=dict)
    returns: str = RETURNS_EITHER

    @classmethod
    def from_registered(cls, doc: Mapping[str, Any]) -> NodeSchema:
        """From what a Runtime registers (node.node_schema; older Runtimes wrote no
        `returns`: either)."""
        ins = doc.get("inputs_schema") or {}
        outs = doc.get("outputs_schema") or {}
        returns = doc.get("returns")
        return cls(
            inputs=frozenset((ins.get("properties") or {}).keys()),
            required_inputs=frozenset(ins.get("required") or ()),
            outputs=frozenset((outs.get("properties") or {}).keys()),
            secrets=frozenset((doc.get("secrets_schema") or {}).get("properties") or {}),
            input_types=fieldtypes.field_types(ins),
            output_types=fieldtypes.field_types(outs),
            returns=returns if returns in (RETURNS_ONE, RETURNS_MANY) else RETURNS_EITHER,
        )


class _Graph:
    """Edges between known identifiers. Duplicate identifiers are merged (their edges
    unioned) so the structural checks still run; the duplicate itself is reported."""

    def __init__(self, nodes: Sequence[GraphNodeModel]) -> None:
        self.by_id: dict[str, GraphNodeModel] = {}
        for node in nodes:
            self.by_id.setdefault(node.identifier, node)
        # First-appearance order keeps every report deterministic and in graph order.
        self.order: list[str] = list(self.by_id)
        self.children: dict[str, list[str]] = {i: [] for i in self.order}
        self.parents: dict[str, list[str]] = {i: [] for i in self.order}
        for node in nodes:
            for target in node.next_nodes or ():
                # Unknown targets are reported by validate_graph, not modelled as nodes.
                if target in self.by_id and target not in self.children[node.identifier]:
                    self.children[node.identifier].append(target)
                    self.parents[target].append(node.identifier)

    def roots(self) -> list[str]:
        return [i for i in self.order if not self.parents[i]]


class _Dominators:
    """Common ancestors as a tree instead of one set per node.

    For a DAG, ancestors(n) = intersection over parents p of (ancestors(p) | {p}). Those
    sets are nested chains (they are n's dominators below a virtual root joining all
    roots), so ancestors(n) is the path from idom(n) = LCA(parents) up to the root.
    Storing only idom keeps memory linear in the graph (a long chain would otherwise
    need quadratic space) and makes "is a a common ancestor of n" an O(1) interval test.

    Nodes on a cycle, or downstream of one, have no well-defined ancestors and are
    left out (`computed` does not contain them).
    """

    def __init__(self, graph: _Graph) -> None:
        self.idom: dict[str, str | None] = {}  # None = the virtual root above all roots
        self._depth: dict[str, int] = {}
        indegree = {i: len(graph.parents[i]) for i in graph.order}
        queue = deque(i for i in graph.order if indegree[i] == 0)
        while queue:  # Kahn's order: every parent is settled before its child
            node = queue.popleft()
            parents = graph.parents[node]
            dom: str | None = parents[0] if parents else None
            for parent in parents[1:]:
                dom = self._lca(dom, parent)
            self.idom[node] = dom
            self._depth[node] = 1 if dom is None else self._depth[dom] + 1
            for child in graph.children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    queue.append(child)
        self.computed = frozenset(self.idom)
        self._enter, self._exit = self._number_tree(graph.order)

    def _depth_of(self, node: str | None) -> int:
        return 0 if node is None else self._depth[node]

    def _lca(self, a: str | None, b: str | None) -> str | None:
        while a != b:
            # Only the virtual root has depth 0, so whichever side moves is a real node.
            if self._depth_of(a) >= self._depth_of(b):
                assert a is not None
                a = self.idom[a]
            else:
                assert b is not None
                b = self.idom[b]
        return a

    def _number_tree(self, order: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        # Pre/post numbering of the dominator tree: a dominates n iff n's interval nests
        # in a's. Iterative so deep graphs cannot hit the recursion limit.
        kids: dict[str | None, list[str]] = {}
        for node in order:
            if node in self.idom:
                kids.setdefault(self.idom[node], []).append(node)
        enter: dict[str, int] = {}
        exit_: dict[str, int] = {}
        clock = 0
        stack: list[tuple[str, bool]] = [(r, False) for r in reversed(kids.get(None, []))]
        while stack:
            node, done = stack.pop()
            clock += 1
            if done:
                exit_[node] = clock
                continue
            enter[node] = clock
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids.get(node, [])))
        return enter, exit_

    def is_ancestor(self, candidate: str, node: str) -> bool:
        """candidate lies on every path from the root to node (strictly before it)."""
        if candidate == node or candidate not in self.idom or node not in self.idom:
            return False
        return (
            self._enter[candidate] < self._enter[node] and self._exit[node] < self._exit[candidate]
        )

    def ancestors(self, node: str) -> frozenset[str]:
        chain: list[str] = []
        current = self.idom[node]
        while current is not None:
            chain.append(current)
            current = self.idom[current]
        return frozenset(chain)


def common_ancestors(nodes: Sequence[GraphNodeModel]) -> dict[str, frozenset[str]]:
    """Map each identifier to the nodes on every path from the root to it (root -> empty).

    With several roots, "the root" is any of them (a node fed by two roots has no common
    ancestor). Nodes on or downstream of a cycle are omitted; edges to unknown identifiers
    are ignored.
    """
    graph = _Graph(nodes)
    doms = _Dominators(graph)
    return {i: doms.ancestors(i) for i in graph.order if i in doms.computed}


def root_identifier(nodes: Sequence[GraphNodeModel]) -> str:
    """The identifier of the only node with no incoming edge. Meant for validated graphs;
    raises ValueError rather than guessing when there is not exactly one root."""
    roots = _Graph(nodes).roots()
    if len(roots) != 1:
        raise ValueError(f"expected exactly one root node, found {len(roots)}: {_names(roots)}")
    return roots[0]


def validate_graph(
    namespace: str,
    nodes: Sequence[GraphNodeModel],
    store_config: StoreConfigModel | None = None,
    schemas: Mapping[str, NodeSchema] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> list[str]:
    """Every problem with the graph, one sentence each; an empty list means valid.

    `schemas` (node_name -> NodeSchema of the nodes registered in `namespace`) enables
    the checks against node classes; `secrets` enables the check that each node's
    declared secrets are provided.
    """
    if not nodes:
        return ["graph has no nodes; add at least one GraphNodeModel"]
    errors: list[str] = []
    graph = _Graph(nodes)
    errors += _check_identity(namespace, nodes)
    errors += _check_names(nodes)
    errors += _check_structure(nodes, graph)

    doms = _Dominators(graph)
    store_keys = (
        None
        if store_config is None
        else frozenset(store_config.required_keys) | frozenset(store_config.default_values)
    )
    for node in nodes:
        errors += _check_unites(node, graph, doms)
        errors += _check_inputs(node, graph, doms, store_keys, schemas)
        if schemas is not None:
            errors += _check_schema(namespace, node, schemas, secrets)
            errors += _check_types(node, graph, schemas)
    # Nodes sharing an identifier can produce the same sentence twice; say it once.
    return list(dict.fromkeys(errors))


def _check_identity(namespace: str, nodes: Sequence[GraphNodeModel]) -> list[str]:
    errors = [
        f"identifier {ident!r} is used by {count} nodes; node identifiers must be unique"
        for ident, count in Counter(n.identifier for n in nodes).items()
        if count > 1
    ]
    errors += [
        f"node {n.identifier!r} is in namespace {n.namespace!r} "
        f"but the graph is in namespace {namespace!r}"
        for n in nodes
        if n.namespace != namespace
    ]
    return errors


def _check_names(nodes: Sequence[GraphNodeModel]) -> list[str]:
    """Identifiers become parts of key names (fan-in groups) and node names name streams:
    both keep to the key-name alphabet. Refused at once, not after waiting for a Runtime
    to register a node that no Runtime can serve."""
    errors: list[str] = []
    for n in nodes:
        bad_ident = name_problem("node identifier", n.identifier)
        if bad_ident is not None:
            errors.append(bad_ident)
        bad_name = name_problem("node name", n.node_name)
        if bad_name is not None:
            errors.append(f"{bad_name} (identifier {n.identifier!r})")
    return errors


def _check_structure(nodes: Sequence[GraphNodeModel], graph: _Graph) -> list[str]:
    errors: list[str] = []
    for node in nodes:
        for target in node.next_nodes or ():
            if target not in graph.by_id:
                errors.append(
                    f"node {node.identifier!r} lists unknown identifier {target!r} in next_nodes"
                )

    roots = graph.roots()
    if not roots:
        errors.append(
            "graph has no root node: every node has an incoming edge in next_nodes, "
            "so there is nowhere to start"
        )
    elif len(roots) > 1:
        errors.append(
            f"graph has {len(roots)} root nodes ({_names(roots)}); "
            "exactly one node must have no incoming edge"
        )

    for cycle, members in _cycles(graph):
        message = "next_nodes form a cycle: " + " -> ".join(cycle)
        if len(members) > len(set(cycle)):
            message += f" (nodes {_names(members)} are all on cycles with each other)"
        errors.append(message)

    if roots:
        # With no root every node is downstream of a cycle: already reported, and
        # "unreachable" for each node would only be noise.
        reached = _reachable(graph, roots)
        origin = f"the root {roots[0]!r}" if len(roots) == 1 else "any root"
        errors += [
            f"node {i!r} is not reachable from {origin}" for i in graph.order if i not in reached
        ]
    return errors


def _check_unites(node: GraphNodeModel, graph: _Graph, doms: _Dominators) -> list[str]:
    if node.unites is None:
        return []
    ident, target = node.identifier, node.unites.identifier
    if target == ident:
        return [f"node {ident!r} unites itself; unites must name a node upstream of it"]
    if target not in graph.by_id:
        return [f"node {ident!r} unites unknown identifier {target!r}"]
    # Unknown ancestry (node on/after a cycle) is already an error; don't pile on.
    if ident in doms.computed and not doms.is_ancestor(target, ident):
        return [
            f"node {ident!r} unites {target!r}, which is not an ancestor of {ident!r} "
            "on every path from the root"
        ]
    # Dominance also means every node that can reach the uniting node other than through
    # the target descends from it, so all branches are members of the target's group.
    return []


def _check_inputs(
    node: GraphNodeModel,
    graph: _Graph,
    doms: _Dominators,
    store_keys: frozenset[str] | None,
    schemas: Mapping[str, NodeSchema] | None,
) -> list[str]:
    errors: list[str] = []
    for field, value in node.inputs.items():
        where = f"node {node.identifier!r} input {field!r}"
        try:
            refs = compile_template(value).refs
        except TemplateError as exc:
            errors.append(f"{where}: {exc}")
            continue
        for ref in refs:
            problem = _ref_problem(ref, node, graph, doms, store_keys, schemas)
            if problem:
                errors.append(f"{where} references {ref.placeholder} but {problem}")
    return errors


def _ref_problem(
    ref: Ref,
    node: GraphNodeModel,
    graph: _Graph,
    doms: _Dominators,
    store_keys: frozenset[str] | None,
    schemas: Mapping[str, NodeSchema] | None,
) -> str | None:
    if isinstance(ref, StoreRef):
        if store_keys is None:
            return (
                f"the graph has no store config; declare {ref.key!r} in StoreConfigModel "
                "(required_keys or default_values)"
            )
        if ref.key not in store_keys:
            return (
                f"{ref.key!r} is not declared in StoreConfigModel (required_keys or default_values)"
            )
        return None

    assert isinstance(ref, OutputRef)
    ident, source = node.identifier, ref.identifier
    if source == ident:
        return "a node cannot read its own outputs"
    if source not in graph.by_id:
        return f"the graph has no node {source!r}"
    if ident in doms.computed and not _may_read(source, node, doms):
        return (
            f"{source!r} is not an ancestor of {ident!r} on every path from the root, "
            f"so its outputs may not exist when {ident!r} runs"
        )
    if schemas is not None:
        source_schema = schemas.get(graph.by_id[source].node_name)
        # An unregistered source node is reported by its own schema check.
        if source_schema is not None and ref.field not in source_schema.outputs:
            source_name = graph.by_id[source].node_name
            return (
                f"node {source_name} (identifier {source}) has no output {ref.field!r}; "
                f"its outputs are: {_names(source_schema.outputs)}"
            )
    return None


def _may_read(source: str, node: GraphNodeModel, doms: _Dominators) -> bool:
    if doms.is_ancestor(source, node.identifier):
        return True
    # A node that unites `target` runs after everything descending from it has finished,
    # so the target and the target's own common ancestors are safe to read as well.
    target = node.unites.identifier if node.unites is not None else None
    return target is not None and (source == target or doms.is_ancestor(source, target))


def _check_schema(
    namespace: str,
    node: GraphNodeModel,
    schemas: Mapping[str, NodeSchema],
    secrets: Mapping[str, str] | None,
) -> list[str]:
    name, ident = node.node_name, node.identifier
    schema = schemas.get(name)
    if schema is None:
        return [
            f"node {name} (identifier {ident}) is not registered in namespace {namespace}; "
            "start a Runtime that serves it"
        ]
    errors = [
        f"node {ident!r} ({name}) is missing required input {field!r}"
        for field in sorted(schema.required_inputs - node.inputs.keys())
    ]
    errors += [
        f"node {ident!r} ({name}) has input {field!r}, which {name} does not declare; "
        f"declared inputs: {_names(schema.inputs)}"
        for field in node.inputs
        if field not in schema.inputs
    ]
    if secrets is not None:
        errors += [
            f"node {ident!r} ({name}) needs secret {secret!r}, which is not provided"
            for secret in sorted(schema.secrets)
            if secret not in secrets
        ]
    return errors


def _check_types(
    node: GraphNodeModel, graph: _Graph, schemas: Mapping[str, NodeSchema]
) -> list[str]:
    """Each mapped input whose value can never be valid for the declared field type: a
    literal of another type, or `${{ X.outputs.f }}` (the whole value) of another type —
    a list where the node unites a fan-out (README: Fan-in) and the field is no list."""
    schema = schemas.get(node.node_name)
    if schema is None:
        return []
    errors: list[str] = []
    for name, value in node.inputs.items():
        if name not in schema.inputs:
            continue  # reported as undeclared
        target = schema.input_types.get(name)
        found, why = _value_types(value, node, graph, schemas)
        if fieldtypes.refused(target, found):
            errors.append(
                f"node {node.identifier!r} ({node.node_name}) input {name!r} expects "
                f"{fieldtypes.describe(target)} but gets {fieldtypes.describe(found)}{why}"
            )
    return errors


def _value_types(
    value: Any, node: GraphNodeModel, graph: _Graph, schemas: Mapping[str, NodeSchema]
) -> tuple[Types, str]:
    """The JSON types `value` renders to for `node`, and how (for the message)."""
    try:
        template = compile_template(value)
    except TemplateError:
        return None, ""  # reported by _check_inputs
    if template.is_literal:
        return fieldtypes.value_types(value), ""
    ref = sole_ref(value)
    if ref is None:  # text around placeholders, or placeholders inside a dict / list
        kind = fieldtypes.value_types(value)
        return kind, " (text with placeholders is a str)" if kind == fieldtypes.STRING else ""
    if not isinstance(ref, OutputRef) or ref.identifier not in graph.by_id:
        return None, ""  # store values are typed at run time; unknown ids are reported
    source = graph.by_id[ref.identifier]
    source_schema = schemas.get(source.node_name)
    if source_schema is None:
        return None, ""
    one = source_schema.output_types.get(ref.field)
    listed = f" ({ref.placeholder}: the list of {fieldtypes.describe(one)} values"
    if node.unites is not None:
        target = node.unites.identifier
        if ref.identifier != target and ref.identifier in _between(graph, target, node):
            return fieldtypes.ARRAY, f"{listed} of every branch of {target!r})"
        if ref.identifier == target and source_schema.returns == RETURNS_MANY:
            return fieldtypes.ARRAY, f"{listed} of {target!r}'s fan-out)"
        if ref.identifier == target and source_schema.returns == RETURNS_EITHER:
            return None, ""  # a list or one value, as `execute` returns at run time
    return one, f" ({ref.placeholder})"


def _between(graph: _Graph, target: str, unite: GraphNodeModel) -> set[str]:
    """Nodes on a path from `target` to the uniting node, both excluded: a uniting node
    receives their values as lists (one per branch)."""
    below = _reachable(graph, graph.children.get(target, ()))
    above: set[str] = set()
    todo = [unite.identifier]
    while todo:
        for parent in graph.parents.get(todo.pop(), ()):
            if parent not in above:
                above.add(parent)
                todo.append(parent)
    return (below & above) - {target, unite.identifier}


def _reachable(graph: _Graph, roots: Iterable[str]) -> set[str]:
    seen = set(roots)
    queue = deque(seen)
    while queue:
        for child in graph.children[queue.popleft()]:
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


def _cycles(graph: _Graph) -> list[tuple[list[str], list[str]]]:
    """(one concrete cycle, all members) per strongly connected component that has one,
    in graph order."""
    position = {ident: i for i, ident in enumerate(graph.order)}
    found: list[tuple[list[str], list[str]]] = []
    for component in _strongly_connected(graph):
        members = sorted(component, key=position.__getitem__)
        start = members[0]
        if len(members) > 1 or start in graph.children[start]:
            found.append((_cycle_through(start, set(members), graph), members))
    found.sort(key=lambda item: position[item[1][0]])
    return found


def _cycle_through(start: str, members: set[str], graph: _Graph) -> list[str]:
    """Shortest cycle start -> ... -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for child in graph.children[current]:
            if child == start:
                path = [current]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in previous:
                previous[child] = current
                queue.append(child)
    return [start]  # unreachable for a real component; keeps the type total


def _strongly_connected(graph: _Graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative so a long chain cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    for root in graph.order:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph.children[root]))]
        while work:
            node, children = work[-1]
            descended = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.children[child])))
                    descended = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _names(items: Iterable[str]) -> str:
    listed = sorted(items) if isinstance(items, frozenset | set) else list(items)
    return ", ".join(listed) if listed else "(none)"
