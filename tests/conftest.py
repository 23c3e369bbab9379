"""Shared fixtures: one private redis-server per test session, a namespace per test.

The session server is a :class:`exospherehost.testing.server.PrivateServer` on a free 127.0.0.1 port
in its own temp dir; no fixture ever connects to a server it did not start (so never
to one on 6379) and none empties a database. Tests isolate themselves by keeping every
key under their ``namespace``.

A test module marked ``cluster_too`` runs twice: against the session server and against a
private 3-master Redis Cluster (``[cluster]`` in the test id), through the URL of master 0
with the namespace on master 1 or 2, so every call is routed. ``single_only(reason)`` on
a test of such a module skips its cluster run, saying why. ``--backends cluster`` (or
``single``) runs those modules on one backend only.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
from redis.asyncio import Redis, RedisCluster

from exospherehost import StateManager
from exospherehost.testing.cluster import PrivateCluster, namespace_on
from exospherehost.testing.server import PrivateServer, ServerInfo

CLUSTER_MASTERS = 3
BACKENDS = ("single", "cluster")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=",".join(BACKENDS),
        help="the servers cluster_too modules run on: single, cluster or single,cluster (default)",
    )


def _backends(config: pytest.Config) -> list[str]:
    chosen = [b.strip() for b in str(config.getoption("backends")).split(",") if b.strip()]
    if not chosen or set(chosen) - set(BACKENDS):
        raise pytest.UsageError(
            f"--backends {config.getoption('backends')!r}: expected a comma-separated list "
            f"of {', '.join(BACKENDS)}"
        )
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules marked cluster_too: every test using the server (`backend` is in the
    closure of `redis_url`, `namespace`, `sm` and `redis`) once per backend."""
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("cluster_too") is None:
        return
    chosen = _backends(metafunc.config)
    cluster: object = "cluster"
    single_only = metafunc.definition.get_closest_marker("single_only")
    if single_only is not None:
        if not single_only.args or not str(single_only.args[0]).strip():
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: single_only needs a reason (why it "
                f"cannot run on a Redis Cluster)"
            )
        reason = f"not on a Redis Cluster: {single_only.args[0]}"
        cluster = pytest.param("cluster", marks=pytest.mark.skip(reason=reason))
    params = {"single": "single", "cluster": cluster}
    metafunc.parametrize("backend", [params[b] for b in chosen], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The server of this test: "single" (the session server) or "cluster" (the
    session's private cluster)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivateCluster]:
    """A private 3-master Redis Cluster for this session, started on first use."""
    with PrivateCluster(masters=CLUSTER_MASTERS) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerInfo]:
    """A real redis-server started for this test session and stopped at its end."""
    server = PrivateServer()
    info = server.start()
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture
def redis_url(backend: str, request: pytest.FixtureRequest) -> str:
    """URL of the session's private server (on the cluster backend: of master 0)."""
    if backend == "cluster":
        running: PrivateCluster = request.getfixturevalue("cluster")
        return running.url
    server: ServerInfo = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def namespace(backend: str, request: pytest.FixtureRequest) -> str:
    """A namespace unique to this test; all of the test's keys live under it. On the
    cluster backend its slot is on master 1 or 2 (by the test's id), not on master 0
    whose URL the test is given."""
    if backend == "cluster":
        master = 1 + zlib.crc32(request.node.nodeid.encode()) % (CLUSTER_MASTERS - 1)
        return namespace_on(master, CLUSTER_MASTERS, prefix="t")
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
async def redis(redis_url: str, backend: str) -> AsyncIterator[Redis | RedisCluster]:
    """An asyncio client (bytes replies) to the session server, closed after the test
    (on the cluster backend a RedisCluster: the test's keys are on another master)."""
    client: Redis | RedisCluster = (
        RedisCluster.from_url(redis_url, decode_responses=False)
        if backend == "cluster"
        else Redis.from_url(redis_url, decode_responses=False)
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> AsyncIterator[StateManager]:
    """A StateManager of the test's namespace on the session server, closed after the test."""
    manager = StateManager(namespace, redis_url=redis_url)
    try:
        yield manager
    finally:
        await manager.close()
