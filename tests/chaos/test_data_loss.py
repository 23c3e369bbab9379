"""Scenario 8: Redis loses the namespace's data under a running Runtime (every key deleted,
as after a restart without persistence or a failover to an empty replica). The graph is
upserted again with a different template: version numbers start over, so a Runtime that
caches templates by (graph, version) must not run the old one. The node registry comes back
without restarting the Runtime, so the upsert validates against it."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from exospherehost import GraphNodeModel, StateManager
from exospherehost.node import node_schema
from tests.chaos.apps import Echo, WorkerConfig, runtime
from tests.chaos.harness import assert_settled, delete_namespace
from tests.integration.helpers import running


def echo_graph(ns: str, tag: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Echo", namespace=ns, identifier="echo", inputs={"tag": tag})]


async def tags_of(sm: StateManager, runs: list[str]) -> list[str]:
    statuses = await sm.wait_all(runs, timeout=20)
    assert {s.status for s in statuses.values()} == {"SUCCEEDED"}, statuses
    return [x["outputs"]["tag"] for r in runs for x in await sm.results(r)]


async def test_after_data_loss_new_runs_use_the_new_template(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace, WorkerConfig(nodes=("Echo",)))):
        await sm.upsert_graph("g", echo_graph(namespace, "old"), validation_timeout=30)
        assert await tags_of(sm, [await sm.trigger("g")]) == ["old"]
        assert await delete_namespace(redis, namespace) > 0
        # Registered again as another Runtime of the deployment would (its own start), so
        # this test depends only on what the running Runtime does with templates.
        await redis.hset(sm.keys.nodes(), "Echo", json.dumps(node_schema(Echo)))
        # With the version counter lost too, this is version 1 again: the same (graph,
        # version) as the lost template, which the Runtime still has cached.
        await sm.upsert_graph("g", echo_graph(namespace, "new"), validation_timeout=30)
        runs = await sm.trigger_many("g", [None] * 10)
        assert await tags_of(sm, runs) == ["new"] * 10
    assert await assert_settled(redis, namespace, ["Echo"]) == []


async def test_after_data_loss_the_node_registry_comes_back(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace, WorkerConfig(nodes=("Echo",)))):
        await sm.upsert_graph("g", echo_graph(namespace, "old"), validation_timeout=30)
        assert await delete_namespace(redis, namespace) > 0
        # Validation waits for the registry; the running Runtime must restore it.
        await sm.upsert_graph("g", echo_graph(namespace, "new"), validation_timeout=30)
        assert await sm.node_names() == ["Echo"]
        assert await tags_of(sm, [await sm.trigger("g")]) == ["new"]
    assert await assert_settled(redis, namespace, ["Echo"]) == []
