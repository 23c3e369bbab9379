"""Pure graph runtime logic: a validated template compiled into what the settle step needs.

A state carries in its envelope only the ancestor outputs and store values that it or its
descendants reference (`ctx`), so computing successors needs no Redis read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exospherehost.graph_validation import root_identifier
from exospherehost.models import GraphNodeModel, RetryPolicyModel, StoreConfigModel
from exospherehost.templating import OutputRef, StoreRef, Template, compile_template

STORE = "store"
"""ctx key holding store values (`store` is a reserved identifier)."""


@dataclass(frozen=True, slots=True)
class CompiledNode:
    identifier: str
    node_name: str
    children: tuple[str, ...]
    template: Template
    # What descendants (strictly below this node) reference: carried in this node's ctx.
    carry_outputs: tuple[tuple[str, tuple[str, ...]], ...]
    carry_store: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Successor:
    node: CompiledNode
    inputs: dict[str, Any]
    ctx: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CompiledGraph:
    name: str
    version: int
    root: str
    nodes: Mapping[str, CompiledNode]
    retry_policy: RetryPolicyModel
    store_config: StoreConfigModel

    @classmethod
    def build(
        cls,
        name: str,
        version: int,
        graph_nodes: Sequence[GraphNodeModel],
        retry_policy: RetryPolicyModel | None = None,
        store_config: StoreConfigModel | None = None,
    ) -> CompiledGraph:
        """Compile a graph that validate_graph accepted."""
        templates = {n.identifier: compile_template(n.inputs) for n in graph_nodes}
        children = {n.identifier: tuple(n.next_nodes or ()) for n in graph_nodes}
        below: dict[str, set[OutputRef | StoreRef]] = {}

        def refs_below(ident: str) -> set[OutputRef | StoreRef]:
            if ident not in below:
                acc: set[OutputRef | StoreRef] = set()
                for child in children[ident]:
                    acc.update(templates[child].refs)
                    acc.update(refs_below(child))
                below[ident] = acc
            return below[ident]

        nodes: dict[str, CompiledNode] = {}
        for n in graph_nodes:
            refs = refs_below(n.identifier)
            outputs: dict[str, set[str]] = {}
            for ref in refs:
                if isinstance(ref, OutputRef):
                    outputs.setdefault(ref.identifier, set()).add(ref.field)
            nodes[n.identifier] = CompiledNode(
                identifier=n.identifier,
                node_name=n.node_name,
                children=children[n.identifier],
                template=templates[n.identifier],
                carry_outputs=tuple((i, tuple(sorted(f))) for i, f in sorted(outputs.items())),
                carry_store=tuple(sorted(r.key for r in refs if isinstance(r, StoreRef))),
            )
        return cls(
            name=name,
            version=version,
            root=root_identifier(graph_nodes),
            nodes=nodes,
            retry_policy=retry_policy or RetryPolicyModel(),
            store_config=store_config or StoreConfigModel(),
        )

    def root_state(self, store: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> Successor:
        """The first state of a run: root template rendered against the store, overridden
        by the trigger's explicit inputs."""
        root = self.nodes[self.root]
        rendered = root.template.render({}, store)
        if inputs:
            rendered = {**rendered, **inputs}
        return Successor(root, rendered, _carry(root, {STORE: dict(store)}))

    def successors(
        self, identifier: str, ctx: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> list[Successor]:
        """States that follow one output of `identifier` (call once per fan-out element)."""
        node = self.nodes[identifier]
        if not node.children:
            return []
        full = {**ctx, identifier: outputs}
        store = full.get(STORE) or {}
        out: list[Successor] = []
        for child_id in node.children:
            child = self.nodes[child_id]
            out.append(Successor(child, child.template.render(full, store), _carry(child, full)))
        return out


def _carry(node: CompiledNode, full: Mapping[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for ident, fields in node.carry_outputs:
        produced = full.get(ident)
        if produced is not None:
            ctx[ident] = {f: produced[f] for f in fields if f in produced}
    if node.carry_store:
        store = full.get(STORE) or {}
        ctx[STORE] = {k: store[k] for k in node.carry_store if k in store}
    return ctx
