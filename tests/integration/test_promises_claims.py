"""Promises about claims on real Redis: heartbeats, the reclaimer, and handing states
back at shutdown (issue 16). Each test fails with the one-line bug its docstring names."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, Runtime, StateManager
from tests.integration.helpers import running
from tests.integration.promises_support import GROUP, pending_entries, until

pytestmark = pytest.mark.redis


class Long(BaseNode):
    """Runs until the test releases it; counts executions per input."""

    runs: ClassVar[list[int]] = []
    release: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Long.runs.append(self.inputs.x)
        await Long.release.wait()
        return self.Outputs(x=self.inputs.x)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Long.runs = []
    Long.release = asyncio.Event()


def _runtime(ns: str, url: str, visibility: float, **kw: object) -> Runtime:
    # A short grace period: when an assertion fails inside `running`, the held executions
    # are cut off at the stop and the assertion is what the test reports.
    kw.setdefault("grace_period", 2.0)
    return Runtime(
        namespace=ns, name="p", nodes=[Long], redis_url=url, visibility_timeout=visibility, **kw
    )  # type: ignore[arg-type]


async def test_heartbeat_keeps_a_long_execution_claimed_against_a_ready_thief(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """An execution held for 3x the visibility timeout, with a second Runtime ready to
    steal it, runs once, settles once, never changes owner and is never counted as a
    redelivery (a claim refresh is not a delivery: it must not march a healthy state
    towards the poison limit). Bug: the worker never refreshes any claim."""
    vis = 1.5
    stream = sm.keys.queue("Long")
    async with running(_runtime(namespace, redis_url, vis)) as first:
        state = await sm.enqueue("Long", {"x": 1})
        await until(lambda: Long.runs == [1], "the first runtime starts the execution")
        async with running(_runtime(namespace, redis_url, vis)) as second:
            owners: set[str] = set()
            most_deliveries = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 3 * vis
            while loop.time() < end:  # watch the claim for 3 visibility timeouts
                for p in await pending_entries(redis, stream):
                    owners.add(p["consumer"])
                    most_deliveries = max(most_deliveries, p["deliveries"])
                await asyncio.sleep(0.05)
            Long.release.set()
            result = await sm.wait_for_states("Long", [state], timeout=15)
        assert second.stats is not None and first.stats is not None
        second_counts = second.stats.nodes["Long"]
        assert second_counts.executed == 0 and second_counts.settled == 0
    assert result[state].status == "SUCCEEDED"
    assert Long.runs == [1], "executed more than once: the claim was stolen"
    assert owners == {first.consumer}, owners
    assert most_deliveries == 1, f"the entry was re-delivered ({most_deliveries} deliveries)"
    counts = first.stats.nodes["Long"]
    assert counts.settled == 1 and counts.late_settles == 0
    outputs = [r for r in await sm.outputs("Long") if r.state_id == state]
    assert len(outputs) == 1


# Test-side "other worker": keeps its own claim of an entry alive only while it still
# owns it (as the SDK's heartbeat promises to), else reports who took it.
_KEEP_MINE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if p[1] == nil then return 'gone' end
if p[1][2] ~= ARGV[2] then return p[1][2] end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 'mine'
"""


async def test_heartbeat_leaves_alone_a_state_another_worker_took_over(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A worker whose state was taken over by another worker (as after a hang) does not
    take it back with its heartbeat. The test plays the other worker: it XCLAIMs one of
    two states the Runtime is running and keeps its claim fresh; the Runtime's heartbeat
    rounds are seen on the other state (its idle time drops). Bug: heartbeat.lua refreshes
    (re-claims) entries another worker took."""
    vis = 1.5
    stream = sm.keys.queue("Long")
    keep_mine = redis.register_script(_KEEP_MINE)
    async with running(_runtime(namespace, redis_url, vis)) as rt:
        await sm.enqueue_many("Long", [{"x": 1}, {"x": 2}])
        await until(lambda: sorted(Long.runs) == [1, 2], "both states start executing")
        entries = await pending_entries(redis, stream)
        assert {p["consumer"] for p in entries} == {rt.consumer}
        taken, kept = entries[0]["id"], entries[1]["id"]
        await redis.xclaim(stream, GROUP, "thief", 0, [taken], justid=True)
        rounds, last_idle, seen_owner = 0, None, b"mine"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * vis
        while rounds < 2:  # two heartbeat rounds of the Runtime after the takeover
            assert loop.time() < deadline, "the Runtime's heartbeat never refreshed its state"
            seen_owner = await keep_mine(keys=[stream], args=[GROUP, "thief", taken])
            if seen_owner != b"mine":
                break
            idle = {p["id"]: p["idle"] for p in await pending_entries(redis, stream)}[kept]
            if last_idle is not None and idle < last_idle - 100:
                rounds += 1
            last_idle = idle
            await asyncio.sleep(0.03)
        assert seen_owner == b"mine", f"the heartbeat took the state back (owner {seen_owner!r})"
        Long.release.set()
        await until(lambda: rt.settled == 2, "both states settle (the taken one by its XACK)", 15)


async def test_reclaimer_takes_no_second_copy_of_a_state_it_is_running(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """When a worker's own heartbeat lags (the test makes its state look idle past the
    visibility timeout, owner unchanged), its reclaimer claims the state back but must
    not run a second copy of what it is already running. Bug: the skip removed."""
    vis = 1.0
    stream = sm.keys.queue("Long")
    async with running(_runtime(namespace, redis_url, vis, workers=4)) as rt:
        state = await sm.enqueue("Long", {"x": 1})
        await until(lambda: Long.runs == [1], "the execution starts")
        [entry] = await pending_entries(redis, stream)

        async def reclaimed_by_itself() -> bool:
            [p] = await pending_entries(redis, stream)
            assert p["consumer"] == rt.consumer
            if p["deliveries"] >= 2:  # its reclaimer claimed it (a claim is a delivery)
                return True
            if p["idle"] < 10 * vis * 1000:  # the heartbeat refreshed it: lag again
                await redis.xclaim(
                    stream, GROUP, rt.consumer, 0, [entry["id"]], idle=3_600_000, justid=True
                )
            return False

        await until(reclaimed_by_itself, "the worker's own reclaimer claims the state", 20)
        Long.release.set()
        result = await sm.wait_for_states("Long", [state], timeout=15)
    assert result[state].status == "SUCCEEDED"
    assert Long.runs == [1], "a second copy of the held state was executed"


async def test_states_still_queued_at_the_end_of_the_grace_period_are_handed_back_at_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Stopping with executions that outlast the grace period: the running state and the
    states read but not started are all put straight back on the stream (none left
    pending for a reclaimer), keep their ids, and another Runtime then runs them without
    waiting for the visibility timeout. Bug: the queued ones are dropped."""
    # prefetch=40: the read-ahead of a fast node (4 x batch_size), states queued behind
    # the one that runs (an unknown node's adaptive read-ahead is a quarter executor).
    rt = _runtime(
        namespace, redis_url, 60.0, workers=1, batch_size=10, grace_period=0.3, prefetch=40
    )
    async with running(rt):
        ids = await sm.enqueue_many("Long", [{"x": i} for i in range(5)])

        async def all_read() -> bool:
            return (await sm.pending("Long"))["pending"] == 5

        await until(all_read, "the runtime reads all five states")
        await until(lambda: len(Long.runs) == 1, "one state runs (one executor)")
    assert await sm.pending("Long") == {"length": 5, "pending": 0, "delayed": 0}
    Long.release.set()
    async with running(_runtime(namespace, redis_url, 60.0)):
        results = await sm.wait_for_states("Long", ids, timeout=15)
    assert {r.status for r in results.values()} == {"SUCCEEDED"}


async def test_a_stopping_worker_that_still_holds_a_state_keeps_it_pending(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """On a clean stop a worker leaves the consumer groups, but never while it still
    holds an unsettled state: removing the consumer would drop the state from the
    pending list, where no reclaimer could find it again. (The test hands the Runtime's
    consumer a state it never read, as a claim it did not get to settle.)
    Bug: retire.lua removes a consumer that still holds pending entries."""
    stream = sm.keys.queue("Long")
    rt = _runtime(namespace, redis_url, 60.0)
    await sm.enqueue("Long", {"x": 1})
    await sm.broker.ensure_groups(["Long"])
    await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=1)  # before the Runtime
    [entry] = await pending_entries(redis, stream)
    async with running(rt):
        await redis.xclaim(stream, GROUP, rt.consumer, 0, [entry["id"]], justid=True)
    [after] = await pending_entries(redis, stream)
    assert after["id"] == entry["id"] and after["consumer"] == rt.consumer
    consumers = [c["name"] for c in await redis.xinfo_consumers(stream, GROUP)]
    assert rt.consumer.encode() in consumers
