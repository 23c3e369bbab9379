"""Promises about dead letters on real Redis: redrive is idempotent even when redrives
race, gives a fresh retry budget, keeps the redriven run's history, and `redrive_all`
stops at what was dead when it started (issue 16). Each test fails with the one-line bug
its docstring names."""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar

import msgpack
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.client.runs import RunNotFound
from tests.integration.apps.nodes import Split, Work
from tests.integration.helpers import running
from tests.integration.promises_support import until

pytestmark = pytest.mark.redis

NO_RETRIES = RetryPolicyModel(max_retries=0)


class FailsFirst(BaseNode):
    """Fails its first `fail_times` executions, then succeeds."""

    fail_times: ClassVar[int] = 0
    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        FailsFirst.runs += 1
        if FailsFirst.runs <= FailsFirst.fail_times:
            raise ValueError(f"failure #{FailsFirst.runs}")
        return self.Outputs(x=self.inputs.x)


class AlwaysFails(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        raise RuntimeError(f"always fails ({self.inputs.x})")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    FailsFirst.fail_times, FailsFirst.runs = 0, 0


def _always_fails(redis_url: str, namespace: str) -> Runtime:
    """An in-process Runtime of AlwaysFails without retries: each state dies at once."""
    return Runtime(
        namespace=namespace,
        name="p",
        nodes=[AlwaysFails],
        redis_url=redis_url,
        default_retry_policy=NO_RETRIES,
    )


async def _one_dead_letter(redis_url: str, namespace: str, sm: StateManager) -> str:
    """Run one graphless AlwaysFails state to its dead letter; return the letter's id."""
    rt = _always_fails(redis_url, namespace)
    async with running(rt):
        state = await sm.enqueue("AlwaysFails", {"x": 1})
        await sm.wait_for_states("AlwaysFails", [state], timeout=15)
    [dead] = await sm.dead_letters()
    return dead.id


async def test_racing_redrives_of_one_dead_letter_put_it_back_once(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """Five clients redrive the same dead letter at the same moment (each has read it
    before any redrive runs: the test holds Redis writes with CLIENT PAUSE WRITE until
    all five are waiting): exactly one succeeds and the state is back once.
    Bug: a second redrive of the same letter re-adds the state."""
    dead_id = await _one_dead_letter(redis_url, namespace, sm)
    managers = [StateManager(namespace, redis_url=redis_url) for _ in range(5)]
    try:
        for m in managers:
            await m.client.ping()  # connected before the pause
        await redis.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            racing = [asyncio.ensure_future(m.redrive(dead_id)) for m in managers]

            async def all_waiting_to_write() -> bool:
                clients = (await redis.execute_command("CLIENT", "LIST")).decode()
                return clients.count("cmd=evalsha") + clients.count("cmd=eval ") >= 5

            await until(all_waiting_to_write, "five redrives read the letter and wait", 8)
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
        outcomes = await asyncio.wait_for(asyncio.gather(*racing), 15)
    finally:
        for m in managers:
            await m.close()
    assert sorted(outcomes) == [False] * 4 + [True], outcomes
    assert await redis.xlen(sm.keys.queue("AlwaysFails")) == 1
    assert await sm.dead_letters() == []


async def test_redrive_gives_a_fresh_retry_budget(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """max_retries=1: attempts 1 and 2 fail, the state is dead. Redriven, attempt 1 of
    the new budget fails again and is retried; attempt 2 succeeds and the run succeeds.
    Bug: the attempt counter is not reset (the redriven state is dead at once)."""
    FailsFirst.fail_times = 3
    policy = RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)
    graph = [
        GraphNodeModel(
            node_name="FailsFirst", namespace=namespace, identifier="only", inputs={"x": 1}
        )
    ]
    rt = Runtime(namespace=namespace, name="p", nodes=[FailsFirst], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("budget", graph, secrets={}, retry_policy=policy)
        run = await sm.trigger("budget")
        assert (await sm.wait(run, timeout=15)).status == "FAILED"
        [dead] = await sm.dead_letters()
        assert dead.attempts == 2
        assert await sm.redrive(dead.id) is True

        async def finished_again() -> bool:
            return (await sm.status(run)).status != "RUNNING"

        await until(finished_again, "the redriven run finishes")
        status = await sm.status(run)
        history = await sm.run_history(run)
    assert status.status == "SUCCEEDED", (status, await sm.dead_letters())
    assert FailsFirst.runs == 4
    assert [(h.status, h.attempt) for h in history] == [
        ("RETRYING", 1),
        ("FAILED", 2),
        ("RETRYING", 1),
        ("SUCCEEDED", 2),
    ]
    assert await sm.dead_letters() == []


async def test_a_redriven_run_keeps_its_history_results_and_store(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A finished run's keys expire `run_retention` after it ends. Redriving one of its
    dead letters re-opens it, so none of them may expire while it runs again: run hash,
    results, history and store lose their TTL. Bug: the history's PERSIST removed."""
    ns = namespace
    nodes = [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": 2},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace=ns,
            identifier="work",
            inputs={"value": "${{ fan.outputs.value }}", "fail_at": 0},
        ),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Split, Work], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph(
            "kept",
            nodes,
            secrets={},
            retry_policy=NO_RETRIES,
            store_config=StoreConfigModel(default_values={"k": "v"}),
        )
        run = await sm.trigger("kept")
        assert (await sm.wait(run, timeout=15)).status == "FAILED"
    keys = {
        "run": sm.keys.run(run),
        "results": sm.keys.run_results(run),
        "history": sm.keys.run_history(run),
        "store": sm.keys.run_store(run),
    }
    before = {name: await redis.ttl(key) for name, key in keys.items()}
    assert all(ttl > 0 for ttl in before.values()), before  # expiring: the run is over
    records = len(await sm.run_history(run))
    [dead] = await sm.dead_letters()
    assert await sm.redrive(dead.id) is True  # no Runtime: the state waits on its stream
    after = {name: await redis.ttl(key) for name, key in keys.items()}
    assert after == dict.fromkeys(keys, -1), after
    assert (await sm.status(run)).status == "RUNNING"
    assert len(await sm.run_history(run)) == records


async def test_redrive_all_stops_at_what_was_dead_when_it_started(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """With a Runtime running, every redriven state fails again at once and lands back in
    the dead letters while `redrive_all` is still going: it redrives the 50 letters that
    were there when it started, once each, and returns. Bug: it loops on letters added
    meanwhile (redriving for ever, or more than 50)."""
    rt = _always_fails(redis_url, namespace)
    async with running(rt):
        ids = await sm.enqueue_many("AlwaysFails", [{"x": i} for i in range(50)])
        await sm.wait_for_states("AlwaysFails", ids, timeout=15)

        async def fifty_dead() -> bool:
            return len(await sm.dead_letters()) == 50

        await until(fifty_dead, "50 dead letters")
        first = {d.id for d in await sm.dead_letters()}
        task = asyncio.ensure_future(sm.redrive_all())
        await asyncio.wait([task], timeout=20)
        in_time = task.done()
        if in_time:
            await until(fifty_dead, "the 50 redriven states are dead again")
        again = await sm.dead_letters()
    # The Runtime is stopped: nothing dies again now, so even a redrive_all that follows
    # new letters runs out of them and returns.
    redriven = await asyncio.wait_for(task, 30)
    assert in_time, f"redrive_all was still going after 20 s ({redriven} redriven in the end)"
    assert redriven.redriven == 50 and not redriven.skipped
    assert not first & {d.id for d in again}, "the original letters are gone"
    assert sorted(d.state_id for d in again) == sorted(ids)


async def test_redrive_all_stops_at_what_was_dead_when_it_started_across_pages(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """The same over more letters than one page of the scan (CHUNK, 500): the second page
    is read after the first page's letters died again. Bug: the scan is not bounded by the
    newest letter at the start, and it follows the new ones."""
    from exospherehost.broker.deadletters import CHUNK

    n = CHUNK + 100
    rt = _always_fails(redis_url, namespace)
    async with running(rt):
        ids = await sm.enqueue_many("AlwaysFails", [{"x": i} for i in range(n)])
        await sm.wait_for_states("AlwaysFails", ids, timeout=30)

        async def all_dead() -> bool:
            return (await sm.dead_letter_count()).count == n

        await until(all_dead, f"{n} dead letters", timeout=30)
        task = asyncio.ensure_future(sm.redrive_all())
        await asyncio.wait([task], timeout=30)
        in_time = task.done()
    redriven = await asyncio.wait_for(task, 60)
    assert in_time, f"redrive_all was still going after 30 s ({redriven.redriven} in the end)"
    assert redriven.redriven == n and not redriven.skipped, redriven.redriven


async def test_redriving_a_letter_whose_run_expired_is_refused_and_changes_nothing(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A dead letter of a run that no longer exists (expired after run_retention) cannot
    be redriven: RunNotFound, the letter stays, nothing is put on the stream and no stray
    run hash appears. Bug: the run-exists check removed."""
    graph = [
        GraphNodeModel(
            node_name="AlwaysFails", namespace=namespace, identifier="only", inputs={"x": 1}
        )
    ]
    rt = Runtime(namespace=namespace, name="p", nodes=[AlwaysFails], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("gone", graph, secrets={}, retry_policy=NO_RETRIES)
        run = await sm.trigger("gone")
        assert (await sm.wait(run, timeout=15)).status == "FAILED"
    [dead] = await sm.dead_letters()
    run_keys = [sm.keys.run(run), sm.keys.run_history(run), sm.keys.run_results(run)]
    await redis.delete(*run_keys, sm.keys.run_store(run))  # as its expiry would
    with pytest.raises(RunNotFound, match=run):
        await sm.redrive(dead.id)
    assert [d.id for d in await sm.dead_letters()] == [dead.id]
    assert await redis.xlen(sm.keys.queue("AlwaysFails")) == 0
    assert await redis.exists(*run_keys) == 0


async def test_dead_letters_read_back_every_documented_field_and_page(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """README "Dead letters": node, state, run, identifier, attempts, deliveries, error,
    traceback, time_ms, entry (the source entry id) and original (the entry's fields,
    byte for byte); `dead_letters(count, after)` pages oldest first, `after` exclusive;
    `dead_letter(id)` is that one letter."""
    rt = _always_fails(redis_url, namespace)
    async with running(rt):
        states = await sm.enqueue_many("AlwaysFails", [{"x": i} for i in range(3)])
        await sm.wait_for_states("AlwaysFails", states, timeout=15)
    letters = await sm.dead_letters()
    assert [d.state_id for d in letters] == states  # oldest first
    first = letters[0]
    assert first.node == "AlwaysFails" and first.run_id is None and first.identifier is None
    assert first.attempts == 1 and first.deliveries == 1
    assert first.error == "RuntimeError: always fails (0)"
    assert "always fails (0)" in first.traceback and first.time_ms > 0
    assert re.fullmatch(r"\d+-\d+", first.entry) and first.entry != first.id
    assert (
        set(first.original) == {b"_exo"}
        and msgpack.unpackb(first.original[b"_exo"])["i"] == states[0]
    )
    ids = [d.id for d in letters]
    assert [d.id for d in await sm.dead_letters(count=2)] == ids[:2]
    assert [d.id for d in await sm.dead_letters(count=2, after=ids[0])] == ids[1:]
    assert await sm.dead_letters(count=5, after=ids[2]) == []
    assert (await sm.dead_letter(ids[1])) == letters[1]
    assert await sm.dead_letter("1-1") is None


async def test_foreign_dead_letters_are_read_with_defaults_and_refused_for_redrive_clearly(
    sm: StateManager, redis: Redis
) -> None:
    """A dead letter another tool wrote (fields missing, bytes that are not UTF-8, an
    `original` that is no map) still lists, with empty defaults; redriving one that has
    nothing to redrive, or names an impossible node, fails with an error saying so."""
    dead = sm.keys.dead()
    bare = (await redis.xadd(dead, {"note": "written by hand"})).decode()
    odd = (
        await redis.xadd(
            dead, {"node": "a:b", "error": b"bad \xff byte", "original": msgpack.packb([1, 2])}
        )
    ).decode()
    b = await sm.dead_letter(bare)
    assert b is not None
    assert (b.node, b.state_id, b.run_id, b.identifier) == ("", "", None, None)
    assert (b.attempts, b.deliveries, b.time_ms) == (0, 0, 0)
    assert (b.error, b.traceback, b.entry, b.original) == ("", "", "", {})
    o = await sm.dead_letter(odd)
    assert o is not None and o.error == "bad \ufffd byte" and o.original == {}
    with pytest.raises(ValueError, match=f"dead letter {bare} has no original entry to redrive"):
        await sm.redrive(bare)
    await redis.xadd(dead, {"node": "a:b", "original": msgpack.packb({b"x": b"1"})})
    [*_, forged] = await sm.dead_letters()
    with pytest.raises(ValueError, match=r"node name 'a:b' is not valid"):
        await sm.redrive(forged.id)
