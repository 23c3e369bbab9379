"""Redis losing a namespace's data under running Runtimes (a restart without persistence,
an operator emptying the database): graph versions handed out afterwards never mean a template a
Runtime cached before, and the Runtimes write their node registry again.

Data loss is simulated by deleting every key of the test's namespace (SCAN + DEL; the
session server is shared, so never a server-wide flush)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from exospherehost.broker.keys import Keys
from exospherehost.graphstore import GraphStore, version_floor
from tests.integration.helpers import running

RUNS = 20


class Stamp(BaseNode):
    """Echoes the tag its graph template gives it: tells apart which template ran."""

    class Inputs(BaseModel):
        tag: str

    class Outputs(BaseModel):
        tag: str

    async def execute(self) -> Outputs:
        return self.Outputs(tag=self.inputs.tag)


class Other(BaseNode):
    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs()


def stamp_graph(ns: str, tag: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Stamp", namespace=ns, identifier="s", inputs={"tag": tag})]


def runtime(url: str, ns: str, nodes: Sequence[type[BaseNode]] = (Stamp,)) -> Runtime:
    rt = Runtime(
        namespace=ns,
        name="epochs",
        nodes=nodes,
        redis_url=url,
        block_ms=100,
        visibility_timeout=2.0,
    )
    rt.registry_check_s = 0.2  # the default is a few seconds: keep the test short
    return rt


async def lose_data(redis: Redis, ns: str) -> int:
    """Delete every key of namespace `ns`, as a Redis restart without persistence would."""
    keys = [k async for k in redis.scan_iter(match=f"exo:{{{ns}}}:*", count=1000)]
    if keys:
        await redis.delete(*keys)
    # (A running Runtime re-creates its streams and groups at once: no emptiness check.)
    return len(keys)


async def tags_of_runs(sm: StateManager, graph: str, count: int) -> list[str]:
    """Trigger `count` runs, wait for all, return each run's one result tag."""
    runs = await sm.trigger_many(graph, [{} for _ in range(count)])
    statuses = await sm.wait_all(runs, timeout=30)
    assert {s.status for s in statuses.values()} == {"SUCCEEDED"}, statuses
    tags = []
    for run in runs:
        results = await sm.results(run)
        assert len(results) == 1, results
        tags.append(results[0]["outputs"]["tag"])
    return tags


async def test_version_counter_restarts_above_every_version_handed_out(
    namespace: str, redis: Redis
) -> None:
    store = GraphStore(redis, Keys(namespace))
    seconds, micros = await redis.time()
    first = await store.next_version("g")
    assert first > version_floor(seconds, micros)  # starts at Redis's clock (µs)
    handed = [first] + [await store.next_version("g") for _ in range(99)]
    assert handed == list(range(first, first + 100))  # then one per upsert
    other = await store.next_version("h")  # each graph counts on its own
    assert other > version_floor(seconds, micros) and await store.next_version("g") == first + 100
    await lose_data(redis, namespace)
    again = await store.next_version("g")
    assert again > first + 100, (first, again)
    # A counter from before this scheme (small numbers) carries on where it was.
    await redis.hset(Keys(namespace).graph_seq(), "old", 7)
    assert await store.next_version("old") == 8


async def test_concurrent_first_versions_are_distinct(namespace: str, redis: Redis) -> None:
    store = GraphStore(redis, Keys(namespace))
    versions = await asyncio.gather(*(store.next_version("g") for _ in range(50)))
    assert sorted(versions) == list(range(min(versions), min(versions) + 50))


async def test_runs_after_data_loss_execute_the_new_template(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace)):
        old = await sm.upsert_graph("g", stamp_graph(namespace, "old"), validation_timeout=30)
        # The Runtime (and this StateManager) now hold the compiled old version.
        assert await tags_of_runs(sm, "g", RUNS) == ["old"] * RUNS
        registry = await redis.hgetall(f"exo:{{{namespace}}}:nodes")
        assert await lose_data(redis, namespace) > 0
        # Put the registry back by hand: this test is about the graph versions only.
        await redis.hset(f"exo:{{{namespace}}}:nodes", mapping=registry)
        new = await sm.upsert_graph("g", stamp_graph(namespace, "new"), validation_timeout=30)
        assert new["version"] != old["version"], (old["version"], new["version"])
        assert new["version"] > old["version"]  # versions keep increasing across the loss
        assert await tags_of_runs(sm, "g", RUNS) == ["new"] * RUNS
        # A later upsert is the next version, as without a loss.
        newer = await sm.upsert_graph("g", stamp_graph(namespace, "newer"), validation_timeout=30)
        assert newer["version"] == new["version"] + 1
        assert await tags_of_runs(sm, "g", RUNS) == ["newer"] * RUNS
    await assert_nothing_pending(sm)


async def test_node_registry_is_written_again_after_data_loss(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(runtime(redis_url, namespace)) as rt:
        await sm.upsert_graph("g", stamp_graph(namespace, "old"), validation_timeout=30)
        assert await sm.node_names() == ["Stamp"]
        with caplog.at_level(logging.WARNING, logger="exospherehost.runtime.process"):
            await lose_data(redis, namespace)
            lost_at = time.monotonic()
            # upsert_graph waits for unregistered nodes: the Runtime must bring them back.
            doc = await sm.upsert_graph("g", stamp_graph(namespace, "new"), validation_timeout=30)
            assert doc["validation_status"] == "VALID"
            assert time.monotonic() - lost_at < 30
            assert await sm.node_names() == ["Stamp"]
            assert await tags_of_runs(sm, "g", RUNS) == ["new"] * RUNS
            # Later checks find the registry in place: the warning is not repeated.
            await checks_done(rt, rt.registry_checks + 3)
        warnings = [r.getMessage() for r in caplog.records if "node registry" in r.getMessage()]
    assert warnings == [
        f"node registry of namespace {namespace} was missing (Redis lost data?); "
        f"re-registered 1 nodes: Stamp"
    ], warnings
    await assert_nothing_pending(sm)


async def test_only_the_missing_registry_entries_are_written_again(
    redis_url: str, namespace: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    rt = runtime(redis_url, namespace, [Stamp, Other])
    registry = f"exo:{{{namespace}}}:nodes"
    async with running(rt):
        kept = await redis.hget(registry, "Other")
        assert kept is not None and await redis.hexists(registry, "Stamp")
        with caplog.at_level(logging.WARNING, logger="exospherehost.runtime.process"):
            assert await redis.hdel(registry, "Stamp") == 1
            await checks_done(rt, rt.registry_checks + 2)
        assert await redis.hexists(registry, "Stamp")
        assert await redis.hget(registry, "Other") == kept  # not rewritten
    warnings = [r.getMessage() for r in caplog.records if "node registry" in r.getMessage()]
    assert warnings == [
        f"node registry of namespace {namespace} was missing (Redis lost data?); "
        f"re-registered 1 nodes: Stamp"
    ], warnings


async def checks_done(rt: Runtime, count: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until the Runtime has checked its node registry `count` times."""
    deadline = time.monotonic() + timeout
    while rt.registry_checks < count:
        assert time.monotonic() < deadline, f"fewer than {count} registry checks in {timeout}s"
        await asyncio.sleep(0.05)


async def assert_nothing_pending(sm: StateManager) -> None:
    assert await sm.pending("Stamp") == {"length": 0, "pending": 0, "delayed": 0}
