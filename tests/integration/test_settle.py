"""The settle script's guarantees, exercised directly on a real Redis."""

from __future__ import annotations

import msgpack
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD, GROUP, Keys
from exospherehost.broker.streams import Broker, parse_read_reply
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import GraphNodeModel
from exospherehost.runtime.outcomes import Completed, Failed, Job, Outcome
from exospherehost.runtime.settle import SettleConfig, plan_settle


def _graph(ns: str) -> CompiledGraph:
    return CompiledGraph.build(
        "g",
        1,
        [
            GraphNodeModel(
                node_name="A", namespace=ns, identifier="a", inputs={}, next_nodes=["b"]
            ),
            GraphNodeModel(
                node_name="B", namespace=ns, identifier="b", inputs={"x": "${{ a.outputs.x }}"}
            ),
        ],
    )


async def test_late_duplicate_settle_emits_nothing(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    keys = broker.keys
    await broker.ensure_groups(["A", "B"])
    env = Envelope("s1", {}, "run1", "g", 1, "a")
    await redis.hset(keys.run("run1"), mapping={"open": 1, "failed": 0, "status": "RUNNING"})
    await redis.xadd(keys.queue("A"), {ENVELOPE_FIELD: encode(env)})
    # A slow worker reads the state; its claim expires and a second worker takes it over.
    [(_, [(entry_id, fields)])] = await broker.read("slow", ["A"], 10, None)
    await redis.xclaim(keys.queue("A"), GROUP, "fast", 0, [entry_id])
    job = Job("A", keys.queue("A"), entry_id, fields, decode(entry_id, fields))
    cfg = SettleConfig(keys=keys, graphs={("g", 1): _graph(namespace)})

    def plan() -> object:
        return plan_settle([Completed(job, [{"x": 7}, {"x": 8}], fanout=True)], cfg)

    assert await broker.settle(plan()) == [1]  # the fast worker settles: two successors
    assert await broker.settle(plan()) == [0]  # the slow one finishes late: nothing emitted
    successors = await redis.xrange(keys.queue("B"))
    assert len(successors) == 2
    assert sorted(msgpack.unpackb(f[b"_exo"])["in"]["x"] for _, f in successors) == [7, 8]
    run = await redis.hgetall(keys.run("run1"))
    assert run[b"open"] == b"2" and run[b"s:a"] == b"1" and run[b"c:b"] == b"2"
    assert await redis.xlen(keys.queue("A")) == 0  # acked entries are deleted


async def test_run_finishes_exactly_once_and_expires(redis: Redis, namespace: str) -> None:
    broker = Broker(redis, namespace)
    keys = broker.keys
    await broker.ensure_groups(["B"])
    await redis.hset(keys.run("r"), mapping={"open": 2, "failed": 0, "status": "RUNNING"})
    for i in range(2):
        await redis.xadd(
            keys.queue("B"), {ENVELOPE_FIELD: encode(Envelope(f"b{i}", {}, "r", "g", 1, "b"))}
        )
    [(_, entries)] = await broker.read("w", ["B"], 10, None)
    jobs = [Job("B", keys.queue("B"), e, f, decode(e, f)) for e, f in entries]
    cfg = SettleConfig(keys=keys, graphs={("g", 1): _graph(namespace)}, run_retention_s=60)
    outcomes = [Completed(j, [{"y": 1}], fanout=False) for j in jobs]
    assert await broker.settle(plan_settle(outcomes, cfg)) == [1, 1]
    assert await broker.settle(plan_settle(outcomes, cfg)) == [0, 0]
    events = await redis.xrange(keys.events())
    assert [f[b"run"] for _, f in events] == [b"r"]  # finished once, not twice
    assert (await redis.hget(keys.run("r"), "status")) == b"SUCCEEDED"
    assert 0 < await redis.ttl(keys.run("r")) <= 60
    assert await redis.llen(keys.run_results("r")) == 2


def test_every_key_of_a_plan_shares_one_cluster_slot() -> None:
    ns = "clusterns"
    cfg = SettleConfig(keys=Keys(ns), graphs={("g", 1): _graph(ns)})
    env = Envelope("s", {}, "run", "g", 1, "a")
    job = Job("A", cfg.keys.queue("A"), b"1-0", {b"_exo": encode(env)}, env)
    plan = plan_settle([Completed(job, [{"x": 1}], fanout=False)], cfg)
    slots = {key_slot(k.encode()) for k in plan.keys}
    assert len(plan.keys) >= 4 and len(slots) == 1, plan.keys


@pytest.mark.parametrize("protocol", [2, 3])
async def test_read_parses_raw_replies_of_both_protocols(
    redis_url: str, namespace: str, protocol: int
) -> None:
    """Broker.read parses XREADGROUP's reply itself (redis-py's callback is skipped): the
    SDK envelope, a foreign multi-field entry and two streams in one read, on RESP2 and
    RESP3 alike."""
    client = Redis.from_url(redis_url, protocol=protocol)
    try:
        broker = Broker(client, namespace)
        keys = broker.keys
        await broker.ensure_groups(["A", "B"])
        env_id = await client.xadd(keys.queue("A"), {ENVELOPE_FIELD: encode(Envelope("s", {}))})
        foreign_id = await client.xadd(keys.queue("B"), {"name": "x", "n": "3", "t": "y"})
        got = dict(await broker.read("w", ["A", "B"], 10, None))
        assert got == {
            "A": [(env_id, {ENVELOPE_FIELD.encode(): encode(Envelope("s", {}))})],
            "B": [(foreign_id, {b"name": b"x", b"n": b"3", b"t": b"y"})],
        }
        assert await broker.read("w", ["A", "B"], 10, 10) == []  # BLOCK then nothing
    finally:
        await client.aclose()


def test_a_stream_with_a_nil_entry_list_is_skipped_not_fatal() -> None:
    """A reply `[stream, nil]` (seen under load) once killed the reader with a TypeError."""
    prefix = len("exo:{n}:q:")
    reply = [[b"exo:{n}:q:A", None], [b"exo:{n}:q:B", [[b"2-0", [b"k", b"v"]]]]]
    assert parse_read_reply(reply, prefix) == [("B", [(b"2-0", {b"k": b"v"})])]


def test_parse_read_reply_shapes() -> None:
    # An entry deleted while pending comes back with nil fields: decoded later as malformed.
    assert parse_read_reply([[b"exo:{n}:q:A", [[b"1-0", None]]]], len("exo:{n}:q:")) == [
        ("A", [(b"1-0", {})])
    ]
    # redis-py's parsed shape (should its callback ever run) is taken as is.
    parsed = [[b"exo:{n}:q:A", [(b"1-0", {b"f": b"v"})]]]
    assert parse_read_reply(parsed, len("exo:{n}:q:")) == [("A", [(b"1-0", {b"f": b"v"})])]
    assert parse_read_reply(None, 0) == [] and parse_read_reply([], 0) == []


async def test_settled_entries_leave_the_stream_but_older_in_flight_ones_stay(
    redis: Redis, namespace: str
) -> None:
    """Settling trims the stream below its oldest entry still in flight and deletes the
    settled ones above it: nothing settled lingers, nothing unsettled (pending, or not yet
    delivered to a second group) is lost, so a reclaim can still read it."""
    broker = Broker(redis, namespace)
    keys = broker.keys
    q = keys.queue("A")
    await broker.ensure_groups(["A"])
    ids = [await redis.xadd(q, {ENVELOPE_FIELD: encode(Envelope(f"s{i}", {}))}) for i in range(6)]
    [(_, old)] = await broker.read("slow", ["A"], 2, None)  # s0, s1: held by a slow worker
    [(_, new)] = await broker.read("fast", ["A"], 3, None)  # s2..s4 settle first
    cfg = SettleConfig(keys=keys, graphs={}, output_maxlen=0)

    def done(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Outcome]:
        return [Completed(Job("A", q, e, f, decode(e, f)), [{}], False) for e, f in entries]

    assert await broker.settle(plan_settle(done(new), cfg)) == [1, 1, 1]
    left = [e for e, _ in await redis.xrange(q)]
    assert left == [ids[0], ids[1], ids[5]]  # in flight, in flight, never delivered
    assert [e for e, _ in await redis.xclaim(q, GROUP, "other", 0, [ids[0]])] == [ids[0]]
    assert await broker.settle(plan_settle(done(old[1:]), cfg)) == [1]
    assert [e for e, _ in await redis.xrange(q)] == [ids[0], ids[5]]
    assert await broker.settle(plan_settle(done(old[:1]), cfg)) == [1]
    assert [e for e, _ in await redis.xrange(q)] == [ids[5]]
    # A second group (a foreign reader) that has not read anything keeps the rest alive.
    await redis.xgroup_create(q, "tap", id="0")
    [(_, last)] = await broker.read("fast", ["A"], 10, None)
    assert await broker.settle(plan_settle(done(last), cfg)) == [1]
    assert [e for e, _ in await redis.xrange(q)] == []  # XDEL'd as before: ours to delete
    assert await redis.xlen(q) == 0


async def test_trim_floor_survives_a_group_moved_back(redis: Redis, namespace: str) -> None:
    """After XGROUP SETID moves the group back, entries above its new last-delivered id
    are undelivered again: a settle must not trim them away."""
    broker = Broker(redis, namespace)
    keys = broker.keys
    q = keys.queue("A")
    await broker.ensure_groups(["A"])
    ids = [await redis.xadd(q, {ENVELOPE_FIELD: encode(Envelope(f"s{i}", {}))}) for i in range(4)]
    [(_, entries)] = await broker.read("w", ["A"], 4, None)
    await redis.xgroup_setid(q, GROUP, ids[1])  # an operator replays from s2
    cfg = SettleConfig(keys=keys, graphs={}, output_maxlen=0)
    jobs = [Job("A", q, e, f, decode(e, f)) for e, f in entries[:2]]
    assert await broker.settle(plan_settle([Completed(j, [{}], False) for j in jobs], cfg)) == [
        1,
        1,
    ]
    assert [e for e, _ in await redis.xrange(q)] == ids[2:]


async def test_states_of_a_missing_run_are_acked_without_effect(
    redis: Redis, namespace: str
) -> None:
    """An entry naming a run that does not exist (expired, or forged by a foreign client)
    is acked and removed, but emits nothing: no successors, no result, no stray run keys.
    A dead letter planned for it is still written (it says why the state failed)."""
    broker = Broker(redis, namespace)
    keys = broker.keys
    await broker.ensure_groups(["A", "B"])
    for node, ident in (("A", "a"), ("B", "b")):
        env = encode(Envelope(f"s-{ident}", {}, "ghost", "g", 1, ident))
        await redis.xadd(keys.queue(node), {ENVELOPE_FIELD: env})
    read = dict(await broker.read("w", ["A", "B"], 10, None))
    cfg = SettleConfig(keys=keys, graphs={("g", 1): _graph(namespace)})
    jobs = [Job(n, keys.queue(n), e, f, decode(e, f)) for n in ("A", "B") for e, f in read[n]]
    outcomes: list[Outcome] = [
        Completed(jobs[0], [{"x": 1}], False),  # would emit a B successor
        Failed(jobs[1], "boom", "tb", permanent=True),  # a leaf failing for good
    ]
    assert await broker.settle(plan_settle(outcomes, cfg)) == [2, 2]
    assert await redis.xlen(keys.queue("A")) == 0 and await redis.xlen(keys.queue("B")) == 0
    assert await redis.xpending(keys.queue("A"), GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    for key in (keys.run("ghost"), keys.run_results("ghost"), keys.run_history("ghost")):
        assert not await redis.exists(key), key
    [(_, dead)] = await redis.xrange(keys.dead())
    assert dead[b"state"] == b"s-b" and dead[b"error"] == b"boom"
