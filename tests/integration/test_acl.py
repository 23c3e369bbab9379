"""Issue 14: a per-namespace ACL user. The minimal rule of the README
(exospherehost.broker.connection.acl_rule) runs its namespace fully (a Runtime and a
StateManager through a graph); another namespace is refused with an error naming the user,
the namespace and the grant; views spanning namespaces (namespaces(), `exosphere status`
without -n) skip what the user cannot read; the dashboard answers 403 with the reason; a
wrong password fails fast instead of being retried as an outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse
from uuid import uuid4

import pytest
import redis as redis_py
from click.testing import CliRunner
from redis.exceptions import NoPermissionError

from exospherehost import Runtime, StateManager
from exospherehost.broker.connection import acl_rule
from exospherehost.cli import cli
from exospherehost.errors import ConnectionSetupError, PermissionRefused
from exospherehost.testing.server import ServerInfo
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import running, squares_graph

pytestmark = pytest.mark.redis


def _url(info: ServerInfo, user: str, password: str) -> str:
    parsed = urlparse(info.url)
    return f"redis://{user}:{password}@{parsed.hostname}:{parsed.port}/0"


@pytest.fixture
def acl_user(redis_server: ServerInfo, namespace: str) -> Iterator[tuple[str, str]]:
    """A user on the session's private server allowed `namespace` only (plus SCAN, for
    namespace listing), removed after the test."""
    user, password = f"u{uuid4().hex[:8]}", uuid4().hex
    admin = redis_py.Redis.from_url(redis_server.url)
    try:
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, "reset", "on", f">{password}",
            *acl_rule(namespace).split(), "+scan",
        )  # fmt: skip
        yield user, password
    finally:
        admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        admin.close()


async def test_the_minimal_rule_runs_its_namespace_and_refuses_another_by_name(
    redis_server: ServerInfo, namespace: str, acl_user: tuple[str, str]
) -> None:
    user, password = acl_user
    url = _url(redis_server, user, password)
    rt = Runtime(namespace=namespace, name="acl", nodes=[Split, Square, Label], redis_url=url)
    async with running(rt), StateManager(namespace, redis_url=url) as sm:
        await sm.upsert_graph("g", squares_graph(namespace, items=3), secrets={})
        run = await sm.trigger("g", inputs={"base": 1})
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
        assert len(await sm.results(run)) == 3
        assert len(await sm.run_history(run)) == 7
    other = f"{namespace}x"
    async with StateManager(other, redis_url=url) as sm:
        with pytest.raises(PermissionRefused) as refused:
            await sm.graph_names()
    text = str(refused.value)
    assert isinstance(refused.value, NoPermissionError)  # `except NoPermissionError` holds
    assert repr(user) in text and repr(other) in text, text
    assert f"ACL SETUSER {user} ~exo:{{{other}}}:*" in text, text


async def test_views_over_namespaces_skip_the_ones_the_user_cannot_read(
    redis_server: ServerInfo, redis_url: str, namespace: str, acl_user: tuple[str, str]
) -> None:
    user, password = acl_user
    url = _url(redis_server, user, password)
    other = f"{namespace}x"
    for ns in (namespace, other):  # both registered by the admin (default user)
        async with StateManager(ns, redis_url=redis_url) as admin:
            await admin.broker.registry.register({"Square": "{}"})
    seen = await StateManager.namespaces(url)
    assert namespace in seen and other not in seen, seen
    assert {namespace, other} <= set(await StateManager.namespaces(redis_url))

    env = {"EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": None, "EXOSPHERE_API_KEY": None}
    args = ["status", "--interval", "0.1", "--json"]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.strip().splitlines()[-1])["namespaces"]
    assert namespace in shown and other not in shown, shown
    pinned = await asyncio.to_thread(CliRunner().invoke, cli, ["-n", other, *args], env=env)
    assert pinned.exit_code == 1 and repr(other) in pinned.stderr, pinned.output

    from exospherehost.dashboard import create_app

    app = create_app(redis_url=url)
    status, body = await _asgi_get(app, f"/api/ns/{other}")
    assert status == 403, body
    assert repr(user) in body["error"] and repr(other) in body["error"], body
    status, body = await _asgi_get(app, "/api/namespaces")
    assert status == 200 and namespace in body["namespaces"] and other not in body["namespaces"]
    status, _ = await _asgi_get(app, f"/api/ns/{namespace}")
    assert status == 200


async def test_a_wrong_password_fails_fast_instead_of_being_retried(
    redis_server: ServerInfo, namespace: str, acl_user: tuple[str, str]
) -> None:
    user, _ = acl_user
    url = _url(redis_server, user, "wrong")
    async with StateManager(namespace, redis_url=url) as sm:
        with pytest.raises(ConnectionSetupError, match="refused the credentials") as info:
            await sm.graph_names()
    assert repr(user) in str(info.value)
    rt = Runtime(namespace=namespace, name="acl", nodes=[Square], redis_url=url)
    task = rt.start()
    assert task is not None
    # Before issue 14 this retried forever ("Redis unavailable ... retrying").
    with pytest.raises(ConnectionSetupError, match="refused the credentials"):
        await asyncio.wait_for(task, 10)


async def _asgi_get(app: Any, path: str) -> tuple[int, Any]:
    """One GET through the ASGI app (no HTTP server, no client library)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


async def test_the_operator_rule_of_the_readme_reads_every_namespace(
    redis_server: ServerInfo, redis_url: str, namespace: str
) -> None:
    user, password = f"op{uuid4().hex[:8]}", uuid4().hex
    admin = redis_py.Redis.from_url(redis_server.url)
    rule = ["~exo:*", "-@all", "+@read", "+info"]  # README, Configuration: ACL
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rule)  # type: ignore[no-untyped-call]
    try:
        others = [namespace, f"{namespace}x"]
        for ns in others:
            async with StateManager(ns, redis_url=redis_url) as sm:
                await sm.broker.registry.register({"Square": "{}"})
        url = _url(redis_server, user, password)
        assert set(others) <= set(await StateManager.namespaces(url))
        env = {"EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": None, "EXOSPHERE_API_KEY": None}
        args = ["status", "--interval", "0.1", "--json"]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout.strip().splitlines()[-1])["namespaces"]
        assert set(others) <= set(shown), shown
        assert all("Square" in shown[ns]["nodes"] for ns in others), shown
    finally:
        admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        admin.close()
