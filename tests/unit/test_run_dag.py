"""The run page's state DAG (dashboard/rundag.py): boxes per state, like siblings grouped
when a fan-out is wide, rows by depth, and bounds on what a huge run draws."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict

import pytest

from exospherehost.client.runs import NodeCounts, RunGraph, RunStatus, StateDetail
from exospherehost.dashboard import rundag, runpage
from exospherehost.dashboard.rundag import run_dag, short_id


def st(
    sid: str,
    ident: str,
    parents: list[str] | None = None,
    status: str = "SUCCEEDED",
    attempt: int = 1,
    created: int = 0,
) -> StateDetail:
    pending = status == "PENDING"
    return StateDetail(
        sid, "run", "" if pending else ident.title(), "" if pending else ident, status,
        0 if pending else attempt, None, None, None, None, parents or [], created, None, None,
        None, "",
    )  # fmt: skip


def graph(*states: StateDetail) -> RunGraph:
    found = {s.state_id: s for s in states}
    edges = sorted((p, s.state_id) for s in states for p in s.parents)
    return RunGraph("run", found, edges)


def fan(n: int, failed: set[int] = frozenset(), label: bool = False) -> RunGraph:  # type: ignore[assignment]
    states = [st("root", "split")]
    for i in range(n):
        states.append(st(f"w{i}", "work", ["root"], "FAILED" if i in failed else "SUCCEEDED"))
        if label:
            states.append(st(f"l{i}", "label", [f"w{i}"]))
    ends = [f"l{i}" for i in range(n)] if label else [f"w{i}" for i in range(n)]
    states.append(st("unite", "collect", ends))
    return graph(*states)


def test_a_small_fan_out_is_drawn_state_by_state_in_rows() -> None:
    dag = run_dag(fan(3, failed={1}))
    boxes = {b.key: b for b in dag.boxes}
    assert set(boxes) == {"s:root", "s:w0", "s:w1", "s:w2", "s:unite"}
    assert [boxes[k].depth for k in ("s:root", "s:w0", "s:unite")] == [0, 1, 2]
    assert boxes["s:w1"].status == "FAILED" and boxes["s:w1"].identifier == "work"
    # Siblings side by side on one row, the root centred above them, the unite below.
    ws = [boxes[f"s:w{i}"] for i in range(3)]
    assert len({b.y for b in ws}) == 1 and len({b.x for b in ws}) == 3
    assert boxes["s:root"].y < ws[0].y < boxes["s:unite"].y
    assert boxes["s:root"].x == ws[1].x == boxes["s:unite"].x
    assert sorted((e.source, e.target) for e in dag.edges) == sorted(
        [("s:root", f"s:w{i}") for i in range(3)] + [(f"s:w{i}", "s:unite") for i in range(3)]
    )
    assert (dag.drawn, dag.collapsed, dag.hidden, dag.note) == (5, 0, 0, "")
    assert max(b.x for b in dag.boxes) + rundag.BOX_W <= dag.width
    # Up to EXPAND_MAX (8) like siblings are drawn one by one; one more: a group.
    assert run_dag(fan(8)).drawn == 8 + 2
    over = run_dag(fan(9))
    assert [(b.kind, b.count) for b in over.boxes if b.identifier == "work"] == [("group", 9)]


def test_a_wide_fan_out_is_one_group_with_its_counts_and_failed_states_first() -> None:
    dag = run_dag(fan(10_000, failed={17, 9_000}, label=True))
    boxes = {b.key: b for b in dag.boxes}
    groups = [b for b in dag.boxes if b.kind == "group"]
    # The 10,000 branches and the 10,000 states they lead to: two groups, one row each.
    assert [(g.identifier, g.count) for g in groups] == [("work", 10_000), ("label", 10_000)]
    work = groups[0]
    assert work.statuses == {"FAILED": 2, "SUCCEEDED": 9_998}
    assert work.status == "FAILED"  # its worst
    assert [m.state_id for m in work.members[:2]] == ["w17", "w9000"]
    assert len(work.members) == rundag.MEMBERS_LISTED
    assert sorted((e.source, e.target) for e in dag.edges) == [
        ("g:1", "g:2"),
        ("g:2", "s:unite"),
        ("s:root", "g:1"),
    ]
    assert boxes["s:unite"].depth == 3
    assert (dag.states, dag.drawn, dag.collapsed, dag.hidden) == (20_002, 2, 20_000, 0)
    assert "20,000 of 20,002 states are drawn as 2 groups" in dag.note
    # Bounded: the page's JSON for 20,002 states stays small.
    assert len(json.dumps(asdict(dag))) < 20_000


def test_many_kinds_at_one_depth_collapse_then_wrap_and_the_drawing_is_capped() -> None:
    # 40 identifiers under the root, 5 states each: rows collapse to one box a group.
    states = [st("root", "split")]
    for k in range(40):
        states += [st(f"k{k}-{i}", f"kind{k}", ["root"]) for i in range(5)]
    dag = run_dag(graph(*states))
    assert sum(b.kind == "group" for b in dag.boxes) == 40
    per_line = {}
    for b in dag.boxes:
        per_line[b.y] = per_line.get(b.y, 0) + 1
    assert max(per_line.values()) <= rundag.ROW_MAX
    assert dag.width <= 2 * rundag.PAD + rundag.ROW_MAX * (rundag.BOX_W + rundag.GAP_X)
    # A chain of 500 different identifiers: only the first MAX_BOXES are drawn.
    chain = [st("c0", "n0")] + [st(f"c{i}", f"n{i}", [f"c{i - 1}"]) for i in range(1, 500)]
    capped = run_dag(graph(*chain))
    assert len(capped.boxes) == rundag.MAX_BOXES
    assert capped.hidden == 500 - rundag.MAX_BOXES
    assert f"{500 - rundag.MAX_BOXES} states in" in capped.note
    assert "not drawn" in capped.note
    # 60 wide fan-outs under one root: each a group, listing at most MEMBERS_TOTAL states.
    wide = [st("root", "split")]
    for k in range(60):
        wide += [st(f"k{k}-{i}", f"kind{k}", ["root"]) for i in range(60)]
    groups = [b for b in run_dag(graph(*wide)).boxes if b.kind == "group"]
    assert len(groups) == 60 and groups[0].count == 60
    assert sum(len(b.members) for b in groups) == rundag.MEMBERS_TOTAL
    assert len(json.dumps(asdict(run_dag(graph(*wide))))) < 200_000


def test_pending_states_are_named_from_the_template_when_it_tells() -> None:
    g = graph(
        st("root", "split"),
        st("p1", "", ["root"], "PENDING"),
        st("p2", "", ["root"], "PENDING"),
    )
    dag = run_dag(g, {"split": ["work"]}, {"work": "Work"})
    assert {(b.identifier, b.node) for b in dag.boxes if b.key != "s:root"} == {("work", "Work")}
    assert {b.status for b in dag.boxes if b.key != "s:root"} == {"PENDING"}
    ambiguous = run_dag(g, {"split": ["a", "b"]})
    assert {b.identifier for b in ambiguous.boxes if b.key != "s:root"} == {rundag.PENDING_NAME}


def test_short_ids_keep_the_end() -> None:
    assert short_id("a1b2c3d4e5f6" + "1f3") == "…4e5f61f3"
    assert short_id("abc") == "abc"


class FakeManager:
    """What dag_view uses of a StateManager: the run's graph (counting reads)."""

    namespace = "ns"

    def __init__(self, g: RunGraph) -> None:
        self.g, self.reads = g, 0

    async def run_graph(self, run_id: str) -> RunGraph:
        self.reads += 1
        return self.g

    async def get_graph(self, name: str) -> dict[str, object]:
        return {"nodes": []}


def status(state: str = "RUNNING", succeeded: int = 1) -> RunStatus:
    return RunStatus("run", "g", state, 1, 0, None, {"work": NodeCounts(0, succeeded)})


async def test_a_drawing_is_reused_while_the_run_is_unchanged_and_briefly_when_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(runpage, "_clock", lambda: clock[0])
    monkeypatch.setattr(runpage, "_drawn", OrderedDict())
    sm = FakeManager(fan(3))
    real = sm.run_graph

    async def slow(run_id: str) -> RunGraph:
        clock[0] += 0.5  # reading takes 0.5 s: a running run's drawing is reused for 5 s
        return await real(run_id)

    sm.run_graph = slow  # type: ignore[method-assign]
    view = runpage.dag_view
    first = await view(sm, status())  # type: ignore[arg-type]
    assert (sm.reads, first["age_ms"], first["states"]) == (1, 0, 5)
    clock[0] += 100
    assert (await view(sm, status()))["age_ms"] == 0  # type: ignore[arg-type]
    assert sm.reads == 1  # unchanged status: not read again, however long after
    moved = status(succeeded=2)
    reused = await view(sm, moved)  # type: ignore[arg-type]
    assert sm.reads == 2  # changed, and past the reuse window: read again
    assert reused["age_ms"] == 0
    clock[0] += 4.0
    stale = await view(sm, status(succeeded=3))  # type: ignore[arg-type]
    assert (sm.reads, stale["age_ms"]) == (2, 4000)  # changed again, within 10 x 0.5 s
    clock[0] += 1.5
    await view(sm, status(succeeded=3))  # type: ignore[arg-type]
    assert sm.reads == 3
    # A finished run is never reused across a change (a retry re-opens it).
    await view(sm, status("FAILED", 3))  # type: ignore[arg-type]
    await view(sm, status("FAILED", 4))  # type: ignore[arg-type]
    assert sm.reads == 5


def retried(g: RunGraph, old: str, new: str) -> RunGraph:
    """`g` after retry_state re-ran `old` as `new` (a sibling: same parents), which
    succeeded; the unite lists both as branch ends, as run_graph does."""
    g.states[old].retried_as = new
    g.states[new] = st(new, g.states[old].identifier, list(g.states[old].parents), created=1)
    g.states[new].retry_of = old
    g.states["unite"].parents.append(new)
    return graph(*g.states.values())


def test_a_retried_state_is_marked_and_counted_apart_and_its_retry_feeds_the_unite() -> None:
    dag = run_dag(retried(fan(3, failed={1}), "w1", "w1r"))
    boxes = {b.key: b for b in dag.boxes}
    assert (boxes["s:w1"].status, boxes["s:w1"].retried_as) == ("FAILED", "w1r")
    assert (boxes["s:w1r"].status, boxes["s:w1r"].retry_of) == ("SUCCEEDED", "w1")
    assert boxes["s:w1r"].y == boxes["s:w1"].y  # a sibling, on the same row
    targets = {e.source for e in dag.edges if e.target == "s:unite"}
    assert targets == {"s:w0", "s:w2", "s:w1r"}  # not the retried one
    wide = run_dag(retried(fan(20, failed={3}), "w3", "w3r"))
    [group] = [b for b in wide.boxes if b.kind == "group"]
    assert group.statuses == {"SUCCEEDED": 20, rundag.RETRIED: 1}
    assert group.status == "SUCCEEDED"  # its failure was retried: not what decides now
