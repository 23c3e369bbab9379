"""Scenario 6: what a settle or redrive script cannot do must not lose the state. A foreign
client exhausted the id space of an output or successor stream, or put a key of the wrong
type where the SDK expects a stream; a dead letter of 5,000 fields is redriven; a plain-XADD
state is released at shutdown and must keep its id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from exospherehost import StateManager
from tests.chaos.apps import Picky, Sleeper, WorkerConfig, chain_graph, runtime
from tests.chaos.harness import (
    all_outputs,
    assert_each_once,
    assert_settled,
    by_state,
    held_by,
    results_of,
    until,
)
from tests.integration.helpers import running

MAX_ID = "18446744073709551615-18446744073709551615"
"""The last possible stream id: a stream holding it can never take another XADD."""
MANY = 5_000


@pytest.fixture(autouse=True)
def _node_switches() -> Iterator[None]:
    Picky.accept, Sleeper.cap = False, None
    yield
    Picky.accept, Sleeper.cap = False, None


def cfg(*nodes: str, grace: float = 5.0) -> WorkerConfig:
    # Small visibility and delivery limit: a state left pending is reclaimed, and dead-lettered
    # as a poison message at worst, within seconds.
    return WorkerConfig(nodes=nodes, visibility=1.0, max_deliveries=3, retries=0, grace=grace)


def names_problem(error: str, key: str) -> bool:
    """The reason says which key could not be written, or what was wrong with it."""
    lowered = error.lower()
    return key in error or any(w in lowered for w in ("exhausted", "wrongtype", "wrong kind"))


async def test_exhausted_output_stream_dead_letters_the_state(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    out = sm.keys.output("SampleNode")
    await redis.xadd(out, {"f": "v"}, id=MAX_ID)
    async with running(runtime(redis_url, namespace, cfg("SampleNode", "Square"))):
        blocked = await sm.enqueue("SampleNode", {"name": "x", "data": {}})
        others = await sm.enqueue_many("Square", [{"value": v} for v in range(20)])
        done = await results_of(sm, "Square", others, timeout=15)
        dead = by_state(await assert_settled(redis, namespace, ["SampleNode", "Square"]))
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert set(dead) == {blocked}, dead
    assert names_problem(dead[blocked].error, out), dead[blocked].error


async def test_exhausted_successor_stream_fails_the_run(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    successor = sm.keys.queue("Leaf")
    foreign = (await redis.xadd(successor, {"f": "v"}, id=MAX_ID)).decode()
    async with running(runtime(redis_url, namespace, cfg("Nap", "Leaf"))):
        await sm.upsert_graph("chain", chain_graph(namespace), validation_timeout=30)
        run = await sm.trigger("chain", inputs={"i": 1})
        status = await sm.wait(run, timeout=20)
        dead = await assert_settled(redis, namespace, ["Nap", "Leaf"])
    assert status.status == "FAILED"
    assert (status.nodes["nap"].failed, status.nodes["nap"].succeeded) == (1, 0)
    by_entry = {d.entry: d for d in dead}
    assert "Field required" in by_entry.pop(foreign).error  # the foreign entry itself
    [nap] = by_entry.values()
    assert (nap.node, nap.run_id, nap.identifier) == ("Nap", run, "nap")
    assert names_problem(nap.error, successor), nap.error


async def test_wrong_type_output_key_dead_letters_the_state(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    out = sm.keys.output("SampleNode")
    await redis.set(out, "a foreign client's string where a stream belongs")
    async with running(runtime(redis_url, namespace, cfg("SampleNode", "Square"))):
        blocked = await sm.enqueue("SampleNode", {"name": "x", "data": {}})
        others = await sm.enqueue_many("Square", [{"value": v} for v in range(20)])
        done = await results_of(sm, "Square", others, timeout=15)
        dead = by_state(await assert_settled(redis, namespace, ["SampleNode", "Square"]))
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert set(dead) == {blocked}, dead
    assert names_problem(dead[blocked].error, out), dead[blocked].error
    assert await redis.get(out) is not None  # the foreign key itself is left alone


async def test_redrive_of_a_5000_field_dead_letter(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    fields = {"name": "wide", **{f"f{i}": "v" for i in range(MANY - 1)}}
    entry = (await redis.xadd(sm.keys.queue("Picky"), fields)).decode()
    async with running(runtime(redis_url, namespace, cfg("Picky"))):
        first = (await results_of(sm, "Picky", [entry], timeout=15))[entry]
        assert first.status == "FAILED" and "does not accept" in (first.error or "")
        [dead] = await assert_settled(redis, namespace, ["Picky"])
        assert (dead.state_id, len(dead.original)) == (entry, MANY)
        Picky.accept = True
        assert await sm.redrive(dead.id) is True
        # The state keeps its id through the redrive: its new result is found by it.
        again = (await results_of(sm, "Picky", [entry], timeout=15, after=first.entry_id))[entry]
        assert await assert_settled(redis, namespace, ["Picky"]) == []
    assert again.status == "SUCCEEDED", again.error
    assert again.outputs == {"name": "wide", "fields": MANY}
    assert await sm.redrive(dead.id) is False  # once only


async def test_released_plain_xadd_state_keeps_its_id(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    state = (await redis.xadd(sm.keys.queue("Sleeper"), {"seconds": "60"})).decode()
    async with running(runtime(redis_url, namespace, cfg("Sleeper", grace=0.2))):

        async def executing() -> bool:
            return bool(await held_by(redis, namespace, ["Sleeper"]))

        await until(executing, 15, "the Runtime never took the plain-XADD state")
    # Stopped past its grace period: the state was released, back on its stream.
    Sleeper.cap = 0.0
    async with running(runtime(redis_url, namespace, cfg("Sleeper"))):
        result = (await sm.wait_for_states("Sleeper", [state], timeout=15))[state]
        assert await assert_settled(redis, namespace, ["Sleeper"]) == []
    assert result.status == "SUCCEEDED", result.error
    assert_each_once(await all_outputs(sm, "Sleeper"), [state])
