"""Access control of the dashboard: with a token (EXOSPHERE_DASHBOARD_TOKEN or --token),
every request must carry it, one of three ways:

- `Authorization: Bearer TOKEN` (scripts, curl);
- HTTP basic auth with TOKEN as the password, any user name (a browser asks for it: a 401
  carries `WWW-Authenticate: Basic`);
- the cookie a visit to `/?token=TOKEN` sets (HttpOnly, SameSite=Strict), for a link.

Without a token the dashboard may only bind to a loopback address, unless told --insecure
(e.g. behind an authenticating proxy). POSTs also need the CSRF header (app.CSRF_HEADER).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import os
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from exospherehost.errors import ConfigError

ENV_TOKEN = "EXOSPHERE_DASHBOARD_TOKEN"
COOKIE = "exo_dashboard_token"
REALM = "exospherehost dashboard"
MIN_TOKEN = 16
"""Shortest token accepted: the dashboard can redrive and purge dead letters."""


def token_from(token: str | None) -> str | None:
    """`token`, else EXOSPHERE_DASHBOARD_TOKEN, else None; a short one is refused."""
    value = token if token is not None else os.environ.get(ENV_TOKEN) or None
    if value is not None and len(value) < MIN_TOKEN:
        source = "token" if token is not None else ENV_TOKEN
        raise ConfigError(
            f"{source} is too short ({len(value)} characters): use at least {MIN_TOKEN}, "
            'e.g. python -c "import secrets; print(secrets.token_urlsafe(24))"'
        )
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve beyond loopback without a token, unless `insecure`."""
    if token is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"the dashboard binds to {host}, beyond this machine, and can redrive and purge "
            f"dead letters: set {ENV_TOKEN} (or --token), or pass --insecure if a proxy "
            "in front of it authenticates"
        )


def _presented(scope: Scope) -> list[str]:
    """Every token the request presents (bearer, basic password, cookie)."""
    found = []
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(value.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            found.append(base64.b64decode(value.strip()).decode().partition(":")[2])
    cookie: SimpleCookie = SimpleCookie()
    with contextlib.suppress(Exception):  # a malformed Cookie header: no cookie
        cookie.load(headers.get("cookie", ""))
    if COOKIE in cookie:
        found.append(cookie[COOKIE].value)
    return found


class TokenAuth:
    """ASGI middleware: 401 unless the request presents `token`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    def _ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if any(self._ok(t) for t in _presented(scope)):
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = query.get("token", [""])[0]
        if scope.get("path") == "/" and offered and self._ok(offered):
            # A link with the token: keep it in a cookie and drop it from the address bar.
            cookie = f"{COOKIE}={offered}; Path=/; HttpOnly; SameSite=Strict"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps(
            {
                "error": f"this dashboard needs its token ({ENV_TOKEN}): basic auth with the "
                "token as password, 'Authorization: Bearer TOKEN', or open /?token=TOKEN",
                "kind": "unauthorized",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
