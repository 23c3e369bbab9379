"""A run's states as a layered DAG for the run page (issue 12.8): one box per state, or one
box per group of like siblings when a fan-out is wide, in rows by depth from the root
(top down: a fan-out's siblings side by side), with the edges parent -> child.

Pure: it takes the SDK's RunGraph and returns geometry; views.py reads, app.js draws.
Bounded whatever the run's size: states are grouped by (identifier, groups of their
parents), so the 10,000 branches of a fan-out are one group, and so are the 10,000
states each of them leads to. A group of up to EXPAND_MAX states is drawn state by state;
a bigger one is one box ("10,000 states of work") with its status counts and a few of its
states listed (failed first). At most MAX_BOXES boxes and ROW_MAX per line are drawn;
what is left out is counted in `note`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from exospherehost.client.runs import RunGraph, StateDetail

BOX_W = 176
BOX_H = 58
GAP_X = 14  # between boxes of a row
ROW = BOX_H + 44  # vertical pitch of rows (room for the edges between them)
PAD = 12

EXPAND_MAX = 8
"""A group of up to this many like states is drawn state by state."""
ROW_MAX = 12
"""Boxes per line: a depth with more boxes collapses its groups, then wraps."""
MAX_BOXES = 240
"""Boxes drawn at most (groups collapse first, then whole groups are left out)."""
MAX_EDGES = 2000
MEMBERS_LISTED = 50
"""States of a collapsed group listed with it (not SUCCEEDED first), to click through."""
MEMBERS_TOTAL = 1000
"""... and of all groups together (groups drawn later list fewer)."""

RETRIED = "RETRIED"
"""A group counts a state retry_state re-ran (it has a newer copy) apart, as RETRIED:
what it ended as no longer decides the run."""
WORST_FIRST = ("FAILED", "RETRYING", "PENDING", "PRUNED", "SUCCEEDED", RETRIED)
"""A group's colour is its worst status; members are listed in this order."""

PENDING_NAME = "(pending)"
"""The identifier of a created, unsettled state whose identifier the template cannot tell
(its record is written by its first settle)."""


def short_id(state_id: str) -> str:
    """The end of a state id (ids start with a per-process prefix; the counter is last)."""
    return state_id if len(state_id) <= 10 else "…" + state_id[-8:]


@dataclass
class Member:
    state_id: str
    short: str
    status: str
    attempt: int
    retried_as: str | None = None


@dataclass
class DagBox:
    key: str  # "s:<state id>" for a state, "g:<n>" for a collapsed group
    kind: Literal["state", "group"]
    identifier: str
    node: str
    status: str  # a group: its worst status
    count: int  # states in the box (1 for a state)
    statuses: dict[str, int]  # status -> states, worst first
    depth: int
    x: int
    y: int
    state_id: str | None = None  # a state box
    short: str = ""
    attempt: int = 0
    members: list[Member] = field(default_factory=list)  # a group: some of its states
    retried_as: str | None = None  # a state box: the state retry_state made of it
    retry_of: str | None = None  # ... the state it is a retry of


@dataclass
class DagEdge:
    source: str  # box keys
    target: str
    path: str  # SVG path data


@dataclass
class RunDag:
    boxes: list[DagBox]
    edges: list[DagEdge]
    width: int
    height: int
    states: int  # states of the run
    drawn: int  # drawn as a box of their own
    collapsed: int  # inside group boxes
    hidden: int  # not drawn at all (over MAX_BOXES)
    edges_hidden: int
    note: str  # what the drawing leaves out, for the page ("" when nothing)
    box_w: int = BOX_W
    box_h: int = BOX_H


def _order(states: Mapping[str, StateDetail], parents: Mapping[str, list[str]]) -> list[str]:
    """States parents first (Kahn), siblings by creation time then id. A cycle (never
    written by the engine) cannot hang it: what is left is appended."""
    children: dict[str, list[str]] = {sid: [] for sid in states}
    indegree = {sid: len(ps) for sid, ps in parents.items()}
    for sid, ps in parents.items():
        for p in ps:
            children[p].append(sid)

    def when(sid: str) -> tuple[int, int, str]:
        # Ids are a per-process prefix and a hex counter: shorter is older among equals.
        return states[sid].created_ms or 0, len(sid), sid

    ready = [when(s) for s, n in indegree.items() if n == 0]
    heapq.heapify(ready)
    out: list[str] = []
    seen: set[str] = set()
    while ready:
        sid = heapq.heappop(ready)[-1]
        out.append(sid)
        seen.add(sid)
        for c in children[sid]:
            indegree[c] -= 1
            if indegree[c] == 0:
                heapq.heappush(ready, when(c))
    out += sorted((s for s in states if s not in seen), key=when)
    return out


def _name(
    sid: str,
    states: Mapping[str, StateDetail],
    parents: Mapping[str, list[str]],
    next_nodes: Mapping[str, Sequence[str]],
) -> str:
    st = states[sid]
    if st.identifier:
        return st.identifier
    old = states.get(st.retry_of or "")
    if old is not None and old.identifier:  # a retry, not settled yet: what it re-runs
        return old.identifier
    # A pending state has no record yet: its parent's only next node, when it has one.
    ps = parents[sid]
    if len(ps) == 1:
        nxt = next_nodes.get(states[ps[0]].identifier) or ()
        if len(nxt) == 1:
            return str(nxt[0])
    return PENDING_NAME


def _counts(statuses: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for s in statuses:
        found[s] = found.get(s, 0) + 1
    rank = {s: i for i, s in enumerate(WORST_FIRST)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], -1), kv[0])))


def run_dag(
    graph: RunGraph,
    next_nodes: Mapping[str, Sequence[str]] | None = None,
    node_names: Mapping[str, str] | None = None,
) -> RunDag:
    """The drawing of `graph`. The template's `next_nodes` and `node_names` (by
    identifier) name pending states, whose records do not say yet what they are."""
    states = graph.states
    nxt = next_nodes or {}
    parents = {sid: [p for p in st.parents if p in states] for sid, st in states.items()}
    order = _order(states, parents)

    def _replaced(p: str, c: str) -> bool:
        # A unite lists a retried branch end and its retry; it took the retry's outputs.
        return states[p].retried_as in parents[c]

    names = {sid: _name(sid, states, parents, nxt) for sid in order}

    # Groups in topological order: a group's parents' groups have smaller numbers.
    group_of: dict[str, int] = {}
    by_key: dict[tuple[str, tuple[int, ...]], int] = {}
    members: list[list[str]] = []
    group_parents: list[tuple[int, ...]] = []
    for sid in order:
        pg = tuple(sorted({group_of[p] for p in parents[sid] if p in group_of}))
        key = (names[sid], pg)
        if key not in by_key:
            by_key[key] = len(members)
            members.append([])
            group_parents.append(pg)
        group_of[sid] = by_key[key]
        members[by_key[key]].append(sid)
    depth: list[int] = []
    for pg in group_parents:
        depth.append(1 + max((depth[g] for g in pg), default=-1))

    expanded = [len(m) <= EXPAND_MAX for m in members]
    kept = _fit(members, depth, expanded)

    boxes: dict[str, DagBox] = {}
    box_of: dict[str, str] = {}
    for g in range(kept):
        if expanded[g]:
            for sid in members[g]:
                node = states[sid].node or (node_names or {}).get(names[sid], "")
                boxes["s:" + sid] = _state_box(states[sid], names[sid], node, depth[g])
                box_of[sid] = "s:" + sid
        else:
            gkey = f"g:{g}"
            group = [states[s] for s in members[g]]
            name = names[members[g][0]]
            node = next((s.node for s in group if s.node), (node_names or {}).get(name, ""))
            boxes[gkey] = _group_box(gkey, group, name, node, depth[g])
            box_of.update(dict.fromkeys(members[g], gkey))
    budget = MEMBERS_TOTAL
    for box in boxes.values():
        box.members = box.members[:budget]
        budget -= len(box.members)
    rows = _place(boxes, graph.edges, box_of)

    links = sorted(
        {
            (box_of[p], box_of[c])
            for p, c in graph.edges
            if p in box_of and c in box_of and box_of[p] != box_of[c] and not _replaced(p, c)
        }
    )
    edges = [_edge(boxes[a], boxes[b]) for a, b in links[:MAX_EDGES]]
    width = PAD * 2 + max((_row_width(n) for n in rows), default=0)
    height = PAD * 2 + max(len(rows) * ROW - (ROW - BOX_H), 0)
    drawn = sum(1 for b in boxes.values() if b.kind == "state")
    collapsed = sum(b.count for b in boxes.values() if b.kind == "group")
    hidden = len(states) - drawn - collapsed
    dag = RunDag(
        list(boxes.values()),
        edges,
        width,
        height,
        len(states),
        drawn,
        collapsed,
        hidden,
        max(len(links) - MAX_EDGES, 0),
        "",
    )
    dag.note = _note(dag, len(members) - kept)
    return dag


def _fit(members: list[list[str]], depth: list[int], expanded: list[bool]) -> int:
    """Collapse groups (largest first) where a depth, or the whole drawing, has too many
    boxes; returns how many groups (in order) are drawn at all."""

    def size(g: int) -> int:
        return len(members[g]) if expanded[g] else 1

    by_depth: dict[int, list[int]] = {}
    for g, d in enumerate(depth):
        by_depth.setdefault(d, []).append(g)
    for groups in by_depth.values():
        _collapse(groups, size, expanded, ROW_MAX)
    _collapse(list(range(len(members))), size, expanded, MAX_BOXES)
    total = 0
    for g in range(len(members)):
        total += size(g)
        if total > MAX_BOXES:
            return g
    return len(members)


def _collapse(
    groups: list[int], size: Callable[[int], int], expanded: list[bool], limit: int
) -> None:
    """Collapse the largest expanded groups of `groups` until their boxes fit `limit`."""
    total = sum(size(g) for g in groups)
    for g in sorted(groups, key=lambda g: -size(g)):
        if total <= limit:
            return
        if expanded[g] and size(g) > 1:
            total -= size(g) - 1
            expanded[g] = False


def _standing(st: StateDetail) -> str:
    """What a state counts as in its group: its status, or RETRIED once re-run."""
    return RETRIED if st.retried_as else st.status or "PENDING"


def _state_box(st: StateDetail, name: str, node: str, depth: int) -> DagBox:
    status = st.status or "PENDING"
    return DagBox(
        "s:" + st.state_id,
        "state",
        name,
        node,
        status,
        1,
        {status: 1},
        depth,
        0,
        0,
        st.state_id,
        short_id(st.state_id),
        st.attempt,
        retried_as=st.retried_as,
        retry_of=st.retry_of,
    )


def _group_box(key: str, states: list[StateDetail], name: str, node: str, depth: int) -> DagBox:
    counts = _counts([_standing(s) for s in states])
    rank = {s: i for i, s in enumerate(WORST_FIRST)}
    listed = sorted(states, key=lambda s: rank.get(_standing(s), -1))[:MEMBERS_LISTED]
    return DagBox(
        key,
        "group",
        name,
        node,
        next(iter(counts)),
        len(states),
        counts,
        depth,
        0,
        0,
        members=[
            Member(s.state_id, short_id(s.state_id), s.status or "PENDING", s.attempt, s.retried_as)
            for s in listed
        ],
    )


def _row_width(n: int) -> int:
    return n * (BOX_W + GAP_X) - GAP_X


def _place(
    boxes: dict[str, DagBox], edges: Sequence[tuple[str, str]], box_of: Mapping[str, str]
) -> list[int]:
    """x, y of every box: rows by depth (a depth over ROW_MAX boxes wraps onto more
    lines), each row ordered by the mean x of its boxes' parents and centred. Returns
    the number of boxes on each line."""
    parents: dict[str, set[str]] = {k: set() for k in boxes}
    for p, c in edges:
        up, down = box_of.get(p), box_of.get(c)
        if up is not None and down is not None and up != down:
            parents[down].add(up)
    by_depth: dict[int, list[DagBox]] = {}
    for box in boxes.values():  # in group order, members by creation: stable ties
        by_depth.setdefault(box.depth, []).append(box)
    lines: list[list[DagBox]] = []
    centre: dict[str, float] = {}
    for d in sorted(by_depth):
        row = by_depth[d]
        pos = {
            b.key: (
                sum(centre[p] for p in parents[b.key] if p in centre) / len(parents[b.key])
                if parents[b.key]
                else 0.0
            )
            for b in row
        }
        row.sort(key=lambda b: pos[b.key])
        for start in range(0, len(row), ROW_MAX):
            line = row[start : start + ROW_MAX]
            lines.append(line)
            for k, b in enumerate(line):
                centre[b.key] = k - (len(line) - 1) / 2  # centred on 0
    widest = max((_row_width(len(line)) for line in lines), default=0)
    for n, line in enumerate(lines):
        left = PAD + (widest - _row_width(len(line))) // 2
        for k, b in enumerate(line):
            b.x, b.y = left + k * (BOX_W + GAP_X), PAD + n * ROW
    return [len(line) for line in lines]


def _edge(a: DagBox, b: DagBox) -> DagEdge:
    x1, y1 = a.x + BOX_W // 2, a.y + BOX_H
    x2, y2 = b.x + BOX_W // 2, b.y
    if y2 <= y1:  # a wrapped line of the same depth, or a cycle: go round the side
        x1, y1 = a.x + BOX_W, a.y + BOX_H // 2
        x2, y2 = b.x + BOX_W, b.y + BOX_H // 2
        return DagEdge(a.key, b.key, f"M{x1},{y1} C{x1 + 40},{y1} {x2 + 40},{y2} {x2},{y2}")
    dy = max((y2 - y1) // 2, 16)
    return DagEdge(a.key, b.key, f"M{x1},{y1} C{x1},{y1 + dy} {x2},{y2 - dy} {x2},{y2}")


def _note(dag: RunDag, groups_hidden: int) -> str:
    parts = []
    groups = sum(1 for b in dag.boxes if b.kind == "group")
    if groups:
        parts.append(
            f"{dag.collapsed:,} of {dag.states:,} states are drawn as {groups} group"
            f"{'s' if groups != 1 else ''} of like states (click one to list its states)"
        )
    if dag.hidden:
        parts.append(
            f"{dag.hidden:,} states in {groups_hidden} more group"
            f"{'s' if groups_hidden != 1 else ''} are not drawn (at most {MAX_BOXES} boxes)"
        )
    if dag.edges_hidden:
        parts.append(f"{dag.edges_hidden:,} edges are not drawn")
    return "; ".join(parts)
