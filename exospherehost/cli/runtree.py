"""A run's states as a tree for `exosphere runs show` (issue 12.9): the root first, each
state's children indented under it, and a uniting state under the state whose fan-out it
closes ("unites <target>"), since its parents are the many branch ends. Bounded: at most
`children` children of a state are listed (those not SUCCEEDED first), the rest summed up
in one "... N more" line, and at most `max_lines` lines in all.

Pure: takes the SDK's RunGraph and the template's unites; the command does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exospherehost.client.runs import RunGraph, StateDetail

CHILDREN = 10
"""Children of one state listed by default (`--children`)."""
MAX_LINES = 2000
WORST_FIRST = ("FAILED", "RETRYING", "PENDING", "PRUNED", "SUCCEEDED")


def short_id(state_id: str) -> str:
    """The end of a state id (ids start with a per-process prefix; the counter is last);
    `states show` accepts it."""
    return state_id if len(state_id) <= 10 else "…" + state_id[-8:]


@dataclass
class Node:
    state: StateDetail
    unites: str | None = None  # the target state id, for a uniting state
    children: list[Node] = field(default_factory=list)
    identifier: str = ""  # the state's, or for a pending state what the template says
    node: str = ""


@dataclass
class Template:
    """What the graph's current template says (empty once it is deleted)."""

    unites: dict[str, str] = field(default_factory=dict)  # uniting identifier -> its target
    next_nodes: dict[str, list[str]] = field(default_factory=dict)
    node_names: dict[str, str] = field(default_factory=dict)


def template_of(doc: Mapping[str, Any] | None) -> Template:
    """A stored graph (`get_graph`) as the tree needs it."""
    t = Template()
    for n in (doc or {}).get("nodes") or ():
        ident = str(n["identifier"])
        t.next_nodes[ident] = [str(x) for x in n.get("next_nodes") or ()]
        t.node_names[ident] = str(n.get("node_name") or "")
        u = n.get("unites")
        if isinstance(u, Mapping) and u.get("identifier"):
            t.unites[ident] = str(u["identifier"])
    return t


def _named(sid: str, states: Mapping[str, StateDetail], t: Template) -> tuple[str, str]:
    """(identifier, node) of a state; a pending one has no record yet: its retry's
    original, or its parent's only next node in the template, tells."""
    st = states[sid]
    ident = st.identifier
    if not ident and st.retry_of in states:
        ident = states[st.retry_of or ""].identifier
    if not ident and len(st.parents) == 1 and st.parents[0] in states:
        nxt = t.next_nodes.get(states[st.parents[0]].identifier) or []
        ident = nxt[0] if len(nxt) == 1 else ""
    return ident, st.node or t.node_names.get(ident, "")


def build(graph: RunGraph, template: Template) -> list[Node]:
    """The forest of the run's states (one root, normally)."""
    states = graph.states
    unites = template.unites
    tree_parent: dict[str, str | None] = {}

    for sid, st in states.items():
        ps = [p for p in st.parents if p in states]
        if _is_unite(st, unites):
            tree_parent[sid] = _target(sid, ps, states, unites, tree_parent)
        else:
            tree_parent[sid] = ps[0] if ps else None
    nodes = {sid: Node(st, None, [], *_named(sid, states, template)) for sid, st in states.items()}
    roots = []
    # By creation; ids are a per-process prefix and a hex counter: shorter is older.
    for sid, node in sorted(
        nodes.items(), key=lambda kv: (kv[1].state.created_ms or 0, len(kv[0]), kv[0])
    ):
        p = tree_parent[sid]
        if p is None or p not in nodes:
            roots.append(node)
        else:
            if _is_unite(states[sid], unites):
                node.unites = p
            nodes[p].children.append(node)
    return roots


def _is_unite(st: StateDetail, unites: Mapping[str, str]) -> bool:
    # Without the template (deleted since), a state with several parents is a unite.
    return st.identifier in unites or len(st.parents) > 1


def _target(
    sid: str,
    parents: list[str],
    states: Mapping[str, StateDetail],
    unites: Mapping[str, str],
    known: dict[str, str | None],
) -> str | None:
    """The state a uniting state closes: the nearest ancestor of its parents (itself
    included: a fan-out with no branch unites straight after its target) with the
    identifier it unites; without the template, the parents' nearest common ancestor."""
    if not parents:
        return None
    wanted = unites.get(states[sid].identifier)

    def up(s: str) -> str | None:
        if s in known:
            return known[s]
        ps = [p for p in states[s].parents if p in states]
        if _is_unite(states[s], unites):
            known[s] = None  # a cycle (never written by the engine) ends here
            known[s] = _target(s, ps, states, unites, known)
            return known[s]
        return ps[0] if ps else None

    def chain(s: str | None) -> list[str]:
        out = []
        seen = set()
        while s is not None and s not in seen:
            seen.add(s)
            out.append(s)
            s = up(s)
        return out

    if wanted is not None:
        for s in chain(parents[0]):
            if states[s].identifier == wanted:
                return s
    common = set(chain(parents[0]))
    for p in parents[1:]:
        common &= set(chain(p))
    for s in chain(parents[0]):
        if s in common:
            return s
    return parents[0]


def _rank(node: Node) -> int:
    status = node.state.status or "PENDING"
    return WORST_FIRST.index(status) if status in WORST_FIRST else 0


def _counts(nodes: list[Node]) -> str:
    found: dict[str, int] = {}
    for n in nodes:
        s = n.state.status or "PENDING"
        found[s] = found.get(s, 0) + 1
    order = sorted(found, key=lambda s: WORST_FIRST.index(s) if s in WORST_FIRST else -1)
    return ", ".join(f"{found[s]:,} {s}" for s in order)


def _size(node: Node) -> int:
    total, stack = 0, [node]
    while stack:
        n = stack.pop()
        total += 1
        stack.extend(n.children)
    return total


def line(node: Node, states: Mapping[str, StateDetail]) -> str:
    st = node.state
    parts = [
        node.identifier or "(pending)",
        node.node or "-",
        st.status or "PENDING",
        f"try {st.attempt}" if st.attempt else "not run",
        short_id(st.state_id),
    ]
    if node.unites is not None:
        target = states[node.unites]
        parts.append(f"unites {target.identifier} {short_id(node.unites)}")
    if st.retry_of:
        parts.append(f"retry of {short_id(st.retry_of)}")
    if st.retried_as:
        parts.append(f"retried as {short_id(st.retried_as)}")
    if st.error and st.status in ("FAILED", "RETRYING"):
        first = st.error.strip().splitlines()[0] if st.error.strip() else ""
        parts.append(first if len(first) <= 70 else first[:69] + "…")
    return "  ".join(parts)


def render(
    roots: list[Node],
    states: Mapping[str, StateDetail],
    children: int = CHILDREN,
    max_lines: int = MAX_LINES,
) -> list[str]:
    """The tree as text lines (children = 0: every child)."""
    out: list[str] = []
    shown = 0
    # (node, prefix for its line, prefix for its children) or a ready-made "more" line.
    stack: list[tuple[Node | None, str, str]] = [(r, "", "") for r in reversed(roots)]
    while stack:
        node, head, indent = stack.pop()
        if len(out) >= max_lines:
            left = len(states) - shown
            out.append(f"... {left:,} more states not shown (over {max_lines:,} lines)")
            break
        if node is None:
            out.append(head)
            continue
        out.append(head + line(node, states))
        shown += 1
        # The branches, then what unites them: each list bounded on its own.
        items = _bounded([k for k in node.children if k.unites is None], children)
        items += _bounded([k for k in node.children if k.unites is not None], children)
        shown += sum(n for _, _, n in items)
        for k, (child, text, _) in reversed(list(enumerate(items))):
            last = k == len(items) - 1
            branch = indent + ("└─ " if last else "├─ ")
            if child is None:
                stack.append((None, branch + text, ""))
            else:
                stack.append((child, branch, indent + ("   " if last else "│  ")))
    return out


def _bounded(kids: list[Node], children: int) -> list[tuple[Node | None, str, int]]:
    """`kids` to list (up to `children`, those not SUCCEEDED first, in their order) and
    one "... N more" line for the rest: (node or None, the line's text, states hidden)."""
    if not children or len(kids) <= children:
        return [(k, "", 0) for k in kids]
    keep = {id(k) for k in sorted(kids, key=_rank)[:children]}
    hidden = [k for k in kids if id(k) not in keep]
    items: list[tuple[Node | None, str, int]] = [(k, "", 0) for k in kids if id(k) in keep]
    under = sum(_size(h) for h in hidden) - len(hidden)
    more = f"... {len(hidden):,} more: {_counts(hidden)}"
    if under:
        more += f" (and {under:,} states under them)"
    items.append((None, more, len(hidden) + under))
    return items


def as_json(node: Node) -> dict[str, Any]:
    """A tree node as JSON-able data (the record's big fields left out: `states show`)."""
    st = node.state
    return {
        "state_id": st.state_id,
        "identifier": node.identifier,
        "node": node.node,
        "status": st.status,
        "attempt": st.attempt,
        "unites": node.unites,
        "retry_of": st.retry_of,
        "retried_as": st.retried_as,
        "error": st.error,
        "children": [as_json(c) for c in node.children],
    }
