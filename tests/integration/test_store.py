"""The per-run store: written at trigger, read and written by nodes through `self.store`,
expiring with the run; templates see the trigger-time values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.broker.codec import unpack
from exospherehost.broker.streams import Broker
from exospherehost.store import RunStore, check_store_key
from tests.integration.helpers import running

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


class Bump(BaseNode):
    """Reads the live counter, writes it back plus 10, and leaves a note."""

    class Inputs(BaseModel):
        at_trigger: int  # ${{ store.count }}

    class Outputs(BaseModel):
        at_trigger: int
        before: int

    async def execute(self) -> Outputs:
        before = await self.store.get("count")
        await self.store.set("count", before + 10)
        await self.store.update({"note": {"by": "bump", "tags": ["a", 1]}, "gone": True})
        assert await self.store.delete("gone") is True
        assert await self.store.get("missing", "dflt") == "dflt"
        return self.Outputs(at_trigger=self.inputs.at_trigger, before=before)


class Look(BaseNode):
    """A later node: its template sees the trigger-time value, `self.store` the live one."""

    class Inputs(BaseModel):
        at_trigger: int  # ${{ store.count }}

    class Outputs(BaseModel):
        at_trigger: int
        live: int
        everything: dict[str, Any]

    async def execute(self) -> Outputs:
        return self.Outputs(
            at_trigger=self.inputs.at_trigger,
            live=await self.store.get("count"),
            everything=await self.store.all(),
        )


class Gate(BaseNode):
    """Fails until the store says `open`."""

    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        if not await self.store.get("open", False):
            raise RuntimeError("gate is closed")
        return self.Outputs(ok=True)


class Graphless(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        await self.store.get("anything")
        return self.Outputs(x=self.inputs.x)


NODES = [Bump, Look, Gate, Graphless]


def runtime(url: str, ns: str, retention_s: int = 30) -> Runtime:
    return Runtime(
        namespace=ns,
        name="store",
        nodes=NODES,
        redis_url=url,
        run_retention=timedelta(seconds=retention_s),
        default_retry_policy=RetryPolicyModel(max_retries=0),
    )


def bump_look(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Bump",
            namespace=ns,
            identifier="bump",
            inputs={"at_trigger": "${{ store.count }}"},
            next_nodes=["look"],
        ),
        GraphNodeModel(
            node_name="Look",
            namespace=ns,
            identifier="look",
            inputs={"at_trigger": "${{ store.count }}"},
        ),
    ]


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> AsyncIterator[StateManager]:
    manager = StateManager(namespace, redis_url=redis_url)
    yield manager
    await manager.close()


async def test_nodes_read_and_write_the_run_store_templates_see_trigger_values(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    cfg = StoreConfigModel(required_keys=["count"], default_values={"region": "eu"})
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph("g", bump_look(namespace), secrets={}, store_config=cfg)
        run = await sm.trigger("g", store={"count": 5})
        status = await sm.wait(run, timeout=10)
        results = await sm.results(run)
    assert status.status == "SUCCEEDED"
    (look,) = results
    # Templates render the values the run was triggered with; nodes read live values.
    assert look["outputs"]["at_trigger"] == 5
    assert look["outputs"]["live"] == 15
    assert look["outputs"]["everything"] == {
        "count": 15,
        "region": "eu",
        "note": {"by": "bump", "tags": ["a", 1]},
    }
    assert await sm.run_store(run) == look["outputs"]["everything"]
    # The store expires with the run (run_retention=30 s).
    store_key = f"exo:{{{namespace}}}:run:{run}:store"
    assert 0 < await redis.ttl(store_key) <= 30
    assert 0 < await redis.ttl(f"exo:{{{namespace}}}:run:{run}") <= 30


async def test_trigger_writes_the_store_with_the_run(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    cfg = StoreConfigModel(default_values={"count": 1, "when": "never"})
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph("g", bump_look(namespace), secrets={}, store_config=cfg)
    run = await sm.trigger("g", store={"count": 7, "extra": [1, 2]})  # nobody serves it now
    raw = await redis.hgetall(f"exo:{{{namespace}}}:run:{run}:store")
    assert {k.decode(): unpack(v) for k, v in raw.items()} == {
        "count": 7,
        "when": "never",
        "extra": [1, 2],
    }
    assert await redis.ttl(f"exo:{{{namespace}}}:run:{run}:store") == -1  # lives while running
    with pytest.raises(ValueError, match=r"store key 'a\.b' cannot contain '\.'"):
        await sm.trigger("g", store={"a.b": 1})
    with pytest.raises(TypeError, match="store value for key 'bad'"):
        await sm.trigger("g", store={"bad": object()})


async def test_no_store_hash_for_a_run_without_store_values(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    nodes = [GraphNodeModel(node_name="Gate", namespace=namespace, identifier="gate", inputs={})]
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph("g", nodes, secrets={})
    run = await sm.trigger("g")
    assert await redis.exists(f"exo:{{{namespace}}}:run:{run}:store") == 0


async def test_redrive_reopens_the_run_and_keeps_its_store(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    nodes = [GraphNodeModel(node_name="Gate", namespace=namespace, identifier="gate", inputs={})]
    cfg = StoreConfigModel(default_values={"open": False})
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph(
            "g", nodes, secrets={}, store_config=cfg, retry_policy=RetryPolicyModel(max_retries=0)
        )
        run = await sm.trigger("g")
        assert (await sm.wait(run, timeout=10)).status == "FAILED"
        key = f"exo:{{{namespace}}}:run:{run}:store"
        assert await redis.ttl(key) > 0  # finished: expiring with the run
        (dead,) = await sm.dead_letters()
        assert "gate is closed" in dead.error
        # Open the gate (as another node, or an operator, would) and redrive.
        await RunStore(Broker(sm.client, namespace), run).set("open", True)
        assert await sm.redrive(dead.id)
        assert await redis.ttl(key) == -1  # re-opened run: the store no longer expires
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
    assert await redis.ttl(key) > 0


async def test_store_outside_a_graph_run_fails_clearly_and_for_good(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace)):
        state = await sm.enqueue("Graphless", {"x": 1})
        result = (await sm.wait_for_states("Graphless", [state], timeout=10))[state]
    assert result.status == "FAILED"
    assert result.error is not None
    assert "Graphless.store is only available to states of a graph run" in result.error
    (dead,) = await sm.dead_letters()
    assert dead.attempts == 1  # permanent: not retried


async def test_run_store_api_checks_keys_values_and_the_run(
    namespace: str, redis: Redis, sm: StateManager
) -> None:
    store = RunStore(Broker(sm.client, namespace), "no-such-run")
    with pytest.raises(KeyError, match="run 'no-such-run' not found"):
        await store.set("k", 1)
    assert await redis.exists(f"exo:{{{namespace}}}:run:no-such-run:store") == 0  # no stray
    for bad, pattern in [
        ("", "empty"),
        ("a.b", "cannot contain '.'"),
        (" k", "whitespace"),
        ("x" * 600, "longer than"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            await store.get(bad)
    with pytest.raises(TypeError, match="must be a string"):
        check_store_key(3)
    with pytest.raises(TypeError, match="store value for key 'k'"):
        await store.set("k", object())
    with pytest.raises(Exception, match="only available to states of a graph run"):
        Graphless().store  # noqa: B018
