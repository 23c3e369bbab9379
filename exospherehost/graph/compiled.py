"""Pure graph runtime logic: a validated template compiled into what the settle step needs.

A state carries in its envelope only the ancestor outputs and store values that it or its
descendants reference (`ctx`), so computing successors needs no Redis read.

Fan-in (`unites`): node U uniting target X runs once per state of X, after every state
descending from it — except U and what follows U — has settled. Those states form X's
*group* for U; each carries the group id (X's state id) in `grp`, and every settle
adjusts the group's open count in the same script. Branches reaching U leave the values
U references (`collected`); U's inputs are rendered when it runs, from X's context plus,
for nodes between X and U, the list of values of every branch in branch order.

Store values too big to copy into every envelope (over `SizeLimits.store_inline_bytes`)
travel by name only: the ctx lists them under `REFS`, and a state whose own template
references one is not rendered at its parent's settle but when it runs (`needs_store`,
`render_deferred`), from its ctx and the values the executing worker read from the run
store. So a 20 MB value in a fan-out of 30 is read 30 times, never copied 30 times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exospherehost.graph.templating import OutputRef, StoreRef, Template, compile_template
from exospherehost.graph.validation import root_identifier
from exospherehost.models import (
    GraphNodeModel,
    RetryPolicyModel,
    StoreConfigModel,
    UnitesStrategyEnum,
)

STORE = "store"
"""ctx key holding store values (`store` is a reserved identifier)."""
REFS = "$refs"
"""ctx key listing store keys whose values stay in the run store (no identifier starts
with `$`): the ones this state's template or its descendants' need."""


@dataclass(frozen=True, slots=True)
class CompiledNode:
    identifier: str
    node_name: str
    children: tuple[str, ...]
    template: Template
    # What descendants (strictly below this node) reference: carried in this node's ctx.
    carry_outputs: tuple[tuple[str, tuple[str, ...]], ...]
    carry_store: tuple[str, ...]
    groups: tuple[str, ...]  # uniting nodes whose groups this node's states belong to
    # Store keys this node's own template references (empty for most nodes).
    store_keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Unite:
    identifier: str  # the uniting node U
    target: str  # X
    strategy: UnitesStrategyEnum
    members: frozenset[str]  # strict descendants of X, without U and what follows U
    between: frozenset[str]  # members that are ancestors of U: referenced as lists


@dataclass(frozen=True, slots=True)
class Successor:
    node: CompiledNode
    inputs: dict[str, Any]
    ctx: dict[str, Any]
    path: tuple[int, ...] = ()


@dataclass(slots=True)
class GroupStep:
    """How one settle changes the group of uniting node `unite` opened by state `xid`."""

    unite: str
    xid: str
    open_delta: int = 0
    collected: list[dict[str, Any]] = field(default_factory=list)
    init: dict[str, Any] | None = None  # set when this settle opens the group: U's ctx
    outer: dict[str, str] = field(default_factory=dict)  # U's own groups: +1 when it fires


@dataclass(slots=True)
class Completion:
    """Everything a successful settle of one state emits (pure; settle.py writes it)."""

    successors: list[tuple[Successor, dict[str, str]]]  # (successor, its grp)
    groups: list[GroupStep]
    leaf: bool


def _descendants(children: Mapping[str, Sequence[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(children[start])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(children[n])
    return seen


@dataclass(frozen=True, slots=True)
class CompiledGraph:
    name: str
    version: int
    root: str
    nodes: Mapping[str, CompiledNode]
    retry_policy: RetryPolicyModel
    store_config: StoreConfigModel
    unites: Mapping[str, Unite]  # by uniting identifier
    targets: Mapping[str, tuple[str, ...]]  # target identifier -> uniting identifiers

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
        unites: dict[str, Unite] = {}
        for n in graph_nodes:
            if n.unites is not None:
                x, u = n.unites.identifier, n.identifier
                after_u = _descendants(children, u) | {u}
                members = frozenset(_descendants(children, x) - after_u)
                between = frozenset(m for m in members if u in _descendants(children, m))
                unites[u] = Unite(u, x, n.unites.strategy, members, between)
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
                groups=tuple(sorted(u for u, un in unites.items() if n.identifier in un.members)),
                store_keys=frozenset(
                    r.key for r in templates[n.identifier].refs if isinstance(r, StoreRef)
                ),
            )
        targets: dict[str, list[str]] = {}
        for u, un in sorted(unites.items()):
            targets.setdefault(un.target, []).append(u)
        return cls(
            name=name,
            version=version,
            root=root_identifier(graph_nodes),
            nodes=nodes,
            retry_policy=retry_policy or RetryPolicyModel(),
            store_config=store_config or StoreConfigModel(),
            unites=unites,
            targets={k: tuple(v) for k, v in targets.items()},
        )

    def root_state(
        self,
        store: Mapping[str, Any],
        inputs: Mapping[str, Any] | None,
        refs: frozenset[str] = frozenset(),
    ) -> Successor:
        """The first state of a run: root template rendered against the store, overridden
        by the trigger's explicit inputs. `store` holds the values that travel inline;
        `refs` names the keys that stay in the run store (see the module's docstring): a
        root referencing one is rendered when it runs, its explicit inputs kept as given."""
        root = self.nodes[self.root]
        full: dict[str, Any] = {STORE: dict(store)}
        if refs:
            full[REFS] = sorted(refs)
            if not root.store_keys.isdisjoint(refs):
                return Successor(root, dict(inputs or {}), _carry_deferred(root, full, refs))
        rendered = root.template.render({}, store)
        if inputs:
            rendered = {**rendered, **inputs}
        return Successor(root, rendered, _carry(root, full))

    def needs_store(self, identifier: str, ctx: Mapping[str, Any]) -> list[str]:
        """Store keys a state of `identifier` must read from the run store before it runs
        (its template references them and they did not travel inline); [] for almost all."""
        refs = ctx.get(REFS)
        if not refs:
            return []
        own = self.nodes[identifier].store_keys
        return [k for k in refs if k in own]

    def render_deferred(
        self,
        identifier: str,
        ctx: Mapping[str, Any],
        read: Mapping[str, Any],
        explicit: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Inputs of a state whose rendering waited for store values (`needs_store`):
        its template over its ctx, with `read` (key -> value read from the run store) added
        to the inline store values; `explicit` (a root's trigger inputs) override."""
        store = {**(ctx.get(STORE) or {}), **read}
        rendered = self.nodes[identifier].template.render(ctx, store)
        return {**rendered, **explicit} if explicit else dict(rendered)

    def complete(
        self,
        identifier: str,
        state_id: str,
        ctx: Mapping[str, Any],
        grp: Mapping[str, str],
        path: Sequence[int],
        outputs: Sequence[Mapping[str, Any]],
        fanout: bool,
    ) -> Completion:
        """What a successful state of `identifier` emits: successors (one set per output),
        and its effect on every fan-in group it belongs to or opens."""
        node = self.nodes[identifier]
        steps: dict[str, GroupStep] = {}  # stays empty for a node with no fan-in role
        for u in node.groups:  # a member settling: it closes, its successors open
            # If it is the last one, U fires and re-opens the groups U itself belongs to
            # (nested fan-in): without them an outer unite could fire before U settled.
            outer = {o: (grp.get(o) or state_id) for o in self.nodes[u].groups}
            steps[u] = GroupStep(u, grp[u], open_delta=-1, outer=outer)
        for u in self.targets.get(identifier, ()):  # the target settling opens the group
            unite = self.nodes[u]
            init_ctx = dict(ctx)
            init_ctx[identifier] = _merge_outputs(outputs, fanout)
            steps[u] = GroupStep(
                u,
                state_id,
                init=_carry_for(unite, init_ctx, self.unites[u]),
                outer={o: (grp.get(o) or state_id) for o in unite.groups},
            )
        succs: list[tuple[Successor, dict[str, str]]] = []
        refs = ctx.get(REFS) if ctx else None  # store keys that stay in the run store
        for idx, out in enumerate(outputs):
            full = {**ctx, identifier: out}
            store = full.get(STORE) or {}
            child_path = (*path, idx) if fanout else tuple(path)
            for child_id in node.children:
                step = steps.get(child_id) if steps else None
                if step is not None and child_id in self.unites:
                    # A branch reaches the uniting node: leave what U references.
                    un = self.unites[child_id]
                    step.collected.append(
                        {
                            "p": list(child_path),
                            "n": identifier,
                            "o": _pick(self.nodes[child_id], full, un.between),
                        }
                    )
                    continue
                child = self.nodes[child_id]
                child_grp: dict[str, str] = {}
                for u in child.groups:
                    child_grp[u] = steps[u].xid if u in steps else grp[u]
                    if u in steps:
                        steps[u].open_delta += 1
                if refs and not child.store_keys.isdisjoint(refs):
                    # Its template needs a store value that stays in the run store: it is
                    # rendered when it runs (render_deferred), not copied in here.
                    deferred = _carry_deferred(child, full, refs)
                    succs.append((Successor(child, {}, deferred, child_path), child_grp))
                    continue
                inputs = child.template.render(full, store)
                succs.append((Successor(child, inputs, _carry(child, full), child_path), child_grp))
        return Completion(succs, list(steps.values()), leaf=not node.children)

    def unite_inputs(
        self,
        identifier: str,
        ctx: Mapping[str, Any],
        collected: Sequence[Mapping[str, Any]],
        read: Mapping[str, Any] | None = None,
    ) -> Any:
        """Inputs of a fired uniting node: its template over the target's context, where a
        node between target and U stands for the list of its values over all branches.
        `read`: store values read from the run store (`needs_store`)."""
        un = self.unites[identifier]
        # One item per branch and node: a branch re-run by StateManager.retry_state before
        # the unite fired leaves a second item for the same place; the later one counts.
        # (Items written before they carried their node, "n", are all kept.)
        latest: dict[tuple[tuple[int, ...], Any], Mapping[str, Any]] = {}
        for c in collected:
            latest[(tuple(c.get("p") or ()), c.get("n") or id(c))] = c
        ordered = sorted(latest.values(), key=lambda c: list(c.get("p") or []))
        full: dict[str, Any] = dict(ctx)
        for ident in un.between:
            fields: dict[str, list[Any]] = {}
            for c in ordered:
                values = (c.get("o") or {}).get(ident) or {}
                for f, v in values.items():
                    fields.setdefault(f, []).append(v)
            full[ident] = fields
        store = full.get(STORE) or {}
        if read:
            store = {**store, **read}
        return self.nodes[identifier].template.render(full, store)


def _merge_outputs(outputs: Sequence[Mapping[str, Any]], fanout: bool) -> dict[str, Any]:
    """A target's outputs as the uniting node sees them: the one output, or for a fan-out
    each field as the list of its values."""
    if not fanout and len(outputs) == 1:
        return dict(outputs[0])
    merged: dict[str, list[Any]] = {}
    for out in outputs:
        for k, v in out.items():
            merged.setdefault(k, []).append(v)
    return merged


def _pick(node: CompiledNode, full: Mapping[str, Any], idents: frozenset[str]) -> dict[str, Any]:
    """The values `node`'s template references from nodes in `idents`."""
    out: dict[str, dict[str, Any]] = {}
    for ref in node.template.refs:
        if isinstance(ref, OutputRef) and ref.identifier in idents:
            produced = full.get(ref.identifier) or {}
            if ref.field in produced:
                out.setdefault(ref.identifier, {})[ref.field] = produced[ref.field]
    return out


def _carry_for(unite: CompiledNode, full: Mapping[str, Any], un: Unite) -> dict[str, Any]:
    """ctx of a uniting state: what it and its descendants need, minus the branch nodes
    (those come from the collected list)."""
    needed: dict[str, set[str]] = {i: set(f) for i, f in unite.carry_outputs}
    for ref in unite.template.refs:
        if isinstance(ref, OutputRef) and ref.identifier not in un.between:
            needed.setdefault(ref.identifier, set()).add(ref.field)
    ctx: dict[str, Any] = {}
    for ident, fields in needed.items():
        produced = full.get(ident)
        if produced is not None:
            ctx[ident] = {f: produced[f] for f in fields if f in produced}
    store_keys = set(unite.carry_store) | {
        r.key for r in unite.template.refs if isinstance(r, StoreRef)
    }
    if store_keys:
        store = full.get(STORE) or {}
        ctx[STORE] = {k: store[k] for k in store_keys if k in store}
        if (refs := full.get(REFS)) and (kept := [k for k in refs if k in store_keys]):
            ctx[REFS] = kept
    return ctx


def _carry(node: CompiledNode, full: Mapping[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    for ident, fields in node.carry_outputs:
        produced = full.get(ident)
        if produced is not None:
            ctx[ident] = {f: produced[f] for f in fields if f in produced}
    if node.carry_store:
        store = full.get(STORE) or {}
        ctx[STORE] = {k: store[k] for k in node.carry_store if k in store}
        if (refs := full.get(REFS)) and (kept := [k for k in refs if k in node.carry_store]):
            ctx[REFS] = kept
    return ctx


def _carry_deferred(
    node: CompiledNode, full: Mapping[str, Any], refs: Sequence[str] | frozenset[str]
) -> dict[str, Any]:
    """ctx of a state rendered when it runs: what its descendants need (`_carry`) plus
    what its own template references (outputs, inline store values, store keys to read)."""
    ctx = _carry(node, full)
    for ref in node.template.refs:
        if isinstance(ref, OutputRef):
            produced = full.get(ref.identifier)
            if isinstance(produced, Mapping) and ref.field in produced:
                ctx.setdefault(ref.identifier, {})[ref.field] = produced[ref.field]
    store = full.get(STORE) or {}
    inline = {k: store[k] for k in node.store_keys if k in store}
    if inline:
        ctx[STORE] = {**(ctx.get(STORE) or {}), **inline}
    ctx[REFS] = sorted(set(ctx.get(REFS) or ()) | (node.store_keys & set(refs)))
    return ctx
