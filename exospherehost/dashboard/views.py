"""What each dashboard page shows, composed from StateManager calls only (never raw Redis
commands), as JSON-ready dicts. One function per API endpoint; app.py does the HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

from exospherehost.broker.codec import MalformedEntry, decode, printable_fields
from exospherehost.broker.runs import TRUNCATED
from exospherehost.broker.serverinfo import memory_view
from exospherehost.client.deadletters import DeadLetter, DeadLetterCount
from exospherehost.client.statemanager import StateManager
from exospherehost.dashboard.layout import layout
from exospherehost.dashboard.operate import template_details
from exospherehost.dashboard.runpage import dag_view

HISTORY_CAP = 500
"""Newest history records shown on a run page (the SDK reads them whole)."""
RESULTS_CAP = 100
RESULT_CHARS = 2000
"""Newest leaf results shown on a run page, each up to this many characters of JSON (a
longer one as the state records' truncation marker): 10,000 leaves of 100 KB each must
not make a page of a gigabyte; `sm.results` has them whole."""

_layouts: dict[tuple[str, str, int, int], dict[str, Any]] = {}
"""Layouts by (namespace, graph, version, updated_ms): versions are immutable, so each is
laid out once (updated_ms tells apart a version number reused after a Redis wipe)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


async def graph_view(sm: StateManager, name: str) -> dict[str, Any]:
    """A graph's current version with its DAG geometry."""
    doc = await sm.get_graph(name)
    key = (sm.namespace, name, int(doc["version"]), int(doc.get("updated_ms") or 0))
    if key not in _layouts:
        if len(_layouts) > 1000:  # graphs are upserted rarely; this only bounds a leak
            _layouts.clear()
        _layouts[key] = asdict(layout(doc["nodes"]))
    return {
        "name": name,
        "version": doc["version"],
        "validation_status": doc.get("validation_status"),
        "validation_errors": doc.get("validation_errors") or [],
        "updated_ms": doc.get("updated_ms"),
        "layout": _layouts[key],
        "template": template_details(doc),  # retry, store, secret names, triggers
    }


NOT_SERVED = "no worker serves this"


def with_notes(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Node figures with a `note` each (None: nothing to say): a stream of a node no
    Runtime registered, or with states waiting and no live worker, is served by nobody."""
    for s in stats.values():
        waiting = s["length"] + s["delayed"] > 0
        if not s.get("registered", True):
            s["note"] = f"{NOT_SERVED} (node not registered)"
        elif s["consumers"] == 0 and waiting:
            s["note"] = f"{NOT_SERVED} (no live worker)"
        else:
            s["note"] = None
    return stats


async def overview(sm: StateManager) -> dict[str, Any]:
    """A namespace: its graphs drawn, per-node queue figures, the dead-letter count, and
    Redis's memory (used vs maxmemory, the policy: INFO memory)."""
    names = await sm.graph_names()
    graphs, stats, dead, mem = await asyncio.gather(
        asyncio.gather(*(graph_view(sm, n) for n in names)),
        sm.node_stats(),
        sm.dead_letter_count(),  # XLEN: exact and O(1)
        memory_view(sm.broker.client),
    )
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "graphs": list(graphs),
        "nodes": with_notes(stats),
        "dead": {"count": dead.count, "capped": False},
        "redis_memory": mem,  # server-wide: used vs maxmemory, the policy
    }


async def graph_runs(sm: StateManager, name: str, offset: int, count: int) -> dict[str, Any]:
    """One graph with its queue figures and its newest runs."""
    graph, stats, runs = await asyncio.gather(
        graph_view(sm, name), sm.node_stats(), sm.list_runs(name, offset, count)
    )
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "graph": graph,
        "nodes": with_notes(stats),
        "runs": [asdict(r) for r in runs],
    }


async def run_detail(sm: StateManager, run_id: str) -> dict[str, Any]:
    """A run's status, the DAG of its states, every settled outcome of its states, and
    its leaf results. Raises RunNotFound (a KeyError) for an unknown or expired run."""
    status = await sm.status(run_id)
    history, results, dag = await asyncio.gather(
        sm.run_history(run_id), sm.results(run_id), dag_view(sm, status)
    )
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "status": asdict(status),
        "dag": dag,
        "history": [asdict(h) for h in history[-HISTORY_CAP:]],
        "history_total": len(history),
        "results": [_shortened(r) for r in results[-RESULTS_CAP:]],
        "results_total": len(results),
    }


def _shortened(result: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(result.get("outputs"), default=str)
    if len(text) <= RESULT_CHARS:
        return result
    marker = {TRUNCATED: len(text.encode()), "preview": text[:RESULT_CHARS]}
    return {**result, "outputs": marker}


def _dead_inputs(dead: DeadLetter) -> dict[str, Any]:
    """The dead state's inputs, decoded the way a worker would; a malformed entry (the
    usual reason it is dead) is shown as its readable raw fields instead."""
    try:
        return decode(b"0-0", dead.original).inputs
    except MalformedEntry:
        return printable_fields(dead.original, limit=1024)


def dead_view(dead: DeadLetter) -> dict[str, Any]:
    row = asdict(dead)
    del row["original"]  # bytes; shown decoded as `inputs`
    row["inputs"] = _dead_inputs(dead)
    return row


MATCHING_REUSE_S = 15.0
"""A filtered count (a scan: ~2 s per 100k letters) is reused this long while the dead
stream's length stays the same; the page polls every second."""

_matching_cache: dict[tuple[str, tuple[Any, ...]], tuple[float, int, DeadLetterCount]] = {}


async def _matching(
    sm: StateManager, flt: dict[str, Any], total: DeadLetterCount
) -> DeadLetterCount:
    key = (sm.namespace, tuple(sorted(flt.items())))
    now = time.monotonic()
    hit = _matching_cache.get(key)
    if hit is not None and hit[1] == total.count and now - hit[0] < MATCHING_REUSE_S:
        return hit[2]
    counted = await sm.dead_letter_count(**flt)
    if len(_matching_cache) > 256:  # filters come from URLs: only bound a leak
        _matching_cache.clear()
    _matching_cache[key] = (now, total.count, counted)
    return counted


async def dead_page(
    sm: StateManager, count: int, before: str | None, flt: dict[str, Any]
) -> dict[str, Any]:
    """A page of dead letters, newest first, older than `before` (a cursor), matching the
    filter `flt` (dead_letter_page's keywords); with the total (exact: XLEN) and, when
    filtered, how many match (exact up to the SDK's scan limit)."""
    page, total = await asyncio.gather(
        sm.dead_letter_page(count, before, **flt), sm.dead_letter_count()
    )
    filtered = any(v is not None for v in flt.values())
    matching = await _matching(sm, flt, total) if filtered else total
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "dead": [dead_view(d) for d in page.letters],
        "cursor": page.cursor,
        "total": total.count,
        "matching": matching.count,
        "matching_exact": matching.exact,
        "capped": page.cursor is not None,  # more (older) letters follow
    }


async def workers(sm: StateManager) -> dict[str, Any]:
    """Every worker of the namespace (serving first) and the visibility timeout they use."""
    found = await sm.workers()
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "workers": [asdict(w) for w in found],
        "serving": sum(w.state == "serving" for w in found),
    }


async def throughput(sm: StateManager, minutes: int) -> dict[str, Any]:
    """Done and failed states per node per bucket over the last `minutes`."""
    t = await sm.throughput(minutes)
    return {
        "namespace": sm.namespace,
        "time_ms": _now_ms(),
        "start_ms": t.start_ms,
        "bucket_s": t.bucket_s,
        "nodes": t.nodes,
    }
