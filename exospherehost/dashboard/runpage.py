"""The run page's DAG of states, one state's details, and the Retry actions (issue 12.8),
over StateManager calls only; app.py does the HTTP.

The page polls once a second. Reading a run's states (`sm.run_graph`) costs time in
proportion to them (about 20 ms per 1,000 states here), so a drawing is reused while the
run's status (counts, open states, finish time) is unchanged (nothing was settled or
created since), and a running run's is reused for REUSE_FACTOR times as long as reading it
took (at most REUSE_MAX_S), so a big run keeps Redis busy at most ~10% of the time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, astuple
from typing import Any

from exospherehost.client.runs import RunStatus
from exospherehost.client.statemanager import StateManager
from exospherehost.dashboard.rundag import run_dag
from exospherehost.errors import GraphNotFound, InvalidArgument, RetryRefused

CONFLICT = 409
REUSE_FACTOR = 10
REUSE_MAX_S = 15.0
CACHED_RUNS = 64

_clock = time.monotonic  # (a test moves it)

_drawn: OrderedDict[tuple[str, str], tuple[tuple[Any, ...], float, float, dict[str, Any]]] = (
    OrderedDict()
)
"""(namespace, run id) -> (status fingerprint, monotonic time read, reuse-until, drawing)."""


def _fingerprint(status: RunStatus) -> tuple[Any, ...]:
    counts = tuple((ident, astuple(c)) for ident, c in sorted(status.nodes.items()))
    return status.status, status.open, status.finished_ms, counts


async def _template(sm: StateManager, graph: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(identifier -> next nodes, identifier -> node name) of the graph's current template
    (empty once deleted): they name the states created but not settled yet."""
    try:
        doc = await sm.get_graph(graph)
    except GraphNotFound:
        return {}, {}
    nodes = doc["nodes"]
    return (
        {str(n["identifier"]): list(n.get("next_nodes") or ()) for n in nodes},
        {str(n["identifier"]): str(n.get("node_name") or "") for n in nodes},
    )


async def dag_view(sm: StateManager, status: RunStatus) -> dict[str, Any]:
    """The run's state DAG (rundag.RunDag as a dict) with `age_ms`: how long ago its states
    were read when the run has changed since (0: it is current)."""
    key = (sm.namespace, status.run_id)
    seen = _fingerprint(status)
    now = _clock()
    hit = _drawn.get(key)
    # Reused unchanged; or, changed, while the run still runs and the last read is fresh.
    if hit is not None and (hit[0] == seen or (now < hit[2] and not status.done)):
        _drawn.move_to_end(key)
        stale = hit[0] != seen  # reused although the run moved on since
        return {**hit[3], "age_ms": int((now - hit[1]) * 1000) if stale else 0}
    graph = await sm.run_graph(status.run_id)
    pending = any(not s.identifier for s in graph.states.values())
    nxt, names = await _template(sm, status.graph) if pending else ({}, {})
    body = asdict(run_dag(graph, nxt, names))
    done = _clock()
    reuse = done + min(REUSE_FACTOR * (done - now), REUSE_MAX_S) if not status.done else done
    _drawn[key] = (seen, done, reuse, body)
    _drawn.move_to_end(key)
    while len(_drawn) > CACHED_RUNS:
        _drawn.popitem(last=False)
    return {**body, "age_ms": 0}


def forget(namespace: str, run_id: str) -> None:
    """Drop a run's drawing (an action changed it: the next poll reads it again)."""
    _drawn.pop((namespace, run_id), None)


async def state_view(sm: StateManager, run_id: str, state_id: str) -> dict[str, Any]:
    """One state's record (StateDetail as a dict). Raises
    RunNotFound (404) for an unknown run or state."""
    detail = await sm.state(run_id, state_id)
    return {"namespace": sm.namespace, "state": asdict(detail)}


async def retry_state(sm: StateManager, run_id: str, state_id: str) -> tuple[int, dict[str, Any]]:
    """Retry one state: 200 with the new state's id, 409 with the reason when refused;
    unknown run / state raise RunNotFound (404)."""
    if not state_id:
        raise InvalidArgument("state id must be a non-empty string")
    await sm.state(run_id, state_id)  # an unknown run or state: RunNotFound, 404
    try:
        new = await sm.retry_state(run_id, state_id)
    except RetryRefused as exc:
        return CONFLICT, {"error": str(exc), "kind": "conflict"}
    forget(sm.namespace, run_id)
    return 200, {"retried": state_id, "state_id": new}


async def retry_failed(sm: StateManager, run_id: str) -> tuple[int, dict[str, Any]]:
    """Retry every failed state of a run: 200 with the new states' ids ([] when nothing
    failed), 409 with the reason when refused; an unknown run raises RunNotFound."""
    try:
        new = await sm.retry_failed(run_id)
    except RetryRefused as exc:
        return CONFLICT, {"error": str(exc), "kind": "conflict"}
    forget(sm.namespace, run_id)
    return 200, {"run_id": run_id, "state_ids": list(new)}
