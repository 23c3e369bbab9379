"""Tests written for mutmut's survivors in exospherehost/runtime/worker.py (README,
Testing): the fallbacks of a settle Redis refuses or fails part-way (each step of the
dead-letter chain and what is counted), a bug of our own failing a state for good, and
the deliveries an entry carries toward the poison limit. Through a Runtime on the
session's redis-server; each docstring names the one-line bug it catches."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, Runtime, StateManager
from exospherehost.broker.codec import decode
from exospherehost.broker.keys import ENVELOPE_FIELD, GROUP
from exospherehost.client.deadletters import DeadLetter
from exospherehost.testing.server import PrivateServer
from tests.integration.apps.scripted import Echo, Other
from tests.integration.apps.scripted import exhaust as _exhaust
from tests.integration.helpers import running
from tests.integration.promises_support import pending_entries, until

pytestmark = pytest.mark.redis

NO_RETRY = RetryPolicyModel(max_retries=0)
WORKER_LOG = "exospherehost.runtime.worker"


class Held(BaseNode):
    """Runs until the test releases it; notes when it was cancelled."""

    started: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]
    cancelled_at: ClassVar[float | None] = None

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Held.started.set()
        try:
            await Held.release.wait()
        except asyncio.CancelledError:
            Held.cancelled_at = time.monotonic()
            raise
        return self.Outputs(x=self.inputs.x)


@pytest.fixture(autouse=True)
def _fresh_nodes() -> None:
    Echo.failing = set()
    Held.started = asyncio.Event()
    Held.release = asyncio.Event()
    Held.cancelled_at = None


def _runtime(ns: str, url: str, **kw: Any) -> Runtime:
    kw.setdefault("default_retry_policy", NO_RETRY)
    return Runtime(namespace=ns, name="m", nodes=[Echo, Other], redis_url=url, **kw)


async def _one_dead_letter(sm: StateManager, timeout: float = 20) -> DeadLetter:
    await until(lambda: _has_letters(sm), "a dead letter is written", timeout)
    [dead] = await sm.dead_letters()
    return dead


async def _has_letters(sm: StateManager) -> bool:
    return bool(await sm.dead_letters())


async def _pair_run(sm: StateManager, redis_url: str, namespace: str) -> str:
    """A run of Echo (a) -> Other (b) whose root state waits (no Runtime runs meanwhile)."""
    async with running(_runtime(namespace, redis_url)):
        await sm.upsert_graph(
            "pair",
            [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="a",
                            inputs={"x": 1}, next_nodes=["b"]),
             GraphNodeModel(node_name="Other", namespace=namespace, identifier="b",
                            inputs={"x": "${{ a.outputs.x }}"})],
            secrets={},
        )  # fmt: skip
    return await sm.trigger("pair")


def _errors(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == WORKER_LOG and r.levelno == logging.ERROR and needle in r.getMessage()
    ]


async def _nothing_pending(redis: Redis, sm: StateManager, node: str) -> None:
    assert (await redis.xpending(sm.keys.queue(node), GROUP))["pending"] == 0


# -- a refused settle: the dead-letter chain, and what is counted -------------------------
async def test_a_refused_settle_dead_letters_the_state_once_and_counts_it_settled(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A run state whose successor stream cannot take its successor: its settle is refused
    and it is settled as a failure instead (the first fallback: its run fails, its reason
    is the refusal alone), counted as settled like the rest. Bug: the fallback's flag read
    at index 1 (the batch's bookkeeping is lost: never counted settled, held forever)."""
    run = await _pair_run(sm, redis_url, namespace)
    await _exhaust(redis, sm.keys.queue("Other"))
    good = await sm.enqueue_many("Echo", [{"x": i} for i in range(3)])
    async with running(_runtime(namespace, redis_url)) as rt:
        status = await sm.wait(run, timeout=20)
        await sm.wait_for_states("Echo", good, timeout=20)
        await until(lambda: rt.settled == 4, "every state is counted settled")
        assert rt.stats is not None and rt.stats.nodes["Echo"].settled == 4
    assert status.status == "FAILED" and status.nodes["a"].failed == 1
    [dead] = await sm.dead_letters()
    assert dead.run_id == run and dead.error.startswith("cannot settle Completed: ")
    assert "used up its entry ids" in dead.error and "nor as" not in dead.error
    await _nothing_pending(redis, sm, "Echo")


async def test_a_settle_redis_refuses_for_memory_waits_and_then_settles(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Over maxmemory Redis refuses every settle call as a whole, before it writes: that
    is an outage (issue 17), not a verdict on the state. The settle is sent again until
    Redis takes it, the outage is logged once naming OutOfMemoryError, and the state then
    settles as it would have, with no dead letter. (Before: the state was dead-lettered
    or left pending with "the settle script refused it".)"""
    caplog.set_level(logging.WARNING, WORKER_LOG)
    server = PrivateServer()
    url = server.start().url
    client = Redis.from_url(url, decode_responses=False)
    manager = StateManager(namespace, redis_url=url)
    try:
        runtime = Runtime(namespace=namespace, name="m", nodes=[Held], redis_url=url)
        async with running(runtime):
            state = await manager.enqueue("Held", {"x": 1})
            await asyncio.wait_for(Held.started.wait(), 10)
            used = (await client.info("memory"))["used_memory"]
            await client.config_set("maxmemory", str(used // 2))  # over it at once
            Held.release.set()
            await until(
                lambda: any("OutOfMemoryError" in r.getMessage() for r in caplog.records),
                "the refusal is logged as an outage",
            )
            assert runtime.settled == 0
            await client.config_set("maxmemory", "0")
            done = await manager.wait_for_states("Held", [state], timeout=20)
        assert done[state].status == "SUCCEEDED"
        assert not _errors(caplog, "left pending")
        assert (await client.xpending(manager.keys.queue("Held"), GROUP))["pending"] == 0
        assert not await manager.dead_letters()
    finally:
        await manager.close()
        await client.aclose()
        server.stop()


async def test_a_failure_settle_failing_after_its_ack_still_leaves_a_dead_letter(
    redis: Redis,
    redis_url: str,
    namespace: str,
    sm: StateManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run state whose successor stream is used up (its settle is refused) and whose
    run counter is corrupted (its settle as a failure acks, writes its dead letter, then
    stops on the counter): that dead letter stands, with why the state could not settle,
    and the ERROR log names the bookkeeping failure. Nothing stays pending."""
    caplog.set_level(logging.ERROR, WORKER_LOG)
    run = await _pair_run(sm, redis_url, namespace)
    await _exhaust(redis, sm.keys.queue("Other"))
    await redis.hset(sm.keys.run(run), "open", "not a number")
    async with running(_runtime(namespace, redis_url)) as rt:
        await until(lambda: rt.settled == 1, "the state is settled")
        assert rt.stats is not None and rt.stats.nodes["Echo"].settled == 1
    [letter] = await sm.dead_letters()
    assert letter.run_id == run and letter.identifier == "a"
    assert letter.error.startswith("cannot settle Completed: ")
    assert "used up its entry ids" in letter.error
    [logged] = _errors(caplog, "but its run's bookkeeping failed")
    assert "not an integer" in logged
    await _nothing_pending(redis, sm, "Echo")


async def test_a_failure_settle_failing_after_its_ack_leaves_one_dead_letter(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """The case above: one state, one dead letter (a redrive of both would run it twice)."""
    run = await _pair_run(sm, redis_url, namespace)
    await _exhaust(redis, sm.keys.queue("Other"))
    await redis.hset(sm.keys.run(run), "open", "not a number")
    async with running(_runtime(namespace, redis_url)) as rt:
        await until(lambda: rt.settled == 1, "the state is settled")
    assert len(await sm.dead_letters()) == 1


async def test_a_state_nothing_can_be_written_for_stays_pending_and_is_named(
    redis: Redis,
    redis_url: str,
    namespace: str,
    sm: StateManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing state when the dead-letter stream is used up: its settle, its settle as a
    failure and its bare dead letter are all refused; it stays pending (reclaimed later),
    an ERROR names it with every reason, and the others settle. Bugs: the last reason
    replacing the others, `-=` for `+=`, the error read at index 1, the state said to be
    acked."""
    caplog.set_level(logging.ERROR, WORKER_LOG)
    await _exhaust(redis, sm.keys.dead())
    Echo.failing = {1}
    bad = await sm.enqueue("Echo", {"x": 1})
    good = await sm.enqueue_many("Other", [{"x": i} for i in range(3)])
    async with running(_runtime(namespace, redis_url)) as rt:
        await sm.wait_for_states("Other", good, timeout=20)
        await until(lambda: bool(_errors(caplog, "left pending")), "the stuck state is named")
        assert rt.stats is not None
        assert rt.stats.nodes["Echo"].settled == 0 and rt.stats.nodes["Other"].settled == 3
    [message] = _errors(caplog, "left pending")
    assert message.startswith(f"left pending Echo state {bad} (entry ")
    assert "cannot settle Failed: " in message
    assert "; nor as a failure: " in message and "; nor as a bare dead letter: " in message
    assert message.count("used up its entry ids") == 3, message
    assert not _errors(caplog, "ACKED BUT NOT DEAD-LETTERED")
    [entry] = await pending_entries(redis, sm.keys.queue("Echo"))
    assert entry["deliveries"] == 1


async def test_a_state_acked_but_not_dead_lettered_is_named_as_such(
    redis: Redis,
    redis_url: str,
    namespace: str,
    sm: StateManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run state whose settle acks and then stops (a corrupted run counter), when the
    dead-letter stream is used up: the one state that can be lost says so in capitals.
    Bugs: the message says "left pending", or loses its wording."""
    caplog.set_level(logging.ERROR, WORKER_LOG)
    run = await _pair_run(sm, redis_url, namespace)
    await redis.hset(sm.keys.run(run), "open", "not a number")
    await _exhaust(redis, sm.keys.dead())
    async with running(_runtime(namespace, redis_url)) as rt:
        await until(
            lambda: bool(_errors(caplog, "ACKED BUT NOT DEAD-LETTERED")), "the lost state is named"
        )
        assert rt.settled == 1
    [message] = _errors(caplog, "ACKED BUT NOT DEAD-LETTERED")
    assert message.startswith("ACKED BUT NOT DEAD-LETTERED Echo state ")
    assert "not an integer" in message and "; nor as a bare dead letter: " in message
    assert not _errors(caplog, "left pending")
    await _nothing_pending(redis, sm, "Echo")


# -- a bug of our own fails the state for good --------------------------------------------
async def test_a_state_whose_graph_cannot_be_loaded_fails_for_good_as_an_internal_error(
    redis: Redis,
    redis_url: str,
    namespace: str,
    sm: StateManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run state whose graph document is corrupted (not msgpack): loading it raises in
    the worker's own code, not in node code. The state fails at once, for good (no retry
    though the policy allows three), its dead letter names the internal error with a
    traceback, the bug is logged, and the worker goes on. Bugs: the failure not permanent,
    its reason or traceback dropped, the log saying where wrongly."""
    caplog.set_level(logging.ERROR, "exospherehost.runtime")
    run = await _pair_run(sm, redis_url, namespace)
    current = await redis.hget(sm.keys.graphs(), "pair")
    assert current is not None
    version = int(current)
    await redis.set(sm.keys.graph("pair", version), b"\xc1")  # a byte msgpack never uses
    policy = RetryPolicyModel(max_retries=3, backoff_factor=60_000)
    async with running(_runtime(namespace, redis_url, default_retry_policy=policy)):
        status = await sm.wait(run, timeout=20)
        after = await sm.enqueue("Other", {"x": 5})
        [result] = (await sm.wait_for_states("Other", [after], timeout=20)).values()
    assert status.status == "FAILED" and status.nodes["a"].failed == 1
    assert result.status == "SUCCEEDED"
    dead = await _one_dead_letter(sm)
    assert dead.run_id == run and dead.attempts == 1
    # msgpack's error for a reserved byte; its message is empty, so the class alone.
    assert dead.error == "internal error executing Echo: FormatError", dead.error
    assert "Traceback" in dead.traceback
    logged = [
        r for r in caplog.records if "internal error while executing a Echo state" in r.getMessage()
    ]
    assert len(logged) == 1 and logged[0].exc_info is not None


# -- deliveries toward the poison limit ---------------------------------------------------
async def _orphan(sm: StateManager, node: str, deliveries: int) -> bytes:
    """Leave `node`'s one entry pending as workers that each died holding it would:
    delivered `deliveries` times, the last owner gone."""
    await sm.broker.ensure_groups([node])
    stream = sm.keys.queue(node)
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=10)
    [(entry_id, _)] = reply[0][1]
    for owner in range(2, deliveries + 1):
        await sm.client.xclaim(stream, GROUP, f"ghost-{owner}", 0, [entry_id])
    return bytes(entry_id)


async def test_a_plain_entry_one_delivery_short_of_the_limit_still_runs(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A plain XADD entry (it carries no deliveries from earlier entries) delivered
    max_deliveries - 1 times is reclaimed and run, not dead-lettered as poison. Bug: a
    plain entry counted as carrying one delivery."""
    stream = sm.keys.queue("Other")
    await redis.xadd(stream, {"x": "7"})
    entry_id = await _orphan(sm, "Other", 4)
    async with running(_runtime(namespace, redis_url, visibility_timeout=0.5)):
        await until(_output_of(sm, entry_id), "the reclaimed entry runs", 20)
    assert not await sm.dead_letters()
    await _nothing_pending(redis, sm, "Other")


def _output_of(sm: StateManager, entry_id: bytes) -> Any:
    async def done() -> bool:
        # A plain entry's state id is its entry id (README, wire protocol).
        return any(r.state_id == entry_id.decode() for r in await sm.outputs("Other"))

    return done


async def test_an_undecodable_entry_short_of_the_limit_is_dead_lettered_for_what_it_is(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """An envelope that does not decode, reclaimed one delivery short of the limit, is
    dead-lettered for its bad envelope, not as poison. Bug: an undecodable envelope
    counted as carrying one delivery (it would reach the limit and be called poison)."""
    stream = sm.keys.queue("Other")
    await redis.xadd(stream, {ENVELOPE_FIELD: b"\xc1"})
    await _orphan(sm, "Other", 4)
    async with running(_runtime(namespace, redis_url, visibility_timeout=0.5)):
        dead = await _one_dead_letter(sm)
    assert "poison" not in dead.error and "delivered" not in dead.error, dead.error
    assert dead.deliveries == 5
    await _nothing_pending(redis, sm, "Other")


# -- reclaiming within the room -------------------------------------------------------
async def test_reclaim_rounds_keep_the_worker_within_its_in_flight_bound(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A worker whose executions hang holds at most max_inflight states (batch_size * 4
    + workers = 5 here; a read during a claim may overshoot by its count once), however
    many reclaim rounds pass: the room a claim reserves is given back, not taken twice.
    Bug: the reservation subtracted instead of added (each round frees room it never
    took, and the reader takes more and more)."""
    stream = sm.keys.queue("Held")
    await sm.enqueue_many("Held", [{"x": i} for i in range(30)])
    rt = Runtime(
        namespace=namespace,
        name="m",
        nodes=[Held],
        redis_url=redis_url,
        batch_size=1,
        workers=1,
        visibility_timeout=0.2,  # a reclaim round every 0.1 s
        grace_period=0.5,
        prefetch=4,  # the window batch_size * 4 + workers, held by hanging executions too
    )
    async with running(rt):
        await until(lambda: _held_by(redis, stream, 5), "the worker fills its room")
        await asyncio.sleep(1.0)  # ten reclaim rounds: nothing to await for "no more"
        held = len(await pending_entries(redis, stream))
        Held.release.set()
    assert held <= 6, f"{held} states held, the bound is 5"


async def _held_by(redis: Redis, stream: str, n: int) -> bool:
    return len(await pending_entries(redis, stream)) >= n


async def test_a_poison_entry_is_claimed_while_a_suspect_still_runs(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Suspects are claimed one at a time, but an entry delivered max_deliveries times is
    claimed in the same round as the suspect running alone, and dead-lettered at once
    (not run). Bug: the claim not told the poison limit (the poison waits as one more
    suspect for the running one's wait, a visibility timeout)."""
    stream = sm.keys.queue("Held")
    await sm.broker.ensure_groups(["Held"])
    suspect = await sm.enqueue("Held", {"x": 1})
    poison = await sm.enqueue("Held", {"x": 2})
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=10)
    [(first, _), (second, _)] = reply[0][1]
    for owner in range(2, 6):  # the poison: delivered 5 times; the suspect twice
        ids = [first, second] if owner == 2 else [second]
        await sm.client.xclaim(stream, GROUP, f"ghost-{owner}", 0, ids, idle=3_600_000)
    rt = Runtime(
        namespace=namespace, name="m", nodes=[Held], redis_url=redis_url, visibility_timeout=10
    )
    async with running(rt):
        await asyncio.wait_for(Held.started.wait(), 10)
        dead = await _one_dead_letter(sm, timeout=4)  # well within the 10 s wait
        assert not Held.release.is_set()
        Held.release.set()
        [done] = (await sm.wait_for_states("Held", [suspect], timeout=10)).values()
    assert dead.state_id == poison and "poison message" in dead.error
    assert done.status == "SUCCEEDED"


async def _orphan_all(sm: StateManager, node: str) -> list[bytes]:
    """Leave every entry of `node` pending, delivered once, to a worker gone long ago."""
    await sm.broker.ensure_groups([node])
    stream = sm.keys.queue(node)
    reply = await sm.client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=1000)
    ids = [bytes(entry_id) for entry_id, _ in reply[0][1]]
    await sm.client.xclaim(stream, GROUP, "ghost", 0, ids, idle=3_600_000, justid=True)
    return ids


async def _held_by_consumer(redis: Redis, stream: str, consumer: str) -> list[dict[str, Any]]:
    return [p for p in await pending_entries(redis, stream) if p["consumer"] == consumer]


async def test_a_claim_takes_no_more_orphans_than_the_room(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Thirty orphaned states and a worker with room for five: its first claim takes five
    (the rest wait for room). Bug: the room not passed to the claim (it takes its default
    count, a hundred)."""
    stream = sm.keys.queue("Held")
    await sm.enqueue_many("Held", [{"x": i} for i in range(30)])
    await _orphan_all(sm, "Held")
    rt = Runtime(
        namespace=namespace,
        name="m",
        nodes=[Held],
        redis_url=redis_url,
        batch_size=1,
        workers=1,
        visibility_timeout=10,
        grace_period=0.5,
    )
    async with running(rt):
        await asyncio.wait_for(Held.started.wait(), 10)  # after the claim that fed it
        held = await _held_by_consumer(redis, stream, rt.consumer)
        Held.release.set()
    assert len(held) == 5, f"{len(held)} claimed, room for 5"


async def test_a_claim_returning_an_entry_already_held_still_takes_the_rest(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A claim returns, in id order, a state the worker is running (the test hands it to
    a dead worker, idle: as if taken over after a hang) and then that dead worker's
    orphan. The one it runs is skipped, the orphan taken and kept (heartbeats: it is not
    claimed again). Bug:
    `break` for `continue` at the own entry (the orphan is claimed but not held: it
    goes unheartbeaten and is reclaimed once more, one delivery closer to poison)."""
    stream = sm.keys.queue("Held")
    # batch 20, 1 executor: room for 81; the reader stops at 75 (room 6 is below half a
    # batch), which leaves the reclaimer room for both entries of its claim.
    await sm.enqueue_many("Held", [{"x": i} for i in range(75)])
    rt = Runtime(
        namespace=namespace,
        name="m",
        nodes=[Held],
        redis_url=redis_url,
        batch_size=20,
        workers=1,
        visibility_timeout=1.0,
        grace_period=0.5,
        prefetch=80,  # the window batch_size * 4 + workers, held by hanging executions too
    )
    async with running(rt):
        await until(lambda: _count_held(redis, stream, rt.consumer, 75), "the reader fills up")
        orphan = await redis.xadd(stream, {"x": "99"})
        await redis.xreadgroup(GROUP, "ghost", {stream: ">"}, count=1)
        await redis.xclaim(stream, GROUP, "ghost", 0, [orphan], idle=3_600_000, justid=True)
        [own, *_] = await _held_by_consumer(redis, stream, rt.consumer)
        await redis.xclaim(stream, GROUP, "ghost", 0, [own["id"]], idle=3_600_000, justid=True)
        await until(lambda: _count_held(redis, stream, rt.consumer, 76), "the orphan is claimed")
        await asyncio.sleep(2.5)  # past two visibility timeouts: it would be claimed again
        [taken] = [p for p in await pending_entries(redis, stream) if p["id"] == orphan]
        Held.release.set()
    assert taken["consumer"] == rt.consumer and taken["deliveries"] == 2, taken


async def _count_held(redis: Redis, stream: str, consumer: str, n: int) -> bool:
    return len(await _held_by_consumer(redis, stream, consumer)) >= n


async def test_the_next_suspect_is_claimed_as_soon_as_the_last_one_settles(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Suspects run one at a time; the next is claimed when the last one settles, not
    after its wait (a visibility timeout, 10 s here) runs out. Bug: the settle watched
    under another key (the wait always runs out)."""
    states = await sm.enqueue_many("Other", [{"x": 1}, {"x": 2}])
    stream = sm.keys.queue("Other")
    await sm.broker.ensure_groups(["Other"])
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=10)
    ids = [entry_id for entry_id, _ in reply[0][1]]
    await sm.client.xclaim(stream, GROUP, "ghost-2", 0, ids, idle=3_600_000)  # 2 deliveries
    rt = Runtime(
        namespace=namespace, name="m", nodes=[Other], redis_url=redis_url, visibility_timeout=10
    )
    async with running(rt):
        results = await sm.wait_for_states("Other", states, timeout=4)  # within the wait
    assert {r.status for r in results.values()} == {"SUCCEEDED"}


async def _orphans(sm: StateManager, node: str, deliveries: int = 2) -> None:
    """Leave every entry of `node` pending, delivered `deliveries` times (1 or 2), idle
    long; delivered twice it is a suspect when reclaimed."""
    stream = sm.keys.queue(node)
    await sm.broker.ensure_groups([node])
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=10)
    ids = [entry_id for entry_id, _ in reply[0][1]]
    again = deliveries == 1  # JUSTID: not counted as a delivery
    await sm.client.xclaim(stream, GROUP, "ghost-2", 0, ids, idle=3_600_000, justid=again)


@pytest.mark.parametrize("before", [1, 2], ids=["innocent", "suspect"])
async def test_a_reclaimed_state_failing_for_good_counts_its_deliveries(
    redis_url: str, namespace: str, sm: StateManager, before: int
) -> None:
    """A state delivered once (run with the rest when reclaimed) or twice (a suspect, run
    alone), reclaimed and then failing for good, is dead-lettered with the claim counted
    as one more delivery. Bugs: the deliveries passed as None, left out, off by one
    either way, or the suspect's execution bound passed as its deliveries."""
    Echo.failing = {1}
    state = await sm.enqueue("Echo", {"x": 1})
    await _orphans(sm, "Echo", before)
    async with running(_runtime(namespace, redis_url, visibility_timeout=10)):
        dead = await _one_dead_letter(sm)
    assert dead.state_id == state and dead.deliveries == before + 1
    assert dead.error.startswith("ValueError: x=1 refused"), dead.error


async def test_a_hung_suspect_is_cut_off_at_its_execution_bound(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A reclaimed suspect that hangs is cut off after ten visibility timeouts (2 s here)
    and fails under its retry policy (none: dead-lettered), freeing its executor. Bug:
    the suspect's bound not passed (it hangs for good)."""
    state = await sm.enqueue("Held", {"x": 1})
    await _orphans(sm, "Held")
    rt = Runtime(
        namespace=namespace,
        name="m",
        nodes=[Held],
        redis_url=redis_url,
        visibility_timeout=0.2,
        default_retry_policy=NO_RETRY,
    )
    async with running(rt):
        dead = await _one_dead_letter(sm)
    assert dead.state_id == state and "timed out after 2.0 s" in dead.error, dead.error


async def test_reclaiming_goes_on_after_a_suspect_settled(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A suspect reclaimed and settled, with no suspect after it: the reclaimer goes on
    and takes an orphan that becomes idle enough later. Bug: the finished suspect
    cleared to "" instead of None (the next wait unpacks it and the reclaimer dies)."""
    stream = sm.keys.queue("Other")
    await sm.broker.ensure_groups(["Other"])
    suspect, later = await sm.enqueue_many("Other", [{"x": 1}, {"x": 2}])
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=10)
    [(first, _), (second, _)] = reply[0][1]
    await sm.client.xclaim(stream, GROUP, "ghost-2", 0, [first], idle=3_600_000)
    await sm.client.xclaim(stream, GROUP, "ghost-1", 0, [second], idle=0, justid=True)
    # Visibility 2 s: the suspect is claimed in the first round, the other entry (idle
    # from now) rounds later, after the suspect settled.
    async with running(_runtime(namespace, redis_url, visibility_timeout=2.0)):
        done = await sm.wait_for_states("Other", [suspect, later], timeout=10)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}


# -- stopping -----------------------------------------------------------------------------
async def test_an_execution_running_past_the_grace_period_is_cut_off_at_its_end(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """An execution still running when the grace period (0.1 s) ends is cancelled then,
    and its state handed back to its stream. Bugs: the grace measured to the settles'
    later deadline (cut off 4 s late), or given at least a second."""
    state = await sm.enqueue("Held", {"x": 1})
    # block_ms 50: the reader's blocking read (which ends before the drain) returns soon.
    rt = Runtime(
        namespace=namespace,
        name="m",
        nodes=[Held],
        redis_url=redis_url,
        grace_period=0.1,
        block_ms=50,
    )
    async with running(rt):
        await asyncio.wait_for(Held.started.wait(), 10)
        stopped = time.monotonic()  # running() stops the Runtime on leaving the block
    assert Held.cancelled_at is not None
    assert Held.cancelled_at - stopped < 0.6, f"cut off after {Held.cancelled_at - stopped}s"
    assert await sm.pending("Held") == {"length": 1, "pending": 0, "delayed": 0}
    [(_, [(_, fields)])] = await sm.client.xread({sm.keys.queue("Held"): "0"})
    assert decode(b"0-0", fields).state_id == state


class Hang(BaseNode):
    """Runs until cancelled; `swallow`: answers the cancellation with an error of its own
    (cleanup code that raises), so the worker gets a failure instead of CancelledError."""

    started: ClassVar[int] = 0
    want: ClassVar[asyncio.Event]
    wanted: ClassVar[int] = 1
    swallow: ClassVar[bool] = False

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Hang.started += 1
        if Hang.started >= Hang.wanted:
            Hang.want.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if Hang.swallow:
                raise RuntimeError("cleanup failed") from None
            raise
        return self.Outputs(x=self.inputs.x)


def _hang(wanted: int, swallow: bool = False) -> None:
    Hang.started, Hang.wanted, Hang.swallow = 0, wanted, swallow
    Hang.want = asyncio.Event()


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WORKER_LOG]


async def test_the_stop_log_counts_what_ran_on_and_what_was_cut_short(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    """One state done earlier, two running when the grace period (0.1 s) ends: the stop
    log says 2 in flight, 0 finished and 2 cut short, and both go back to their stream
    (README, Guarantees: "the log says how many of each"). Bugs: the running count set
    to 1, stepped by 2, or not given back (`+= 1` / `-= 2` / `= 1` when one ends); the
    cut-short count set, stepped down or by 2."""
    _hang(2)
    caplog.set_level(logging.INFO, WORKER_LOG)
    rt = Runtime(namespace=namespace, name="m", nodes=[Echo, Hang], redis_url=redis_url,
                 grace_period=0.1, block_ms=50, default_retry_policy=NO_RETRY)  # fmt: skip
    async with running(rt):
        first = await sm.enqueue("Echo", {"x": 1})
        await sm.wait_for_states("Echo", [first], timeout=10)
        await sm.enqueue_many("Hang", [{"x": 1}, {"x": 2}])
        await asyncio.wait_for(Hang.want.wait(), 10)
    messages = _infos(caplog)
    assert any("handed back; finishing 2 in-flight" in m for m in messages), messages
    assert any("0 in-flight states finished, 2 cut short" in m for m in messages), messages
    assert await sm.pending("Hang") == {"length": 2, "pending": 0, "delayed": 0}


async def test_executions_failing_as_the_grace_period_cuts_them_off_are_handed_back(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    """Node code that answers the end-of-grace cancellation with an error of its own (two
    states): each is handed back (released, its failure not settled: it did not fail, it
    was cut off) and counted as cut short. Bugs: the count set, stepped down or by 2, or
    the release replaced by nothing / a release of no job (the settler dies)."""
    _hang(2, swallow=True)
    caplog.set_level(logging.INFO, WORKER_LOG)
    rt = Runtime(namespace=namespace, name="m", nodes=[Hang], redis_url=redis_url,
                 grace_period=0.1, block_ms=50, default_retry_policy=NO_RETRY)  # fmt: skip
    async with running(rt):
        states = await sm.enqueue_many("Hang", [{"x": 1}, {"x": 2}])
        await asyncio.wait_for(Hang.want.wait(), 10)
    messages = _infos(caplog)
    assert any("0 in-flight states finished, 2 cut short" in m for m in messages), messages
    assert not await sm.dead_letters()
    assert await sm.pending("Hang") == {"length": 2, "pending": 0, "delayed": 0}
    [(_, entries)] = await sm.client.xread({sm.keys.queue("Hang"): "0"})
    assert {decode(b"0-0", fields).state_id for _, fields in entries} == set(states)
