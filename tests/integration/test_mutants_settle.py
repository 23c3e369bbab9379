"""Settle plans that mutmut found unpinned (issue 16), each settled on a real Redis by the
settle script and checked against what the README documents: the dead-letter fields, the
run history records, results and counters, the retry envelope, the output stream and
fan-in groups. No Runtime: each test settles hand-made outcomes directly (milliseconds)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
from redis.asyncio import Redis

from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD, Keys
from exospherehost.broker.streams import Broker
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import (
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.runtime.outcomes import (
    Completed,
    Failed,
    Job,
    Malformed,
    Outcome,
    Pruned,
    Released,
    Requeued,
)
from exospherehost.runtime.settle import SettleConfig, as_failure, plan_dead_letters, plan_settle

NOW = 12.345  # the plan's clock: every time_ms below is 12345


def _graph(ns: str, strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS) -> CompiledGraph:
    """a -> b (fan-out) -> u, u unites the descendants of a."""
    return CompiledGraph.build(
        "g",
        1,
        [
            GraphNodeModel(
                node_name="A", namespace=ns, identifier="a", inputs={}, next_nodes=["b"]
            ),
            GraphNodeModel(
                node_name="B",
                namespace=ns,
                identifier="b",
                inputs={"x": "${{ a.outputs.x }}"},
                next_nodes=["u"],
            ),
            GraphNodeModel(
                node_name="U",
                namespace=ns,
                identifier="u",
                inputs={"first": "${{ a.outputs.x }}", "ys": "${{ b.outputs.y }}"},
                unites=UnitesModel(identifier="a", strategy=strategy),
            ),
        ],
        RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=500),
    )


class Env:
    def __init__(self, redis: Redis, namespace: str, **graph: Any) -> None:
        self.redis = redis
        self.broker = Broker(redis, namespace)
        self.keys: Keys = self.broker.keys
        self.cfg = SettleConfig(
            keys=self.keys,
            graphs={("g", 1): _graph(namespace, **graph)},
            clock=lambda: NOW,
            run_retention_s=60,
        )

    async def put_raw(
        self, node: str, fields: dict[bytes, bytes]
    ) -> tuple[bytes, dict[bytes, bytes]]:
        """Adds an entry to `node`'s queue and reads it (pending, as a worker holds it)."""
        await self.broker.ensure_groups([node])
        await self.redis.xadd(self.keys.queue(node), fields)  # type: ignore[arg-type]
        [(_, [(eid, got)])] = await self.broker.read("w", [node], 1, None)
        return eid, got

    async def put(self, node: str, fields: dict[bytes, bytes], deliveries: int = 1) -> Job:
        eid, got = await self.put_raw(node, fields)
        return Job(node, self.keys.queue(node), eid, got, decode(eid, got), deliveries)

    async def put_env(self, node: str, env: Envelope, deliveries: int = 1) -> Job:
        return await self.put(node, {ENVELOPE_FIELD.encode(): encode(env)}, deliveries)

    async def open_run(self, run_id: str = "r", open_: int = 1) -> None:
        await self.redis.hset(
            self.keys.run(run_id), mapping={"open": open_, "failed": 0, "status": "RUNNING"}
        )

    async def settle(self, outcomes: list[Outcome], **kw: Any) -> list[int]:
        return list(await self.broker.settle(plan_settle(outcomes, self.cfg, **kw)))

    async def dead(self) -> list[dict[str, bytes]]:
        return [
            {k.decode(): v for k, v in f.items()}
            for _, f in await self.redis.xrange(self.keys.dead())
        ]

    async def history(self, run_id: str = "r") -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keys.run_history(run_id), 0, -1)
        return [msgpack.unpackb(r) for r in raw]

    async def queued(self, node: str) -> list[Envelope]:
        return [decode(e, f) for e, f in await self.redis.xrange(self.keys.queue(node))]

    async def now_ms(self) -> float:
        sec, usec = await self.redis.time()
        return sec * 1000 + usec / 1000

    async def pending(self, node: str) -> int:
        info = await self.redis.xpending(self.keys.queue(node), "exo")
        return int(info["pending"])


async def test_a_malformed_entry_dead_letter_has_every_documented_field(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    fields = {b"x": b"\xff", b"y": b"2"}
    eid, got = await t.put_raw("A", fields)
    bad = Malformed("A", t.keys.queue("A"), eid, got, "not text", deliveries=2)
    assert await t.settle([bad]) == [1]
    [dead] = await t.dead()
    assert dead == {
        "node": b"A",
        "state": eid,  # no envelope: the entry id is its state id
        "run": b"",
        "identifier": b"",
        "attempts": b"0",  # never executed
        "deliveries": b"2",
        "error": b"not text",
        "traceback": b"",
        "time_ms": b"12345",
        "entry": eid,
        "original": msgpack.packb(fields),
    }
    assert await t.pending("A") == 0 and await redis.xlen(t.keys.queue("A")) == 0


async def test_dead_letters_of_failed_settles_ack_only_when_told(
    redis: Redis, namespace: str
) -> None:
    """plan_dead_letters (the worker's last resort): a dead letter per state with the
    reason; `acked=False` acks (and deletes) the pending entry, so a second such call for
    the same entry writes nothing; `acked=True` writes it whatever the entry's state."""
    t = Env(redis, namespace)
    plain_id, plain = await t.put_raw("A", {b"x": b"\xff"})
    bad = Malformed("A", t.keys.queue("A"), plain_id, plain, "undecodable", 3)
    env = Envelope("s1", {"k": 1}, "r", "g", 1, "a", attempt=1, deliveries=2)
    job = await t.put_env("A", env, deliveries=4)
    failures: list[tuple[Outcome, str]] = [(bad, "why m"), (Completed(job, [{}], False), "why j")]
    assert list(await t.broker.settle(plan_dead_letters(failures, t.cfg, acked=False))) == [1, 1]
    assert await t.pending("A") == 0
    assert list(await t.broker.settle(plan_dead_letters(failures, t.cfg, acked=False))) == [0, 0]
    assert len(await t.dead()) == 2  # the late duplicate wrote nothing
    assert list(await t.broker.settle(plan_dead_letters(failures, t.cfg, acked=True))) == [1, 1]
    dead = await t.dead()
    assert dead[0] == dead[2] and dead[1] == dead[3]
    m, j = dead[0], dead[1]
    assert m["node"] == b"A" and m["state"] == m["entry"] == plain_id
    assert (m["run"], m["identifier"], m["attempts"], m["deliveries"]) == (b"", b"", b"0", b"3")
    assert (m["error"], m["traceback"]) == (b"why m", b"")
    assert msgpack.unpackb(m["original"]) == {b"x": b"\xff"}
    assert j["node"] == b"A" and j["state"] == b"s1" and j["entry"] == job.entry_id
    assert (j["run"], j["identifier"], j["attempts"], j["deliveries"]) == (b"r", b"a", b"2", b"6")
    assert (j["error"], j["traceback"], j["time_ms"]) == (b"why j", b"", b"12345")
    assert msgpack.unpackb(j["original"]) == job.fields


async def test_refused_and_poisoned_states_are_dead_lettered_without_a_traceback(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    a = await t.put_env("A", Envelope("s1", {}))
    b = await t.put_env("A", Envelope("s2", {}, deliveries=2), deliveries=1)
    refused = as_failure(Completed(a, [{}], False), "refused: why")
    assert refused is not None
    assert await t.settle([refused, Released(b)], max_deliveries=3) == [1, 1]
    dead = await t.dead()
    assert [(d["state"], d["traceback"]) for d in dead] == [(b"s1", b""), (b"s2", b"")]
    assert dead[0]["error"] == b"refused: why" and dead[1]["deliveries"] == b"3"
    out = await redis.xrange(t.keys.output("A"))
    assert [(f[b"state"], f[b"status"]) for _, f in out] == [(b"s1", b"FAILED"), (b"s2", b"FAILED")]


async def test_graphless_dead_letter_has_empty_run_and_identifier(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    job = await t.put_env("A", Envelope("s", {"k": 1}, attempt=4, deliveries=1), deliveries=2)
    assert await t.settle([Failed(job, "boom", "TB")]) == [1]  # default policy: 3 retries
    [dead] = await t.dead()
    assert (dead["state"], dead["run"], dead["identifier"]) == (b"s", b"", b"")
    assert (dead["attempts"], dead["deliveries"], dead["traceback"]) == (b"5", b"3", b"TB")
    [(_, out)] = await redis.xrange(t.keys.output("A"))
    assert out == {b"state": b"s", b"status": b"FAILED", b"error": b"boom"}


async def test_a_graph_failure_retries_then_dead_letters_with_history_and_counters(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    await t.open_run()
    env = Envelope("s", {"x": 1}, "r", "g", 1, "a", ctx={"k": "v"}, deliveries=1)
    job = await t.put_env("A", env)
    assert await t.settle([Failed(job, "boom 1", "TB")]) == [1]
    # Retried per the graph's policy: same state, next attempt, delivered afresh.
    [(member, score)] = await redis.zrange(t.keys.delayed("A"), 0, -1, withscores=True)
    assert 0 < score - await t.now_ms() <= 500  # the graph's FIXED 500 ms backoff
    retry = decode(b"0-1", {ENVELOPE_FIELD.encode(): member})
    assert retry == Envelope("s", {"x": 1}, "r", "g", 1, "a", ctx={"k": "v"}, attempt=1)
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"open"] == b"1" and run[b"r:a"] == b"1" and run[b"status"] == b"RUNNING"
    last = await t.put_env("A", dataclasses.replace(retry, attempt=2), deliveries=2)
    assert await t.settle([Failed(last, "boom 3", "TB3")]) == [1]
    [dead] = await t.dead()
    assert (dead["run"], dead["identifier"], dead["attempts"]) == (b"r", b"a", b"3")
    assert (dead["error"], dead["traceback"], dead["deliveries"]) == (b"boom 3", b"TB3", b"2")
    assert await t.history() == [
        {"state": "s", "identifier": "a", "node": "A", "status": "RETRYING",
         "attempt": 1, "error": "boom 1", "time_ms": 12345},
        {"state": "s", "identifier": "a", "node": "A", "status": "FAILED",
         "attempt": 3, "error": "boom 3", "time_ms": 12345},
    ]  # fmt: skip
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"FAILED" and run[b"failed"] == b"1" and run[b"f:a"] == b"1"
    assert 0 < await redis.ttl(t.keys.run_history("r")) <= 60


async def test_fan_out_then_fan_in_runs_to_the_end_with_results_and_history(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    await t.open_run()
    a = await t.put_env("A", Envelope("sa", {}, "r", "g", 1, "a", ctx={"c": 1}))
    assert await t.settle([Completed(a, [{"x": 7}, {"x": 8}], True)]) == [1]
    bs = await t.queued("B")
    assert sorted(b.inputs["x"] for b in bs) == [7, 8]
    for b in bs:
        assert (b.run_id, b.graph, b.graph_version, b.identifier) == ("r", "g", 1, "b")
        assert (b.attempt, b.deliveries, b.foreign) == (0, 0, False)
        assert b.groups and b.state_id not in ("sa", "")
        assert "a" in b.ctx  # what u (below b) references of a, carried down
    assert bs[0].state_id != bs[1].state_id and bs[0].groups == bs[1].groups
    assert bs[0].path != bs[1].path
    run = await redis.hgetall(t.keys.run("r"))
    assert (run[b"open"], run[b"s:a"], run[b"c:b"]) == (b"2", b"1", b"2")
    await redis.delete(t.keys.queue("B"))
    jobs = [await t.put_env("B", b) for b in bs]
    assert await t.settle([Completed(jobs[0], [{"y": 1}], False)]) == [1]
    assert await t.queued("U") == []  # one member still open
    assert await t.settle([Completed(jobs[1], [{"y": 2}], False)]) == [1]
    [u] = await t.queued("U")
    assert (u.run_id, u.graph, u.graph_version, u.identifier) == ("r", "g", 1, "u")
    assert "a" in u.ctx and u.unite is not None
    # The uniting state's inputs: every member's outputs, collected in its group.
    collected = await redis.lrange(t.keys.collected("r", "u", u.unite), 0, -1)
    assert len(collected) == 2 and all(msgpack.unpackb(c) for c in collected)
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"RUNNING" and run[b"open"] == b"1"  # re-opened for u
    await redis.hset(t.keys.run_store("r"), "k", "v")
    ujob = await t.put_env("U", u)
    assert await t.settle([Completed(ujob, [{"z": 3}], False)]) == [1]
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"SUCCEEDED" and run[b"open"] == b"0"
    results = [msgpack.unpackb(r) for r in await redis.lrange(t.keys.run_results("r"), 0, -1)]
    for key in (t.keys.run_results("r"), t.keys.run_store("r"), t.keys.run_history("r")):
        assert 0 < await redis.ttl(key) <= 60  # expire with the finished run
    assert results == [{"identifier": "u", "state": u.state_id, "outputs": {"z": 3}}]
    history = await t.history()
    assert [(h["identifier"], h["status"], h["attempt"]) for h in history] == [
        ("a", "SUCCEEDED", 1), ("b", "SUCCEEDED", 1), ("b", "SUCCEEDED", 1), ("u", "SUCCEEDED", 1)
    ]  # fmt: skip
    assert [h["state"] for h in history] == ["sa", bs[0].state_id, bs[1].state_id, u.state_id]
    assert all(h["node"] == h["identifier"].upper() and h["error"] == "" for h in history)


async def _fan_out(t: Env) -> list[Job]:
    await t.open_run()
    a = await t.put_env("A", Envelope("sa", {}, "r", "g", 1, "a"))
    assert await t.settle([Completed(a, [{"x": 7}, {"x": 8}], True)]) == [1]
    bs = await t.queued("B")
    await t.redis.delete(t.keys.queue("B"))
    return [await t.put_env("B", b) for b in bs]


async def test_a_failed_member_stops_an_all_success_unite(redis: Redis, namespace: str) -> None:
    t = Env(redis, namespace)
    b1, b2 = await _fan_out(t)
    assert await t.settle([Failed(b1, "bad", "", permanent=True), Pruned(b2, {"why": "x"})]) == [
        1,
        1,
    ]
    assert await t.queued("U") == []
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"FAILED" and run[b"open"] == b"0"
    assert (run[b"f:b"], run[b"p:b"], run[b"failed"]) == (b"1", b"1", b"1")  # pruned: not failed
    assert b"did not fire: 2 branch state(s) failed or were pruned" in run[b"why:u"]
    history = await t.history()
    assert [(h["status"], h["error"]) for h in history[1:]] == [
        ("FAILED", "bad"), ("PRUNED", str({"why": "x"}))
    ]  # fmt: skip


async def test_an_all_done_unite_fires_after_a_failed_last_member(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace, strategy=UnitesStrategyEnum.ALL_DONE)
    b1, b2 = await _fan_out(t)
    assert await t.settle([Completed(b1, [{"y": 1}], False)]) == [1]
    assert await t.queued("U") == []
    assert await t.settle([Failed(b2, "bad", "", permanent=True)]) == [1]
    [u] = await t.queued("U")
    assert u.identifier == "u" and u.run_id == "r" and u.unite is not None
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"RUNNING" and run[b"open"] == b"1"  # re-opened for u
    assert 0 < await redis.ttl(t.keys.group("r", "u", u.unite)) <= 60
    assert 0 < await redis.ttl(t.keys.collected("r", "u", u.unite)) <= 60
    # A failed uniting state is retried as itself: same group (its unite), next attempt.
    ujob = await t.put_env("U", u)
    assert await t.settle([Failed(ujob, "boom", "")]) == [1]
    [(member, _)] = await redis.zrange(t.keys.delayed("U"), 0, -1, withscores=True)
    assert decode(b"0-1", {ENVELOPE_FIELD.encode(): member}) == dataclasses.replace(u, attempt=1)


async def test_graphless_pruned_and_requeued(redis: Redis, namespace: str) -> None:
    t = Env(redis, namespace)
    p = await t.put_env("A", Envelope("p", {}))
    q = await t.put_env("A", Envelope("q", {"k": 1}, attempt=1, deliveries=2))
    assert await t.settle([Pruned(p, {"n": 1}), Requeued(q, 5000)]) == [1, 1]
    [(_, out)] = await redis.xrange(t.keys.output("A"))
    assert out[b"state"] == b"p" and out[b"status"] == b"PRUNED"
    assert msgpack.unpackb(out[b"data"]) == {"n": 1}
    [(member, score)] = await redis.zrange(t.keys.delayed("A"), 0, -1, withscores=True)
    assert 4000 < score - await t.now_ms() <= 5000
    env = decode(b"0-1", {ENVELOPE_FIELD.encode(): member})
    assert env == Envelope("q", {"k": 1}, attempt=1)  # not a retry; deliveries afresh


async def test_a_retried_state_keeps_its_groups_path_and_foreign_flag(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    b1, _ = await _fan_out(t)
    assert b1.env.groups and b1.env.path
    plain = await t.put("A", {b"x": b"1"})  # a foreign (plain) entry: its id is its state id
    assert await t.settle([Failed(b1, "boom", ""), Failed(plain, "boom", "")]) == [1, 1]
    [(member, _)] = await redis.zrange(t.keys.delayed("B"), 0, -1, withscores=True)
    assert decode(b"0-1", {ENVELOPE_FIELD.encode(): member}) == dataclasses.replace(
        b1.env, attempt=1
    )
    [(member, score)] = await redis.zrange(t.keys.delayed("A"), 0, -1, withscores=True)
    env = decode(b"0-1", {ENVELOPE_FIELD.encode(): member})
    assert (env.state_id, env.inputs, env.foreign, env.attempt) == (
        plain.entry_id.decode(),
        {"x": "1"},
        True,
        1,
    )
    # Graphless: the Runtime's default policy (exponential, 2 s base): the first retry's delay.
    assert 1000 < score - await t.now_ms() <= 2000


async def test_graphless_success_and_fan_out_on_the_output_stream(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    one = await t.put_env("A", Envelope("one", {}))
    many = await t.put_env("A", Envelope("many", {}))
    outcomes: list[Outcome] = [
        Completed(one, [{"k": 1}], False),
        Completed(many, [{"k": 1}, {"k": 2}], True),
    ]
    assert await t.settle(outcomes) == [1, 1]
    out = [f for _, f in await redis.xrange(t.keys.output("A"))]
    assert [(f[b"state"], f[b"status"]) for f in out] == [
        (b"one", b"SUCCEEDED"),
        (b"many", b"SUCCEEDED"),
    ]
    assert msgpack.unpackb(out[0][b"outputs"]) == {"k": 1}  # a map
    assert msgpack.unpackb(out[1][b"outputs"]) == [{"k": 1}, {"k": 2}]  # fan-out: an array


async def test_an_unsettleable_output_is_dead_lettered_with_its_traceback(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    job = await t.put_env("A", Envelope("s", {}))
    assert await t.settle([Completed(job, [{"x": object()}], False)]) == [1]
    [dead] = await t.dead()
    assert (
        dead["error"].startswith(b"cannot settle Completed") and b"Traceback" in dead["traceback"]
    )


async def test_releases_and_successors_never_trim_a_long_queue(
    redis: Redis, namespace: str
) -> None:
    """Queues are not capped (only output streams are): a state released or a successor
    added to a queue holding hundreds of entries leaves every entry in place."""
    t = Env(redis, namespace)
    await t.open_run()
    released = await t.put_env("A", Envelope("s", {}))
    a = await t.put_env("A", Envelope("sa", {}, "r", "g", 1, "a"))
    await t.broker.ensure_groups(["B"])
    for node in ("A", "B"):
        for i in range(300):
            await redis.xadd(t.keys.queue(node), {"n": str(i)})
    assert await t.settle([Released(released), Completed(a, [{"x": 1}], False)]) == [1, 1]
    assert await redis.xlen(t.keys.queue("A")) == 301  # 300 + the released one (both read acked)
    assert await redis.xlen(t.keys.queue("B")) == 301


async def test_states_of_an_unknown_graph_version_still_fail_for_good(
    redis: Redis, namespace: str
) -> None:
    """A graph state whose graph version is not loaded (its groups cannot be resolved)
    is still dead-lettered and ends in its run."""
    t = Env(redis, namespace)
    await t.open_run()
    job = await t.put_env("B", Envelope("s", {}, "r", "g", 9, "b", groups={"u": "x1"}))
    assert await t.settle([Failed(job, "bad", "", permanent=True)]) == [1]
    [dead] = await t.dead()
    assert dead["state"] == b"s" and dead["run"] == b"r"
    run = await redis.hgetall(t.keys.run("r"))
    assert run[b"status"] == b"FAILED" and run[b"f:b"] == b"1"


async def test_a_poison_limit_of_one_dead_letters_at_the_first_release(
    redis: Redis, namespace: str
) -> None:
    t = Env(redis, namespace)
    job = await t.put_env("A", Envelope("s", {}))
    assert await t.settle([Released(job)], max_deliveries=1) == [1]
    [dead] = await t.dead()
    assert dead["state"] == b"s" and dead["deliveries"] == b"1"
