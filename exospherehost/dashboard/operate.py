"""The dashboard's operator views (issue 12.8), over StateManager calls only: the runs of a
whole namespace (filters, exact total, paging), cancelling a run, deleting a graph, the
registered nodes with their schemas, and a graph template's settings.

Kept apart from views.py (what each page shows of the engine's state) because these are
the actions and reference pages; app.py does the HTTP. Each action returns
`(http status, body)`: 200, or 409 with `error` and `kind: "conflict"` when the action
cannot apply to what it names (a finished run, a graph with runs in flight). Unknown runs
and graphs raise RunNotFound / GraphNotFound (KeyError: 404 in app.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from exospherehost.broker.keys import check_name
from exospherehost.client.statemanager import StateManager
from exospherehost.errors import CronExpressionError, InvalidArgument
from exospherehost.graph.cron import next_fire
from exospherehost.models import RetryPolicyModel

RUNNING = "RUNNING"
CONFLICT = 409


def _when(ms: int | None) -> datetime | None:
    """ms since the epoch as the aware datetime list_runs takes (built from whole seconds
    and a timedelta, so it converts back to exactly `ms`: the bounds are inclusive)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


REUSE_FACTOR = 10
"""A status-filtered listing reads the status of every run in its time range (list_runs),
~0.25 s per 10,000 runs; the page polls every second. Its answer is reused for 10 times
as long as it took to compute (so such listings keep Redis busy at most ~10% of the
time), at most REUSE_MAX_S; an unfiltered listing is cheap and never reused."""
REUSE_MAX_S = 15.0

_clock = time.monotonic  # (a test moves it)

_reused: dict[tuple[Any, ...], tuple[float, float, dict[str, Any]]] = {}
"""Status-filtered listings by (namespace, filters, page): (monotonic time read, monotonic
expiry, body)."""


async def runs_page(
    sm: StateManager,
    graph: str | None,
    status: str | None,
    since_ms: int | None,
    until_ms: int | None,
    offset: int,
    count: int,
) -> dict[str, Any]:
    """A page of the namespace's runs (or one graph's), newest first, with the exact
    number that match (among the newest 10,000 runs of each graph: the run index keeps
    that many); bad filters raise InvalidArgument (400) naming the parameter.
    `age_ms`: how long ago it was read (a status-filtered answer may be reused, see
    REUSE_FACTOR)."""
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise InvalidArgument(f"since ({since_ms}) is after until ({until_ms})")
    key = (sm.namespace, graph, status, since_ms, until_ms, offset, count)
    now = _clock()
    if status is not None and key in _reused and _reused[key][1] > now:
        read, _, body = _reused[key]
        return {**body, "age_ms": int((now - read) * 1000)}
    page = await sm.list_runs(
        graph, offset, count, status=status, since=_when(since_ms), until=_when(until_ms)
    )
    body = {
        "namespace": sm.namespace,
        "graphs": await sm.graph_names(),  # for the filter's choices
        "filters": {"graph": graph, "status": status, "since": since_ms, "until": until_ms},
        "offset": offset,
        "count": count,
        "total": page.total,
        "runs": [asdict(r) for r in page],
        "age_ms": 0,
    }
    if status is not None:
        done = _clock()
        for stale in [k for k, (_, expiry, _) in _reused.items() if expiry <= done]:
            del _reused[stale]
        if len(_reused) >= 256:  # many filters at once: drop the oldest
            del _reused[next(iter(_reused))]
        _reused[key] = (done, done + min(REUSE_FACTOR * (done - now), REUSE_MAX_S), body)
    return body


async def cancel_run(sm: StateManager, run_id: str) -> tuple[int, dict[str, Any]]:
    """Cancel a RUNNING run; a finished one is a conflict (the SDK leaves it as it is)."""
    before = await sm.status(run_id)  # RunNotFound: 404
    if before.done:
        return CONFLICT, {
            "error": f"run {run_id} already finished as {before.status}: nothing to cancel",
            "kind": "conflict",
            "status": asdict(before),
        }
    after = await sm.cancel(run_id)
    if after.status != "CANCELLED":  # it finished between the two calls
        return CONFLICT, {
            "error": f"run {run_id} finished as {after.status} before the cancel reached it",
            "kind": "conflict",
            "status": asdict(after),
        }
    return 200, {"cancelled": run_id, "status": asdict(after)}


async def delete_graph(sm: StateManager, name: str, force: bool) -> tuple[int, dict[str, Any]]:
    """Delete a graph template; with runs in flight and no `force`, a conflict saying how
    many and what to do."""
    check_name("graph name", name)  # a bad name is a 400, not the conflict below
    if not force:
        running = (await sm.list_runs(name, count=1, status=RUNNING)).total
        if running:
            return CONFLICT, {
                "error": f"graph {name} has {running} run(s) in flight: cancel them or wait "
                "for them, or tick 'force' to delete it now and let them finish on the "
                "version they started with",
                "kind": "conflict",
                "running": running,
            }
    try:
        left = await sm.delete_graph(name, force=force)  # GraphNotFound: 404
    except InvalidArgument as exc:  # a run started since the check above
        return CONFLICT, {"error": str(exc), "kind": "conflict"}
    return 200, {"deleted": name, "running": left}


# ---- node schemas -------------------------------------------------------------------------
_JSON_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "null": "None",
    "object": "dict",
    "array": "list",
}


def type_name(schema: dict[str, Any]) -> str:
    """A JSON schema (as pydantic writes it) as the Python-ish type a node author wrote:
    `str`, `list[int]`, `dict[str, float]`, `str | None`, a model's name for a $ref."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " | ".join(type_name(s) for s in schema[union])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_name(schema["allOf"][0])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_JSON_TYPES.get(str(k), str(k)) for k in kind)
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict) and items:
            return f"list[{type_name(items)}]"
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return f"tuple[{', '.join(type_name(s) for s in prefix)}]"
        return "list"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"dict[str, {type_name(extra)}]"
        return "dict"
    if kind is None:
        return "any"
    return _JSON_TYPES.get(str(kind), str(kind))


def schema_fields(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A model's fields in declaration order: name, type, required, default (when it
    has one; `has_default` tells a default of None from none), description."""
    if not schema:
        return []
    required = set(schema.get("required") or ())
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        field: dict[str, Any] = {
            "name": name,
            "type": type_name(prop),
            "required": name in required,
            "has_default": "default" in prop,
            "default": prop.get("default"),
        }
        if prop.get("description"):
            field["description"] = prop["description"]
        out.append(field)
    return out


def node_view(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A registered node for the nodes page; `models`: the nested models its fields name
    (pydantic's $defs), with their fields."""
    models: dict[str, list[dict[str, Any]]] = {}
    for key in ("inputs_schema", "outputs_schema"):
        for model, schema in ((doc.get(key) or {}).get("$defs") or {}).items():
            if isinstance(schema, dict) and "properties" in schema:
                models.setdefault(model, schema_fields(schema))
    return {
        "name": name,
        "models": models,
        "inputs": schema_fields(doc.get("inputs_schema")),
        "outputs": schema_fields(doc.get("outputs_schema")),
        "secrets": list(doc.get("secrets") or []),
        "returns": doc.get("returns"),
        "runtime": doc.get("runtime"),
        "registered_ms": doc.get("registered_ms"),
    }


async def nodes(sm: StateManager) -> dict[str, Any]:
    """Every registered node of the namespace with its input / output fields, secret
    names, what execute returns, the Runtime that registered it and when."""
    found = await sm.nodes()
    return {
        "namespace": sm.namespace,
        "nodes": [node_view(name, doc) for name, doc in found.items()],
    }


# ---- template details ---------------------------------------------------------------------
def _trigger_view(trigger: dict[str, Any], now_s: int) -> dict[str, Any]:
    view = dict(trigger)
    try:
        view["next_ms"] = next_fire(str(trigger.get("expression")), now_s) * 1000
    except (CronExpressionError, ValueError, KeyError):  # stored graphs were validated
        view["next_ms"] = None
    return view


def template_details(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored graph's settings for its page: retry policy (the default one when it set
    none), store config (required keys, defaults), secret names (the values are never
    read), cron triggers with their next fire time."""
    retry = doc.get("retry_policy")
    store = doc.get("store_config") or {}
    return {
        "retry_policy": retry or RetryPolicyModel().model_dump(mode="json"),
        "retry_default": retry is None,
        "store_required": list(store.get("required_keys") or []),
        "store_defaults": dict(store.get("default_values") or {}),
        "secret_names": list(doc.get("secret_names") or []),
        "triggers": [_trigger_view(t, int(time.time())) for t in doc.get("triggers") or ()],
    }
