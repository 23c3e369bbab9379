"""Scenario 5: node code misbehaving in every way it can: BaseExceptions of all kinds
(CancelledError, a custom subclass, GeneratorExit, KeyboardInterrupt, SystemExit), a real
RecursionError, an Inputs validator raising KeyError, an Outputs serializer raising, a wrong
return type, an output msgpack cannot carry, and a node hanging past its `timeout`.

A worker process (SystemExit and KeyboardInterrupt must not take the test runner with them)
with 32 concurrent executions gets 32 bad states of each kind among hundreds of good ones:
the good are all done, each bad one fails for good after its retry and is dead-lettered
once with a reason naming its error, nothing is pending and the worker is still serving."""

from __future__ import annotations

import random
import re
from pathlib import Path

from redis.asyncio import Redis

from exospherehost import StateManager
from tests.chaos.apps import KIND_ERRORS, WorkerConfig
from tests.chaos.harness import (
    all_outputs,
    assert_each_once,
    assert_settled,
    by_state,
    fleet,
    results_of,
)

PER_KIND = 32  # as many as the worker runs at once: every executor meets each kind
GOOD = 400
TIMEOUT_REASON = re.compile(r"tim(e|ed) ?out", re.I)


async def test_misbehaving_nodes_end_in_outcomes(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    nodes = ("Chaotic", "Hanger")
    cfg = WorkerConfig(nodes=nodes, workers=32, retries=1, visibility=2.0)
    batch = [{"kind": "ok", "n": i} for i in range(GOOD)]
    batch += [{"kind": kind, "n": i} for kind in KIND_ERRORS for i in range(PER_KIND)]
    random.Random(5).shuffle(batch)  # bad ones spread among the good
    async with fleet(redis_url, namespace, cfg, tmp_path) as f:
        [worker] = await f.start_ready(redis)
        ids = await sm.enqueue_many("Chaotic", batch)
        hung = await sm.enqueue_many("Hanger", [{"i": i} for i in range(PER_KIND)])
        chaotic = await results_of(sm, "Chaotic", ids, timeout=60, watch=[worker])
        hanger = await results_of(sm, "Hanger", hung, timeout=30, watch=[worker])
        # Still serving after all of that.
        later = await sm.enqueue_many("Chaotic", [{"kind": "ok", "n": -1}] * 20)
        chaotic.update(await results_of(sm, "Chaotic", later, timeout=15, watch=[worker]))
        assert await f.stop(worker) == 0, worker.tail()
    kind_of = dict(zip(ids, (b["kind"] for b in batch), strict=True))
    kind_of.update(dict.fromkeys(later, "ok"))
    wrong = {}
    for sid, r in chaotic.items():
        kind = kind_of[sid]
        ok = (
            r.status == "SUCCEEDED"
            if kind == "ok"
            else (r.status == "FAILED" and KIND_ERRORS[kind] in (r.error or ""))
        )
        if not ok:
            wrong.setdefault(kind, (r.status, (r.error or "")[:200]))
    assert not wrong, wrong
    assert {r.status for r in hanger.values()} == {"FAILED"}
    assert all(TIMEOUT_REASON.search(r.error or "") for r in hanger.values()), hanger[hung[0]].error
    assert_each_once(await all_outputs(sm, "Chaotic"), ids + later)
    assert_each_once(await all_outputs(sm, "Hanger"), hung)
    dead = by_state(await assert_settled(redis, namespace, nodes))
    bad = {sid for sid, kind in kind_of.items() if kind != "ok"}
    assert set(dead) == bad | set(hung)
    off = {}
    for sid, d in dead.items():
        expected = TIMEOUT_REASON.pattern if sid in hung else KIND_ERRORS[kind_of[sid]]
        named = TIMEOUT_REASON.search(d.error) if sid in hung else expected in d.error
        if not (named and 1 <= d.attempts <= 2):
            off.setdefault(expected, (d.attempts, d.error[:200]))
    assert not off, off
