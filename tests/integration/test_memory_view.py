"""Issue 17.3 (rest): `exosphere status` and the dashboard show Redis's memory used vs its
maxmemory, and the maxmemory-policy (INFO memory)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from exospherehost.broker.keys import Keys
from exospherehost.broker.serverinfo import Memory, human_bytes
from exospherehost.dashboard import create_app
from exospherehost.testing import PrivateServer, ServerInfo
from tests.integration.test_cli import arun
from tests.integration.test_dashboard import _call, dashboard_server

MAXMEMORY = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerInfo]:
    """Its own server: maxmemory is server-wide."""
    with PrivateServer(extra_args=["--maxmemory", str(MAXMEMORY)]) as server:
        assert server.info is not None
        yield server.info


@pytest.fixture
async def limited(limited_server: ServerInfo, namespace: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(limited_server.url)
    try:
        await client.hset(Keys(namespace).nodes(), "SampleNode", "{}")  # a namespace to show
        yield client
    finally:
        await client.aclose()


def test_memory_is_summed_up_for_people() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(MAXMEMORY) == "64.0 MiB" and human_bytes(3 * 1024**3) == "3.0 GiB"
    limited = Memory(policy="noeviction", used=16 * 1024 * 1024, limit=MAXMEMORY)
    assert limited.summary() == (
        "Redis memory: 16.0 MiB used of 64.0 MiB maxmemory (25%), policy noeviction"
    )
    assert limited.as_dict()["used_ratio"] == 0.25
    unlimited = Memory(policy="noeviction", used=2048, limit=0).summary()
    assert "2.0 KiB used (no maxmemory" in unlimited


async def test_status_shows_memory_used_vs_maxmemory(
    limited_server: ServerInfo, limited: Redis, namespace: str
) -> None:
    table = await arun(limited_server.url, namespace, "status", "--interval", "0.1")
    assert table.exit_code == 0, table.output
    last = table.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"Redis memory: [0-9.]+ [KMG]?i?B used of 64\.0 MiB maxmemory \(\d+%\), "
        r"policy noeviction",
        last,
    ), table.stdout
    assert table.stdout.startswith(f"namespace {namespace}")

    as_json = await arun(limited_server.url, namespace, "status", "--json", "--interval", "0.1")
    assert as_json.exit_code == 0, as_json.output
    mem = json.loads(as_json.stdout)["redis_memory"]
    assert mem["maxmemory_bytes"] == MAXMEMORY and mem["policy"] == "noeviction"
    assert 0 < mem["used_bytes"] < MAXMEMORY
    assert mem["used_ratio"] == round(mem["used_bytes"] / MAXMEMORY, 4)

    await limited.config_set("maxmemory-policy", "volatile-lru")
    try:
        policy = await arun(limited_server.url, namespace, "status", "--interval", "0.1")
    finally:
        await limited.config_set("maxmemory-policy", "noeviction")
    assert policy.stdout.strip().endswith("policy volatile-lru"), policy.stdout


async def test_dashboard_overview_returns_memory(
    limited_server: ServerInfo, limited: Redis, namespace: str
) -> None:
    app = create_app(limited_server.url, None, namespace=namespace)
    with dashboard_server(app) as url:
        status, body = await asyncio.to_thread(_call, f"{url}api/ns/{namespace}")
    assert status == 200, body
    mem = body["redis_memory"]
    assert mem["maxmemory_bytes"] == MAXMEMORY and mem["policy"] == "noeviction"
    assert 0 < mem["used_bytes"] < MAXMEMORY
    assert "of 64.0 MiB maxmemory" in mem["summary"]


async def test_status_without_info_permission_says_so_and_shows_the_rest(
    limited_server: ServerInfo, limited: Redis, namespace: str
) -> None:
    user = f"u{namespace}"
    await limited.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-info")
    try:
        url = limited_server.url.replace("redis://", f"redis://{user}:pw@", 1)
        table = await arun(url, namespace, "status", "--interval", "0.1")
    finally:
        await limited.execute_command("ACL", "DELUSER", user)
    assert table.exit_code == 0, table.output
    assert table.stdout.startswith(f"namespace {namespace}")
    assert table.stdout.strip().endswith("Redis memory: unknown (this user may not run INFO)")
