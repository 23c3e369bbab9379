"""Scenario 4: bad entries of many kinds added with plain XADD by a foreign client, among good
ones. Every good state is done, each bad one is dead-lettered once with a short reason naming
the problem, nothing is left pending and the worker goes on serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from redis.asyncio import Redis

from exospherehost import GraphNodeModel, StateManager
from tests.chaos.apps import WorkerConfig, runtime
from tests.chaos.harness import (
    all_outputs,
    assert_each_once,
    assert_settled,
    dead_letters,
    results_of,
    until,
)
from tests.integration.helpers import running

DEPTH = 100_000  # far past Python's recursion limit and msgpack's nesting limit
MANY = 5_000  # fields of one entry: more than a Lua unpack() takes


def env(**fields: Any) -> dict[str, bytes]:
    """A forged `_exo` envelope."""
    return {"_exo": msgpack.packb(fields)}


def graph_env(graph: str, ident: str, sid: str, version: int = 1) -> dict[str, bytes]:
    inputs = {"name": "x", "data": {}}
    return env(v=1, i=sid, **{"in": inputs}, r="run-x", g=graph, gv=version, n=ident)


def mentions(*words: str) -> Callable[[str], bool]:
    """The reason names every one of `words` (case-insensitive)."""
    return lambda error: all(w.lower() in error.lower() for w in words)


def mentions_any(*words: str) -> Callable[[str], bool]:
    return lambda error: any(w.lower() in error.lower() for w in words)


# name -> (entry fields, what its dead letter's reason must say)
BAD: dict[str, tuple[dict[Any, Any], Callable[[str], bool]]] = {
    "deep JSON in a dict field": (
        {"name": "deep", "data": '{"a":' * DEPTH + "1" + "}" * DEPTH},
        mentions_any("recursion", "nest", "deep", "depth"),
    ),
    "deep msgpack envelope": (
        {"_exo": b"\x91" * DEPTH + b"\xc0"},
        mentions("not valid msgpack"),
    ),
    "non-UTF-8 value": ({"name": b"\xff\xfe\xfd", "data": "{}"}, mentions("'name'", "UTF-8")),
    "non-UTF-8 field name": (
        {b"\xff\xfe": "x", "name": "n", "data": "{}"},
        mentions("UTF-8"),
    ),
    "garbage envelope": ({"_exo": b"\xc1\xc1 garbage"}, mentions("not valid msgpack")),
    "envelope of another version": (
        env(v=99, i="s-v", **{"in": {}}),
        mentions("version 99", "not supported"),
    ),
    "envelope not a map": ({"_exo": msgpack.packb([1, 2, 3])}, mentions("must be a msgpack map")),
    "state id not a string": (env(v=1, i=7, **{"in": {}}), mentions("state id", "'i'")),
    "inputs not a map": (env(v=1, i="s-in", **{"in": "x"}), mentions("'in'", "map")),
    "attempt negative": (env(v=1, i="s-a", a=-1, **{"in": {}}), mentions("attempt 'a'")),
    "ctx not a map": (env(v=1, i="s-c", c=[1], **{"in": {}}), mentions("ctx 'c'")),
    "groups not strings": (env(v=1, i="s-gr", gr={"u": 1}, **{"in": {}}), mentions("'gr'")),
    "path not integers": (env(v=1, i="s-p", p=["x"], **{"in": {}}), mentions("path 'p'")),
    "unite not a string": (env(v=1, i="s-u", u=5, **{"in": {}}), mentions("unite 'u'")),
    "envelope with extra fields": (
        {"_exo": msgpack.packb({"v": 1, "i": "s-x", "in": {}}), "extra": "1"},
        mentions("unexpected extra fields", "extra"),
    ),
    "inputs of the wrong type": (
        env(v=1, i="s-t", **{"in": {"name": 5, "data": {}}}),
        mentions("name", "valid string"),
    ),
    "5,000 fields, one missing": (
        {"name": "many", **{f"f{i}": "v" for i in range(MANY)}},
        mentions("data", "Field required"),
    ),
    "huge value": ({"name": "huge", "data": "x" * 2_000_000}, mentions("data", "dictionary")),
    "unknown graph": (graph_env("nope", "only", "s-g"), mentions("graph 'nope'", "not found")),
    "unknown node of a graph": (graph_env("solo", "ghost", "s-n"), mentions("no node 'ghost'")),
}


async def test_foreign_bad_entries_are_dead_lettered_and_good_ones_done(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    q = sm.keys.queue("SampleNode")
    rt = runtime(redis_url, namespace, WorkerConfig(nodes=("SampleNode",)))
    async with running(rt):
        doc = await sm.upsert_graph(
            "solo",
            [
                GraphNodeModel(
                    node_name="SampleNode",
                    namespace=namespace,
                    identifier="only",
                    inputs={"name": "x", "data": {}},
                )
            ],
            validation_timeout=30,
        )
        # Versions are not small counters (they never repeat after data loss): name the real one.
        bad = dict(BAD)
        ghost = graph_env("solo", "ghost", "s-n", doc["version"])
        bad["unknown node of a graph"] = (ghost, BAD["unknown node of a graph"][1])
        good = await sm.enqueue_many(
            "SampleNode", [{"name": f"a{i}", "data": {}} for i in range(100)]
        )
        entry_of: dict[str, str] = {}
        for name, (fields, _) in bad.items():
            entry_of[name] = (await redis.xadd(q, fields)).decode()
            # Good plain entries in between, one of them with thousands of extra fields.
            good.append((await redis.xadd(q, {"name": name, "data": '{"k": 1}'})).decode())
        wide = {"name": "wide", "data": "{}", **{f"f{i}": "v" for i in range(MANY)}}
        good.append((await redis.xadd(q, wide)).decode())
        good += await sm.enqueue_many(
            "SampleNode", [{"name": f"b{i}", "data": {}} for i in range(100)]
        )
        done = await results_of(sm, "SampleNode", good, timeout=30)

        async def all_dead() -> bool:
            return len(await dead_letters(redis, sm.keys)) >= len(BAD)

        async def which() -> str:
            seen = {d.entry for d in await dead_letters(redis, sm.keys)}
            return f"not dead-lettered: {[n for n, e in entry_of.items() if e not in seen]}"

        await until(all_dead, 30, which)
        # Still serving after all of that.
        later = await sm.enqueue_many("SampleNode", [{"name": "c", "data": {}}] * 20)
        done.update(await results_of(sm, "SampleNode", later, timeout=15))
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert_each_once(await all_outputs(sm, "SampleNode"), good + later)
    dead = await assert_settled(redis, namespace, ["SampleNode"])
    by_entry = {d.entry: d for d in dead}
    assert len(dead) == len(by_entry) == len(BAD), [d.error for d in dead]
    wrong = {}
    for name, (_, check) in bad.items():
        d = by_entry[entry_of[name]]
        if not (check(d.error) and len(d.error) < 1000 and d.node == "SampleNode"):
            wrong[name] = d.error[:300]
    assert not wrong, wrong
    assert not await redis.exists(sm.keys.run("run-x"))  # forged runs left no stray hash
