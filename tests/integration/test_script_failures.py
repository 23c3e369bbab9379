"""Every Lua script against the failures it can meet, on the real redis-server: entries too
big to unpack, streams whose id space is used up, keys of the wrong type, an error nobody
foresaw, maxmemory. Redis does not roll back a script that fails part-way, so each test
asserts that nothing is lost (the state is dead-lettered with a readable reason or is
still pending), that the rest of the batch settles, and that state ids survive release
and redrive."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import msgpack
import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
)
from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD, GROUP
from exospherehost.broker.runstart import RunStart
from exospherehost.broker.streams import Broker, KeyRefused
from exospherehost.client.deadletters import DeadLetter, RedriveRefused
from exospherehost.runtime.outcomes import Completed, Job, Released
from exospherehost.runtime.settle import SettleConfig, plan_settle
from exospherehost.testing.server import PrivateServer
from tests.integration.apps.scripted import Echo, Other
from tests.integration.apps.scripted import exhaust as _exhaust
from tests.integration.helpers import running

WIDE = 5000  # fields of a "wide" plain entry: more than Lua's unpack takes (~8000 values)
NO_RETRY = RetryPolicyModel(max_retries=0)


class Hang(BaseNode):
    """Hangs until cancelled while `hang` is set (a worker stopped under it releases it)."""

    hang: ClassVar[bool] = True
    started: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Hang.started.set()
        if Hang.hang:
            await asyncio.Event().wait()
        return self.Outputs(x=self.inputs.x)


@pytest.fixture(autouse=True)
def _fresh_nodes() -> None:
    Echo.failing = set()
    Hang.hang = True
    Hang.started = asyncio.Event()


def _runtime(ns: str, url: str, nodes: list[type[BaseNode]], **kw: Any) -> Runtime:
    kw.setdefault("default_retry_policy", NO_RETRY)
    return Runtime(namespace=ns, name="t", nodes=nodes, redis_url=url, **kw)


def _wide(x: int) -> dict[str, str]:
    fields = {f"pad{i}": "v" for i in range(WIDE)}
    fields["x"] = str(x)
    return fields


async def _dead_letters(redis: Redis, sm: StateManager, n: int, timeout: float = 20) -> list[Any]:
    """Wait (XREAD BLOCK on the dead-letter stream) until it holds `n` letters."""
    deadline = time.monotonic() + timeout
    while len(letters := await sm.dead_letters()) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(letters)} of {n} dead letters after {timeout}s: {letters}"
        last = letters[-1].id if letters else "0"
        await redis.xread({sm.keys.dead(): last}, block=int(min(left, 1) * 1000))
    assert len(letters) == n, letters
    return letters


async def _succeeded(sm: StateManager, node: str, state_id: str, timeout: float = 20) -> Any:
    """Follow `node`'s output stream until `state_id` has a SUCCEEDED result."""
    deadline = time.monotonic() + timeout
    after = "0"
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no SUCCEEDED result of {node} state {state_id} in {timeout}s"
        for result in await sm.outputs(node, after=after, block_ms=int(min(left, 1) * 1000)):
            after = result.entry_id
            if result.state_id == state_id and result.status == "SUCCEEDED":
                return result


async def _nothing_pending(redis: Redis, sm: StateManager, *nodes: str) -> None:
    for node in nodes:
        stream = sm.keys.queue(node)
        assert (await redis.xpending(stream, GROUP))["pending"] == 0, node
        assert await redis.xlen(stream) == 0, node


# -- settle.lua ---------------------------------------------------------------------------


async def test_wide_plain_entries_succeed_fail_and_redrive_under_their_ids(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    Echo.failing = {1}
    queue = sm.keys.queue("Echo")
    good = (await redis.xadd(queue, _wide(3))).decode()
    bad = (await redis.xadd(queue, _wide(1))).decode()
    async with running(_runtime(namespace, redis_url, [Echo])):
        assert (await _succeeded(sm, "Echo", good)).outputs == {"x": 3}
        [dead] = await _dead_letters(redis, sm, 1)
        assert dead.state_id == bad and dead.error == "ValueError: x=1 refused"
        assert len(dead.original) == WIDE + 1
        # Redriven as one envelope under its original id (a plain re-add of 5,001
        # fields could not even be unpacked by the script, after it deleted the letter).
        Echo.failing = set()
        assert await sm.redrive(dead.id) is True
        assert (await _succeeded(sm, "Echo", bad)).outputs == {"x": 1}
    assert await sm.dead_letters() == []
    await _nothing_pending(redis, sm, "Echo")


async def test_wide_plain_entry_released_at_shutdown_keeps_its_id(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    queue = sm.keys.queue("Hang")
    state = (await redis.xadd(queue, _wide(7))).decode()
    async with running(_runtime(namespace, redis_url, [Hang], grace_period=0.1)):
        await asyncio.wait_for(Hang.started.wait(), 10)
    # Stopped mid-execution: back on its stream as one envelope, same id, one delivery.
    [(entry_id, fields)] = await redis.xrange(queue)
    assert list(fields) == [ENVELOPE_FIELD.encode()]
    env = decode(entry_id, fields)
    assert env.state_id == state and env.foreign and env.deliveries == 1
    assert len(env.inputs) == WIDE + 1 and env.inputs["x"] == "7"
    assert (await redis.xpending(queue, GROUP))["pending"] == 0
    Hang.hang = False
    async with running(_runtime(namespace, redis_url, [Hang])):
        assert (await _succeeded(sm, "Hang", state)).outputs == {"x": 7}
    await _nothing_pending(redis, sm, "Hang")
    assert await sm.dead_letters() == []


async def test_state_hanging_until_each_shutdown_is_dead_lettered_as_poison(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    [state] = await sm.enqueue_many("Hang", [{"x": 1}])
    for _ in range(2):
        Hang.started = asyncio.Event()
        rt = _runtime(namespace, redis_url, [Hang], grace_period=0.1, max_deliveries=2)
        async with running(rt):
            await asyncio.wait_for(Hang.started.wait(), 10)
    [dead] = await sm.dead_letters()
    assert dead.state_id == state and dead.deliveries == 2
    assert "delivered 2 times without being settled" in dead.error
    await _nothing_pending(redis, sm, "Hang")


async def test_output_stream_with_used_up_ids_dead_letters_only_its_state(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    await _exhaust(redis, sm.keys.output("Other"))
    good = await sm.enqueue_many("Echo", [{"x": i} for i in range(5)])
    [blocked] = await sm.enqueue_many("Other", [{"x": 9}])
    async with running(_runtime(namespace, redis_url, [Echo, Other])):
        results = await sm.wait_for_states("Echo", good, timeout=20)
        [dead] = await _dead_letters(redis, sm, 1)
    assert {r.outputs["x"] for r in results.values()} == set(range(5))
    assert dead.state_id == blocked and dead.node == "Other"
    assert "cannot settle Completed" in dead.error and "used up its entry ids" in dead.error
    await _nothing_pending(redis, sm, "Echo", "Other")


async def test_retry_into_a_wrong_typed_delayed_key_is_dead_lettered(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    Echo.failing = {1}
    await redis.set(sm.keys.delayed("Echo"), "not a zset")
    states = await sm.enqueue_many("Echo", [{"x": 1}, {"x": 2}])
    rt = _runtime(namespace, redis_url, [Echo], default_retry_policy=RetryPolicyModel())
    async with running(rt):
        ok = await _succeeded(sm, "Echo", states[1])
        [dead] = await _dead_letters(redis, sm, 1)
    assert ok.outputs == {"x": 2}
    assert dead.state_id == states[0]
    assert "holds a string, not a zset" in dead.error
    await _nothing_pending(redis, sm, "Echo")


def _pair_graph(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Echo", namespace=ns, identifier="a", inputs={"x": 1},
                       next_nodes=["b"]),
        GraphNodeModel(node_name="Other", namespace=ns, identifier="b",
                       inputs={"x": "${{ a.outputs.x }}"}),
    ]  # fmt: skip


async def test_successor_stream_with_used_up_ids_fails_the_run_instead_of_losing_it(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    await _exhaust(redis, sm.keys.queue("Other"))
    async with running(_runtime(namespace, redis_url, [Echo, Other])):
        await sm.upsert_graph("g", _pair_graph(namespace), secrets={})
        run = await sm.trigger("g")
        status = await sm.wait(run, timeout=20)
    assert status.status == "FAILED" and status.nodes["a"].failed == 1
    [dead] = await sm.dead_letters()
    assert dead.run_id == run and dead.identifier == "a"
    assert "used up its entry ids" in dead.error
    await _nothing_pending(redis, sm, "Echo")


async def _trigger_then(sm: StateManager, redis_url: str, namespace: str) -> str:
    """A run of a one-node graph whose root state waits (no Runtime runs meanwhile)."""
    async with running(_runtime(namespace, redis_url, [Echo])):
        await sm.upsert_graph(
            "one",
            [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="a",
                            inputs={"x": 4})],
            secrets={},
        )  # fmt: skip
    return await sm.trigger("one")


async def test_unforeseen_error_after_the_ack_still_dead_letters_the_state(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    run = await _trigger_then(sm, redis_url, namespace)
    # A corrupted counter: HINCRBY fails after the XACK (the pre-pass checks types only);
    # the script's pcall catches it and the worker writes the dead letter.
    await redis.hset(sm.keys.run(run), "open", "not a number")
    others = await sm.enqueue_many("Echo", [{"x": i} for i in range(3)])
    async with running(_runtime(namespace, redis_url, [Echo])):
        done = await sm.wait_for_states("Echo", others, timeout=20)
        [dead] = await _dead_letters(redis, sm, 1)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert dead.run_id == run and "not an integer" in dead.error
    await _nothing_pending(redis, sm, "Echo")


async def test_wrong_typed_run_hash_dead_letters_the_state(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    run = await _trigger_then(sm, redis_url, namespace)
    await redis.delete(sm.keys.run(run))
    await redis.set(sm.keys.run(run), "clobbered")
    others = await sm.enqueue_many("Echo", [{"x": i} for i in range(3)])
    async with running(_runtime(namespace, redis_url, [Echo])):
        done = await sm.wait_for_states("Echo", others, timeout=20)
        [dead] = await _dead_letters(redis, sm, 1)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert dead.run_id == run and "WRONGTYPE" in dead.error
    await _nothing_pending(redis, sm, "Echo")


async def test_settle_refuses_only_the_entry_whose_keys_are_bad(
    redis: Redis, namespace: str
) -> None:
    """Script level: a refused entry is not acked (still pending) and names its reason;
    the others in the call settle."""
    broker = Broker(redis, namespace)
    keys = broker.keys
    await broker.ensure_groups(["Echo"])
    await _exhaust(redis, keys.output("Echo"))
    plain = [(await redis.xadd(keys.queue("Echo"), _wide(i))) for i in range(2)]
    [(_, entries)] = await broker.read("w", ["Echo"], 10, None)
    jobs = [Job("Echo", keys.queue("Echo"), e, f, decode(e, f)) for e, f in entries]
    cfg = SettleConfig(keys=keys, graphs={})
    # The first is released (one envelope, its id kept); the second's output is refused.
    plan = plan_settle([Released(jobs[0]), Completed(jobs[1], [{"x": 1}], False)], cfg)
    flags = await broker.settle(plan)
    assert flags == [1, 4] and "used up its entry ids" in flags.errors[1]
    pending = await redis.xpending_range(keys.queue("Echo"), GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [plain[1]]
    [(_, released)] = await redis.xrange(keys.queue("Echo"), min="(" + plain[1].decode())
    assert decode(b"0-0", released).state_id == plain[0].decode()


async def test_settle_is_refused_up_front_over_maxmemory(namespace: str) -> None:
    """The `#!lua` shebang: over maxmemory Redis refuses the whole call before its first
    write (without it, writes after the XACK would go on past maxmemory)."""
    server = PrivateServer()
    info = server.start()
    client = Redis.from_url(info.url, decode_responses=False)
    try:
        broker = Broker(client, namespace)
        keys = broker.keys
        await broker.ensure_groups(["Echo"])
        await client.xadd(keys.queue("Echo"), {ENVELOPE_FIELD: encode(Envelope("s", {}))})
        [(_, [(entry_id, fields)])] = await broker.read("w", ["Echo"], 10, None)
        job = Job("Echo", keys.queue("Echo"), entry_id, fields, decode(entry_id, fields))
        plan = plan_settle([Completed(job, [{"x": 1}], False)], SettleConfig(keys, {}))
        used = (await client.info("memory"))["used_memory"]
        await client.config_set("maxmemory", str(used // 2))  # over it at once
        with pytest.raises(ResponseError, match="maxmemory"):
            await broker.settle(plan)
        assert (await client.xpending(keys.queue("Echo"), GROUP))["pending"] == 1
        assert not await client.exists(keys.output("Echo"))
        await client.config_set("maxmemory", "0")
        assert await broker.settle(plan) == [1]
        assert await client.xlen(keys.output("Echo")) == 1
    finally:
        await client.aclose()
        server.stop()


async def test_trigger_into_a_used_up_root_stream_writes_nothing(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Not a script but a MULTI, which does not roll back either: a refused root XADD
    would leave a run RUNNING with no state. The keys are checked before it."""
    await _trigger_then(sm, redis_url, namespace)  # registers the graph
    before = set(await redis.keys(sm.keys.run("*")))
    await _exhaust(redis, sm.keys.queue("Echo"))
    with pytest.raises(KeyRefused, match="used up its entry ids"):
        await sm.trigger("one")
    await redis.delete(sm.keys.queue("Echo"))
    await redis.set(sm.keys.delayed("Echo"), "clobbered")
    with pytest.raises(KeyRefused, match="holds a string, not a zset"):
        await sm.trigger("one", start_delay=1000)
    assert set(await redis.keys(sm.keys.run("*"))) == before
    assert await redis.zcard(sm.keys.runs("one")) == 1  # only the first run
    await redis.delete(sm.keys.delayed("Echo"))
    run = await sm.trigger("one")  # healthy keys again: it starts
    async with running(_runtime(namespace, redis_url, [Echo])):
        assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"


# -- redrive.lua and redrive_all ----------------------------------------------------------


async def _letter(redis: Redis, sm: StateManager, node: str, original: dict[str, Any],
                  run: str = "", state: str = "") -> str:  # fmt: skip
    fields = {
        "node": node, "state": state, "run": run, "identifier": "a" if run else "",
        "attempts": 1, "deliveries": 1, "error": "boom", "traceback": "", "time_ms": 1,
        "entry": state, "original": msgpack.packb(original),
    }  # fmt: skip
    return (await redis.xadd(sm.keys.dead(), fields)).decode()


async def test_redrive_all_goes_on_past_letters_it_cannot_redrive(
    redis: Redis, redis_url: str, namespace: str, sm: StateManager
) -> None:
    await redis.set(sm.keys.queue("Blocked"), "not a stream")
    await _exhaust(redis, sm.keys.queue("Full"))
    plain = {b"x": b"5"}
    expired = await _letter(redis, sm, "Echo", plain, run="gone", state="1-1")
    bad_name = await _letter(redis, sm, "bad:name", plain, state="1-2")
    good = await _letter(redis, sm, "Echo", plain, state="1-3")
    blocked = await _letter(redis, sm, "Blocked", plain, state="1-4")
    full = await _letter(redis, sm, "Full", plain, state="1-5")
    report = await sm.redrive_all()
    assert report.redriven == 1
    assert set(report.skipped) == {expired, bad_name, blocked, full}
    assert "run gone expired" in report.skipped[expired]
    assert "node name 'bad:name' is not valid" in report.skipped[bad_name]
    assert "holds a string, not a stream" in report.skipped[blocked]
    assert "used up its entry ids" in report.skipped[full]
    # The skipped ones are still dead letters, untouched; the good one kept its id.
    assert [d.id for d in await sm.dead_letters()] == [expired, bad_name, blocked, full]
    with pytest.raises(RedriveRefused, match="not a stream"):
        await sm.redrive(blocked)
    async with running(_runtime(namespace, redis_url, [Echo])):
        assert (await _succeeded(sm, "Echo", "1-3")).outputs == {"x": 5}
    assert good not in [d.id for d in await sm.dead_letters()]


async def test_redrive_of_an_undecodable_entry_too_wide_to_re_add_is_refused(
    redis: Redis, namespace: str, sm: StateManager
) -> None:
    original = {f"k{i}".encode(): b"\xff" for i in range(WIDE)}
    letter = await _letter(redis, sm, "Echo", original, state="1-1")
    with pytest.raises(ValueError, match="more than can be re-added"):
        await sm.redrive(letter)
    assert [d.id for d in await sm.dead_letters()] == [letter]
    assert isinstance(await sm.dead_letter(letter), DeadLetter)


# -- promote.lua, publish.lua, cron_fire.lua, store_set.lua -------------------------------


async def test_promote_skips_a_bad_pair_and_moves_the_others(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    keys = broker.keys
    env = encode(Envelope("s", {"x": 1}))
    for node in ("Good", "BadStream", "BadZset"):
        if node != "BadZset":
            await redis.zadd(keys.delayed(node), {env: 1})
    await redis.set(keys.queue("BadStream"), "not a stream")
    await redis.set(keys.delayed("BadZset"), "not a zset")
    moved, next_due = await broker.promote(["BadZset", "BadStream", "Good"])
    assert (moved, next_due) == (1, -1)
    assert await redis.xlen(keys.queue("Good")) == 1
    assert await redis.zcard(keys.delayed("BadStream")) == 1  # still delayed, not lost


async def test_publish_to_a_used_up_stream_adds_nothing(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    await _exhaust(redis, broker.keys.queue("Echo"))
    with pytest.raises(ResponseError, match="used up its entry ids"):
        await broker.publish("Echo", [encode(Envelope(f"s{i}", {})) for i in range(3)])
    assert await redis.xlen(broker.keys.queue("Echo")) == 0


async def test_cron_fire_into_a_used_up_stream_writes_nothing(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    keys = broker.keys
    await redis.hset(keys.graphs(), "g", 1)
    await _exhaust(redis, keys.queue("Echo"))
    start = RunStart(
        run_id="r1", graph="g", run_key=keys.run("r1"), run_fields={"status": "RUNNING"},
        store_key=keys.run_store("r1"), store={f"k{i}": b"v" for i in range(WIDE)},
        index_key=keys.runs("g"), created_ms=1, target_key=keys.queue("Echo"), due_ms=0,
        envelope=encode(Envelope("s", {})),
    )  # fmt: skip
    with pytest.raises(ResponseError, match="used up its entry ids"):
        await broker.cron_fire(start, 1, 100, 60)
    assert not await redis.exists(keys.cron_marker("g", 100), keys.run("r1"), keys.run_store("r1"))
    # Into a healthy stream the same fire (a 5,000-key store) goes through.
    await redis.delete(keys.queue("Echo"))
    assert await broker.cron_fire(start, 1, 100, 60) == 1
    assert await redis.hlen(keys.run_store("r1")) == WIDE
    assert await redis.xlen(keys.queue("Echo")) == 1


async def test_store_set_writes_thousands_of_keys_or_nothing(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    keys = broker.keys
    await redis.hset(keys.run("r"), "status", "RUNNING")
    assert await broker.store_set("r", {f"k{i}": b"v" for i in range(WIDE)}) is True
    assert await redis.hlen(keys.run_store("r")) == WIDE
    await redis.hset(keys.run("r2"), "status", "RUNNING")
    await redis.set(keys.run_store("r2"), "clobbered")
    with pytest.raises(ResponseError, match="not a hash"):
        await broker.store_set("r2", {"k": b"v"})
