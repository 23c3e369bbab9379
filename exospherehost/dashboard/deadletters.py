"""The dashboard's dead-letter API: pages newest first (cursor), filters, the exact count,
redrive (one, all, filtered), delete one and purge (filtered). Kept apart from app.py:
`dead_routes` gives app.py its routes; actions need the CSRF header app.py checks.

    GET  {api}/dead?count=&before=&node=&grep=&since=&until=   a page (since/until: epoch ms)
    POST {api}/dead/redrive-all?<filters>      redrive all matching (all without filters)
    POST {api}/dead/purge?<filters>            delete all matching (all without filters)
    POST {api}/dead/{id}/redrive               one
    POST {api}/dead/{id}/delete                one
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exospherehost.broker.deadletters import DeadFilter
from exospherehost.client.deadletters import dead_filter
from exospherehost.client.statemanager import StateManager
from exospherehost.dashboard import views

Handler = Callable[[Request], Awaitable[Response]]


def _ms(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be epoch milliseconds") from None


def filter_of(request: Request) -> DeadFilter:
    """The dead-letter filter of a request's query (node, grep, since, until)."""
    q = request.query_params
    return dead_filter(
        q.get("node") or None, q.get("grep") or None, _ms(request, "since"), _ms(request, "until")
    )


def _kwargs(flt: DeadFilter) -> dict[str, Any]:
    return {"node": flt.node, "grep": flt.grep, "since": flt.since_ms, "until": flt.until_ms}


def dead_routes(
    api: str,
    manager: Callable[[Request], Awaitable[StateManager]],
    json: Callable[[Any], Response],
    guard: Callable[[Handler], Handler],
    count: Callable[[Request], int],
) -> list[Route]:
    """The routes under `api` (e.g. "/api/ns/{ns}"). `manager`: the request's
    StateManager; `json`: a JSON response; `guard`: wraps an action with the CSRF check;
    `count`: the page size from the query."""

    async def page(request: Request) -> Response:
        sm = await manager(request)
        before = request.query_params.get("before") or None
        return json(await views.dead_page(sm, count(request), before, _kwargs(filter_of(request))))

    async def redrive_all(request: Request) -> Response:
        sm = await manager(request)
        report = await sm.redrive_all(**_kwargs(filter_of(request)))
        # `skipped` (dead id -> why) only when some letter could not be redriven.
        extra = {"skipped": report.skipped} if report.skipped else {}
        return json({"redriven": report.redriven, **extra})

    async def redrive_one(request: Request) -> Response:
        sm = await manager(request)
        return json({"redriven": int(await sm.redrive(request.path_params["dead"]))})

    async def purge(request: Request) -> Response:
        sm = await manager(request)
        return json({"deleted": await sm.purge_dead_letters(**_kwargs(filter_of(request)))})

    async def delete_one(request: Request) -> Response:
        sm = await manager(request)
        return json({"deleted": await sm.delete_dead_letters([request.path_params["dead"]])})

    return [
        Route(api + "/dead", page),
        Route(api + "/dead/redrive-all", guard(redrive_all), methods=["POST"]),
        Route(api + "/dead/purge", guard(purge), methods=["POST"]),
        Route(api + "/dead/{dead}/redrive", guard(redrive_one), methods=["POST"]),
        Route(api + "/dead/{dead}/delete", guard(delete_one), methods=["POST"]),
    ]
