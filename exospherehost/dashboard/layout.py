"""Lay a graph template out as a left-to-right DAG by depth levels, for an inline SVG.

Done here rather than in the browser so the geometry is typed and unit-testable and the
page only has to draw boxes and paths. Depth is the longest path from the root, so every
edge points rightwards; a uniting node's extra dependency (`unites.identifier`) is drawn as
a dashed arc below the boxes, since it usually skips levels and a straight edge would run
through the nodes in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

BOX_W = 190
BOX_H = 60
COL = BOX_W + 60  # horizontal pitch of depth levels
ROW = BOX_H + 22  # vertical pitch of nodes within a level
PAD = 12
ARC_ROOM = 46  # extra height below the boxes for unites arcs


@dataclass(frozen=True)
class Box:
    identifier: str
    node_name: str
    depth: int
    x: int
    y: int


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: Literal["next", "unites"]
    path: str  # SVG path data, ready for <path d="...">


@dataclass(frozen=True)
class Layout:
    boxes: list[Box]
    edges: list[Edge]
    width: int
    height: int
    box_w: int = BOX_W
    box_h: int = BOX_H


def _depths(ids: list[str], children: Mapping[str, list[str]]) -> dict[str, int]:
    """Longest-path depth in topological (Kahn) order. Stored graphs are acyclic (upsert
    rejects cycles); should one slip through, its nodes keep depth 0 rather than hang."""
    indegree = dict.fromkeys(ids, 0)
    for kids in children.values():
        for c in kids:
            indegree[c] += 1
    depth = dict.fromkeys(ids, 0)
    ready = [i for i in ids if indegree[i] == 0]
    while ready:
        node = ready.pop(0)
        for c in children[node]:
            depth[c] = max(depth[c], depth[node] + 1)
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    return depth


def _levels(
    ids: list[str], depth: Mapping[str, int], parents: Mapping[str, list[str]]
) -> list[list[str]]:
    """Nodes per level, each level ordered by the mean position of its parents (one
    barycenter sweep: cheap, and enough to untangle the small graphs templates are)."""
    levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for i in ids:
        levels[depth[i]].append(i)
    index: dict[str, int] = {}
    for level in levels:
        if index:
            # parents sit on earlier levels (only a cycle, never stored, breaks that)
            position = {
                n: sum(index.get(p, 0) for p in parents[n]) / len(parents[n]) if parents[n] else k
                for k, n in enumerate(level)
            }
            level.sort(key=lambda n: position[n])  # stable: ties keep declaration order
        index.update({n: k for k, n in enumerate(level)})
    return levels


def layout(nodes: Sequence[Mapping[str, Any]]) -> Layout:
    """Geometry of a graph given its nodes as stored (`GraphNodeModel.model_dump()`)."""
    ids = [str(n["identifier"]) for n in nodes]
    known = set(ids)
    children: dict[str, list[str]] = {
        str(n["identifier"]): [c for c in n.get("next_nodes") or () if c in known] for n in nodes
    }
    parents: dict[str, list[str]] = {i: [] for i in ids}
    for p, kids in children.items():
        for c in kids:
            parents[c].append(p)
    depth = _depths(ids, children)
    levels = _levels(ids, depth, parents)
    rows = max((len(level) for level in levels), default=0)
    boxes: dict[str, Box] = {}
    name_of = {str(n["identifier"]): str(n.get("node_name", "")) for n in nodes}
    for d, level in enumerate(levels):
        top = PAD + (rows - len(level)) * ROW // 2  # centre each level vertically
        for k, ident in enumerate(level):
            boxes[ident] = Box(ident, name_of[ident], d, PAD + d * COL, top + k * ROW)
    bottom = PAD + max(rows * ROW - (ROW - BOX_H), 0)
    edges = [_next_edge(boxes[p], boxes[c]) for p in ids for c in children[p]]
    for n in nodes:
        unites = n.get("unites") or {}
        source = unites.get("identifier") if isinstance(unites, Mapping) else None
        if source in boxes:
            edges.append(_unites_edge(boxes[str(source)], boxes[str(n["identifier"])], bottom))
    has_arcs = any(e.kind == "unites" for e in edges)
    width = PAD * 2 + max(len(levels) - 1, 0) * COL + (BOX_W if levels else 0)
    height = bottom + PAD + (ARC_ROOM if has_arcs else 0)
    ordered = [boxes[i] for level in levels for i in level]
    return Layout(ordered, edges, width, height)


def _next_edge(a: Box, b: Box) -> Edge:
    x1, y1 = a.x + BOX_W, a.y + BOX_H // 2
    x2, y2 = b.x, b.y + BOX_H // 2
    dx = max((x2 - x1) // 2, 20)
    return Edge(
        a.identifier, b.identifier, "next", f"M{x1},{y1} C{x1 + dx},{y1} {x2 - dx},{y2} {x2},{y2}"
    )


def _unites_edge(a: Box, b: Box, bottom: int) -> Edge:
    x1, y1 = a.x + BOX_W // 2, a.y + BOX_H
    x2, y2 = b.x + BOX_W // 2, b.y + BOX_H
    low = bottom + ARC_ROOM  # a cubic reaches ~3/4 of the way to its control points
    return Edge(
        a.identifier, b.identifier, "unites", f"M{x1},{y1} C{x1},{low} {x2},{low} {x2},{y2}"
    )
