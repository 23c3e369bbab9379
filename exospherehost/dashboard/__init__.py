"""A web dashboard over a Redis that exospherehost uses: namespaces, graphs drawn as DAGs
with live queue figures, runs and their states, dead letters with redrive.

    python -m exospherehost.dashboard --port 8080        # or, from code:
    exospherehost.dashboard.serve("127.0.0.1", 8080, redis_url=None, key=None)

Needs the `dashboard` extra (`pip install "exospherehost[dashboard]"`): Starlette and
uvicorn are kept out of the core dependencies, which every worker installs.
It binds to 127.0.0.1 by default; beyond it, it refuses to start without a token
($EXOSPHERE_DASHBOARD_TOKEN or --token, see dashboard/auth.py) unless --insecure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["create_app", "serve"]

_MISSING = "the dashboard needs {!r}: pip install 'exospherehost[dashboard]'"


def create_app(
    redis_url: str | None = None,
    key: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> ASGIApp:
    """The dashboard as an ASGI app (for tests, or to mount in another ASGI server);
    `token` (default $EXOSPHERE_DASHBOARD_TOKEN): required on every request."""
    # Imported on use, so `import exospherehost.dashboard` works without the extra and a
    # missing extra is reported by name.
    try:
        from exospherehost.dashboard.app import create_app as build
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(_MISSING.format(exc.name)) from exc
    return build(redis_url, key, namespace, token)


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    redis_url: str | None = None,
    key: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    insecure: bool = False,
) -> None:
    """Serve the dashboard until interrupted (blocking; SIGINT/SIGTERM stop it). Beyond a
    loopback address it needs a token (`token` or $EXOSPHERE_DASHBOARD_TOKEN) unless
    `insecure` (ConfigError otherwise)."""
    from exospherehost.dashboard.auth import check_bind, token_from

    token = token_from(token)
    check_bind(host, token, insecure)
    app = create_app(redis_url, key, namespace, token)
    try:
        import uvicorn
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(_MISSING.format(exc.name)) from exc

    # No access log: the page polls every second, which would drown everything else.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
