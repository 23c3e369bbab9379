"""The dashboard's HTTP side: a Starlette app serving one static page and a small JSON API.

The page (static/) polls the API about once a second; every endpoint is one function of
views.py over a StateManager, so the dashboard reads Redis only through the SDK.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.exceptions
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from exospherehost import errors
from exospherehost.broker.errors import ConnectionSetupError, CorruptRecord
from exospherehost.broker.keys import check_name
from exospherehost.client.statemanager import StateManager
from exospherehost.config import resolve
from exospherehost.dashboard import operate, runpage, views
from exospherehost.dashboard.deadletters import dead_routes

STATIC = Path(__file__).with_name("static")

CSRF_HEADER = "x-exo-dashboard"
"""Required on POSTs. A custom header makes a cross-site request need a CORS preflight,
which this app never grants, so another web page cannot redrive through a user's browser."""

KNOWN_FOR_S = 10.0
"""A namespace found on Redis (registered nodes or graphs) is not looked up again for this
long; an unknown one is looked up on every request (it may appear any moment)."""

MAX_MANAGERS = 32
"""Namespaces with an open StateManager (each holds a connection pool); least recently
used ones are closed beyond this, as namespaces come from URLs."""


def _json_default(value: object) -> Any:
    # Results and inputs are user data from msgpack: bytes and odd types still render.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, separators=(",", ":")).encode()


class Managers:
    """One StateManager per namespace, created on first use and kept (LRU-bounded)."""

    def __init__(self, redis_url: str | None, key: str | None, only: str | None) -> None:
        self.redis_url, self.key, self.only = redis_url, key, only
        self._open: OrderedDict[str, StateManager] = OrderedDict()
        self._known: dict[str, float] = {}  # namespace -> monotonic time it was found

    async def get(self, namespace: str) -> StateManager:
        if self.only is not None and namespace != self.only:
            raise UnknownNamespace(f"this dashboard shows namespace {self.only!r} only")
        sm = self._open.pop(namespace, None)
        if sm is None:
            sm = StateManager(namespace, self.redis_url, self.key)  # validates the name
        self._open[namespace] = sm
        while len(self._open) > MAX_MANAGERS:
            _, old = self._open.popitem(last=False)
            self._known.pop(old.namespace, None)
            await old.close()
        if time.monotonic() - self._known.get(namespace, -KNOWN_FOR_S) >= KNOWN_FOR_S:
            # A typo'd namespace would otherwise show as an empty but healthy one.
            if not await sm.in_use():
                raise UnknownNamespace(
                    f"no namespace {namespace!r} on this Redis: no Runtime registered a node "
                    "there, and it has no graphs, dead letters or workers"
                )
            self._known[namespace] = time.monotonic()
        return sm

    async def namespaces(self) -> list[str]:
        if self.only is not None:
            return [self.only]
        return await StateManager.namespaces(self.redis_url, self.key)

    async def close(self) -> None:
        while self._open:
            await self._open.popitem()[1].close()


class UnknownNamespace(errors.ExosphereError, KeyError):
    """A valid namespace name with nothing on this Redis."""


ERROR_KINDS = {404: "not_found", 400: "bad_request", 503: "redis_down"}
"""The `kind` of an error reply by status (a 404 for a namespace: unknown_namespace; the
token check's 401: unauthorized)."""


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        raise ValueError(f"query parameter {name} must be an integer") from None
    return min(max(value, 0), high)


def _ms(request: Request, name: str) -> int | None:
    """An optional time in ms since the epoch (empty = not given)."""
    raw = request.query_params.get(name) or None
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"query parameter {name} must be ms since the epoch") from None


def csrf(
    action: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """`action` refused (403) without the CSRF header."""

    async def checked(request: Request) -> Response:
        if request.headers.get(CSRF_HEADER) != "1":
            return Json({"error": f"missing header {CSRF_HEADER}: 1"}, status_code=403)
        return await action(request)

    return checked


def _error(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        # `error` says what is wrong; `kind` lets the page show the right state.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        kind = ERROR_KINDS.get(status, "error")
        if isinstance(exc, UnknownNamespace):
            kind = "unknown_namespace"
        elif kind == "redis_down":
            message = f"Redis unreachable: {message}"
        return Json({"error": str(message), "kind": kind}, status_code=status)

    return handler


def create_app(
    redis_url: str | None = None,
    key: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> ASGIApp:
    """The dashboard as an ASGI app. `redis_url`/`key` default to EXOSPHERE_REDIS_URL /
    EXOSPHERE_API_KEY; with `namespace`, only that namespace is shown (and no SCAN for
    namespaces is needed, e.g. under an ACL that allows only its keys). `token` (default
    EXOSPHERE_DASHBOARD_TOKEN): every request must present it (see dashboard/auth.py)."""
    from exospherehost.dashboard.auth import TokenAuth, token_from

    resolve(redis_url, key)  # fail at start-up, not on the first request, on bad config
    token = token_from(token)
    if namespace is not None:
        check_name("namespace", namespace)
    managers = Managers(redis_url, key, namespace)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def namespaces(request: Request) -> Response:
        return Json({"namespaces": await managers.namespaces(), "pinned": namespace})

    async def overview(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        return Json(await views.overview(sm))

    async def workers(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        return Json(await views.workers(sm))

    async def throughput(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        minutes = _int(request, "minutes", 15, 20)
        return Json(await views.throughput(sm, max(minutes, 1)))

    async def graph(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        offset = _int(request, "offset", 0, 1_000_000)
        count = _int(request, "count", 50, 500)
        return Json(await views.graph_runs(sm, request.path_params["graph"], offset, count))

    async def run(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        return Json(await views.run_detail(sm, request.path_params["run"]))

    async def runs(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        q = request.query_params
        body = await operate.runs_page(
            sm,
            q.get("graph") or None,
            q.get("status") or None,
            _ms(request, "since"),
            _ms(request, "until"),
            _int(request, "offset", 0, 10_000_000),
            max(_int(request, "count", 50, 500), 1),
        )
        return Json(body)

    async def cancel(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        code, body = await operate.cancel_run(sm, request.path_params["run"])
        return Json(body, status_code=code)

    async def state(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        p = request.path_params
        return Json(await runpage.state_view(sm, p["run"], p["state"]))

    async def retry_state(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        p = request.path_params
        code, body = await runpage.retry_state(sm, p["run"], p["state"])
        return Json(body, status_code=code)

    async def retry_failed(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        code, body = await runpage.retry_failed(sm, request.path_params["run"])
        return Json(body, status_code=code)

    async def delete_graph(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        force = request.query_params.get("force", "") in ("1", "true")
        code, body = await operate.delete_graph(sm, request.path_params["graph"], force)
        return Json(body, status_code=code)

    async def nodes(request: Request) -> Response:
        sm = await managers.get(request.path_params["ns"])
        return Json(await operate.nodes(sm))

    async def manager(request: Request) -> StateManager:
        return await managers.get(request.path_params["ns"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await managers.close()

    api = "/api/ns/{ns}"
    routes = [
        Route("/", index),
        Route("/api/namespaces", namespaces),
        Route(api, overview),
        Route(api + "/workers", workers),
        Route(api + "/throughput", throughput),
        Route(api + "/graphs/{graph}", graph),
        Route(api + "/graphs/{graph}/delete", csrf(delete_graph), methods=["POST"]),
        Route(api + "/runs", runs),
        Route(api + "/runs/{run}", run),
        Route(api + "/runs/{run}/cancel", csrf(cancel), methods=["POST"]),
        Route(api + "/runs/{run}/retry-failed", csrf(retry_failed), methods=["POST"]),
        Route(api + "/runs/{run}/states/{state}", state),
        Route(api + "/runs/{run}/states/{state}/retry", csrf(retry_state), methods=["POST"]),
        Route(api + "/nodes", nodes),
        *dead_routes(api, manager, Json, csrf, lambda r: _int(r, "count", 50, 1000)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    handlers = {
        KeyError: _error(404),  # unknown graph or run (RunNotFound is a KeyError)
        ValueError: _error(400),  # invalid names (KeyNameError) and query parameters
        CorruptRecord: _error(500),  # what Redis holds is wrong, not the request
        # An ACL user that may not read the namespace: the reason names the grant.
        redis.exceptions.NoPermissionError: _error(403),
        ConnectionSetupError: _error(503),  # credentials or TLS refused
        redis.exceptions.ConnectionError: _error(503),
        redis.exceptions.TimeoutError: _error(503),
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return app if token is None else TokenAuth(app, token)
