"""Reclaiming the states of dead or hung workers, on real Redis: in parallel when they are
not suspects, suspects one at a time with a bounded wait each, heartbeats that keep healthy
long executions, and dead consumers removed from the groups."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any, ClassVar

import msgpack
import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime, StateManager
from exospherehost.broker.keys import GROUP
from exospherehost.runtime import process as runtime_module
from exospherehost.runtime.worker import Worker
from tests.integration.apps.reclaim_main import Nap
from tests.integration.helpers import ROOT, running, stop_processes

pytestmark = pytest.mark.slow


def _worker_process(url: str, namespace: str, **env: str) -> subprocess.Popen[str]:
    """A Runtime process serving Nap (tests/integration/apps/reclaim_main.py)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.apps.reclaim_main", url, namespace],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def _line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read the process's output until a line containing `needle` appears."""

    def scan() -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            if needle in line:
                return line
        raise AssertionError(f"process ended without printing {needle!r}")

    return await asyncio.wait_for(asyncio.to_thread(scan), timeout)


async def _until(what: str, check: Any, timeout: float, step: float = 0.05) -> None:
    """Poll an awaitable condition on Redis (there is no event to await there)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(step)


def _with_worker_options(monkeypatch: pytest.MonkeyPatch, **options: Any) -> None:
    """Runtimes built in this test pass `options` to their Worker (Runtime does not expose
    them)."""
    monkeypatch.setattr(runtime_module, "Worker", partial(Worker, **options))


async def _consumers(sm: StateManager, node: str) -> dict[str, dict[str, int]]:
    """The group's consumers of `node`'s stream: name -> {pending, idle}."""
    infos = await sm.client.xinfo_consumers(sm.keys.queue(node), GROUP)
    return {
        (i["name"].decode() if isinstance(i["name"], bytes) else i["name"]): {
            "pending": int(i["pending"]),
            "idle": int(i["idle"]),
        }
        for i in infos
    }


async def _orphan(sm: StateManager, node: str, count: int, owners: int = 1) -> None:
    """Leave `count` entries of `node` pending as a worker killed after reading them would
    (from Redis' side the same thing): delivered `owners` times, the last owner gone."""
    await sm.broker.ensure_groups([node])
    stream = sm.keys.queue(node)
    reply = await sm.client.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=count)
    ids = [entry_id for entry_id, _ in reply[0][1]]
    assert len(ids) == count
    for owner in range(2, owners + 1):  # each later owner claimed them and died too
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            await sm.client.xclaim(stream, GROUP, f"ghost-{owner}", 0, chunk)


async def _all_clear(sm: StateManager, node: str) -> None:
    assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
    assert not await sm.dead_letters()


# -- a killed worker's states are reclaimed in parallel, past a hanging one --------------
async def test_killed_workers_states_are_reclaimed_in_parallel_past_a_hanging_one(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    env = {"EXO_TEST_VISIBILITY": "1", "EXO_TEST_GRACE": "2"}
    slow_s, hang_s = 3.0, 15.0
    victim = _worker_process(redis_url, namespace, **env)
    survivor = None
    try:
        await _line(victim, "serving", 30)
        hanging = await sm.enqueue("Nap", {"seconds": hang_s, "i": -1})  # first in id order
        slow = await sm.enqueue_many("Nap", [{"seconds": slow_s, "i": i} for i in range(30)])

        async def victim_holds_all() -> bool:
            return (await sm.pending("Nap"))["pending"] == 31

        await _until("the victim reads all 31 states", victim_holds_all, 20)
        victim.kill()  # kill -9, mid-execution of every one of them
        assert await asyncio.wait_for(asyncio.to_thread(victim.wait), 10) == -9
        started = time.monotonic()
        survivor = _worker_process(redis_url, namespace, **env)
        # One at a time this would take 30 x 3 s (or forever behind the hanging one).
        done = await sm.wait_for_states("Nap", slow, timeout=30)
        took = time.monotonic() - started
        assert {r.status for r in done.values()} == {"SUCCEEDED"}
        assert {r.outputs["pid"] for r in done.values()} == {survivor.pid}
        assert (await sm.pending("Nap"))["pending"] == 1, "only the hanging one still runs"
        last = await sm.wait_for_states("Nap", [hanging], timeout=hang_s + 30)
        assert last[hanging].status == "SUCCEEDED" and last[hanging].outputs["pid"] == survivor.pid
    finally:
        outs = stop_processes([p for p in (victim, survivor) if p is not None])
    assert survivor.returncode == 0, outs
    outputs = await sm.outputs("Nap")
    assert sorted(o.state_id for o in outputs) == sorted([hanging, *slow])  # each once
    await _all_clear(sm, "Nap")
    print(f"30 slow states of a killed worker reclaimed and run in {took:.1f}s")


# -- many orphans clear fast, within the room -------------------------------------------
async def test_many_orphaned_states_clear_in_bounded_time_within_the_room(
    redis_url: str, namespace: str, sm: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, fresh, nap = 2000, 1000, 0.02
    states = await sm.enqueue_many("Nap", [{"seconds": nap, "i": i} for i in range(n)])
    await _orphan(sm, "Nap", n)
    # Read meanwhile by the same worker: claims and reads share its room.
    states += await sm.enqueue_many("Nap", [{"seconds": nap, "i": i} for i in range(fresh)])
    peak = 0
    accept = Worker._accept

    def spy(self: Worker, *args: Any, **kwargs: Any) -> None:
        nonlocal peak
        accept(self, *args, **kwargs)
        peak = max(peak, self.inflight)

    monkeypatch.setattr(Worker, "_accept", spy)
    rt = Runtime(
        namespace=namespace, name="t", nodes=[Nap], redis_url=redis_url, visibility_timeout=0.5
    )
    started = time.monotonic()
    async with running(rt):
        # One at a time: >= n x 20 ms = 40 s. In parallel (32 executors): ~2 s of naps.
        done = await sm.wait_for_states("Nap", states, timeout=15)
        took = time.monotonic() - started
        assert rt._worker is not None and rt.stats is not None
        limit = rt._worker.max_inflight
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    outputs = await sm.outputs("Nap", count=n + fresh + 1)
    assert sorted(o.state_id for o in outputs) == sorted(states)  # every state, each once
    # Execution is at-least-once: with a 0.5 s visibility timeout on a loaded machine a
    # state may be claimed and run twice. Its stage transition is still once: exactly one
    # settle per state applied, the duplicate's settle skipped as late (it emits nothing).
    nap = rt.stats.nodes["Nap"]
    duplicates = nap.executed - (n + fresh)
    assert nap.settled == n + fresh, (nap.settled, nap.late_settles)
    assert rt.settled == nap.settled + nap.late_settles  # every settle call accounted for
    # Bounded: a few under load, not a systematic second run (say the reclaimer taking a
    # second copy of what this worker holds, or executions outliving their claims).
    assert 0 <= duplicates == nap.late_settles <= (n + fresh) // 100, (duplicates, nap)
    # A claim reserves its room; a read already on its way may overshoot by its count.
    assert 0 < peak <= limit + rt.batch_size, (peak, limit)
    await _all_clear(sm, "Nap")
    print(
        f"{n} orphaned (+{fresh} fresh) states cleared in {took:.1f}s, peak in flight {peak}, "
        f"{duplicates} executed twice"
    )


async def test_a_saturated_worker_still_reclaims(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Reads refill a busy worker's room as soon as half a batch is free; orphans must
    still get in (not wait for the backlog to drain)."""
    orphans = await sm.enqueue_many("Nap", [{"seconds": 0, "i": i} for i in range(20)])
    await _orphan(sm, "Nap", 20)
    backlog = await sm.enqueue_many("Nap", [{"seconds": 0.05, "i": i} for i in range(400)])
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Nap],
        redis_url=redis_url,
        visibility_timeout=0.5,
        batch_size=10,
        workers=4,  # 80 backlog states/s: 5 s of backlog, room for 44 in flight
    )
    async with running(rt):
        done = await sm.wait_for_states("Nap", orphans, timeout=30)
        finished = {o.state_id for o in await sm.outputs("Nap", count=1000)}
        assert len(finished & set(backlog)) < 300, "the orphans waited for the backlog"
        done |= await sm.wait_for_states("Nap", backlog, timeout=60)
    assert {r.status for r in done.values()} == {"SUCCEEDED"} and len(done) == 420
    await _all_clear(sm, "Nap")


# -- the claim script ------------------------------------------------------------------------
async def _layout(sm: StateManager, node: str) -> list[bytes]:
    """Seven pending entries of `node`, delivered 2, 1, 2, 3, 1, 1, 1 times (the last one
    deleted from the stream while pending), all idle."""
    await sm.enqueue_many(node, [{"i": i} for i in range(7)])
    await _orphan(sm, node, 7)
    stream = sm.keys.queue(node)
    ids = [entry_id for entry_id, _ in await sm.client.xrange(stream)]
    await sm.client.xclaim(stream, GROUP, "ghost-2", 0, [ids[0], ids[2], ids[3]])
    await sm.client.xclaim(stream, GROUP, "ghost-3", 0, [ids[3]])
    await sm.client.xdel(stream, ids[6])
    return ids


async def _deliveries(sm: StateManager, node: str) -> dict[bytes, tuple[str, int]]:
    rows = await sm.client.xpending_range(sm.keys.queue(node), GROUP, "-", "+", 100)
    return {r["message_id"]: (r["consumer"].decode(), int(r["times_delivered"])) for r in rows}


async def test_claim_script_takes_one_suspect_the_poisoned_and_the_rest_up_to_count(
    sm: StateManager,
) -> None:
    rules = {"suspect_from": 2, "poison_at": 3}
    ids = await _layout(sm, "A")
    claimed = await sm.broker.reclaim("A", "me", 0, 10, suspects=1, **rules)
    # The first suspect, not the second; the poisoned one whatever the budget; the
    # deleted one dropped (and acknowledged).
    assert [(i, d) for i, d, _ in claimed] == [
        (ids[0], 2), (ids[1], 1), (ids[3], 3), (ids[4], 1), (ids[5], 1)
    ]  # fmt: skip
    assert all(fields for _, _, fields in claimed)
    assert await _deliveries(sm, "A") == {
        ids[0]: ("me", 3), ids[1]: ("me", 2), ids[2]: ("ghost-2", 2), ids[3]: ("me", 4),
        ids[4]: ("me", 2), ids[5]: ("me", 2),
    }  # fmt: skip

    ids = await _layout(sm, "B")
    claimed = await sm.broker.reclaim("B", "me", 0, 2, suspects=0, **rules)
    assert [i for i, _, _ in claimed] == [ids[1], ids[3]]  # count bounds the claim

    ids = await _layout(sm, "C")
    assert await sm.broker.reclaim("C", "me", 60_000, 10, suspects=1, **rules) == []  # not idle


# -- suspects: one at a time, a hung one does not block the next --------------------------
class Suspect(BaseNode):
    """Hangs until released when asked to; otherwise takes `seconds`. Tracks how many
    non-hanging executions overlap."""

    release: ClassVar[asyncio.Event]
    running: ClassVar[int] = 0
    overlap: ClassVar[int] = 0
    executions: ClassVar[list[int]] = []

    class Inputs(BaseModel):
        i: int
        hang: bool = False
        seconds: float = 0.3

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        Suspect.executions.append(self.inputs.i)
        if self.inputs.hang:
            await Suspect.release.wait()
            return self.Outputs(i=self.inputs.i)
        Suspect.running += 1
        Suspect.overlap = max(Suspect.overlap, Suspect.running)
        try:
            await asyncio.sleep(self.inputs.seconds)
        finally:
            Suspect.running -= 1
        return self.Outputs(i=self.inputs.i)


@pytest.fixture(autouse=True)
def _fresh_suspects() -> None:
    Suspect.release, Suspect.running, Suspect.overlap, Suspect.executions = (
        asyncio.Event(),
        0,
        0,
        [],
    )


async def test_a_hung_suspect_does_not_block_the_next_suspects(
    redis_url: str, namespace: str, sm: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Execution bound of suspects well past this test, so the hung one is never cancelled
    # (that is execute()'s business); here only the reclaimer's own wait is bounded.
    _with_worker_options(monkeypatch, suspect_timeout_s=120.0)
    hung = await sm.enqueue("Suspect", {"i": -1, "hang": True})  # first in id order
    others = await sm.enqueue_many("Suspect", [{"i": i} for i in range(5)])
    await _orphan(sm, "Suspect", 6, owners=2)  # delivered twice: suspects, run alone
    rt = Runtime(
        namespace=namespace, name="t", nodes=[Suspect], redis_url=redis_url, visibility_timeout=0.5
    )
    async with running(rt):
        # Behind a hung suspect awaited without a bound, none of these would ever run.
        done = await sm.wait_for_states("Suspect", others, timeout=30)
        assert Suspect.overlap == 1, "suspects must run one at a time"
        assert not Suspect.release.is_set() and Suspect.executions[0] == -1  # still hung
        Suspect.release.set()
        done |= await sm.wait_for_states("Suspect", [hung], timeout=10)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert sorted(Suspect.executions) == [-1, 0, 1, 2, 3, 4]  # each once
    await _all_clear(sm, "Suspect")


async def test_a_poison_reclaimed_with_innocents_is_dead_lettered_alone(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """In-process check of the suspect rule at the limit: entries delivered max_deliveries
    times are dead-lettered without running; the others (delivered as often, minus one)
    run one at a time and succeed."""
    poison = await sm.enqueue("Suspect", {"i": -1, "hang": True})
    others = await sm.enqueue_many("Suspect", [{"i": i, "seconds": 0.05} for i in range(3)])
    await _orphan(sm, "Suspect", 4, owners=2)
    stream = sm.keys.queue("Suspect")
    # The poison's third owner died too (three deliveries: the limit below).
    [(entry_id, _)] = await sm.client.xrange(stream, count=1)
    await sm.client.xclaim(stream, GROUP, "ghost-3", 0, [entry_id])
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Suspect],
        redis_url=redis_url,
        visibility_timeout=0.5,
        max_deliveries=3,
    )
    async with running(rt):
        done = await sm.wait_for_states("Suspect", others, timeout=20)

        async def dead_lettered() -> bool:
            return bool(await sm.dead_letters())

        await _until("the poison is dead-lettered", dead_lettered, 20)
    assert {r.status for r in done.values()} == {"SUCCEEDED"}
    assert sorted(Suspect.executions) == [0, 1, 2] and Suspect.overlap == 1
    [dead] = await sm.dead_letters()
    assert dead.state_id == poison and "delivered 3 times" in dead.error
    assert await sm.pending("Suspect") == {"length": 0, "pending": 0, "delayed": 0}


# -- heartbeats ----------------------------------------------------------------------------
class Long(BaseNode):
    executions: ClassVar[int] = 0
    started: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        seconds: float

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        Long.executions += 1
        Long.started.set()
        await asyncio.sleep(self.inputs.seconds)
        return self.Outputs(ok=True)


async def test_heartbeat_keeps_a_long_execution_past_many_visibility_timeouts(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    Long.executions, Long.started = 0, asyncio.Event()

    def make() -> Runtime:
        return Runtime(
            namespace=namespace, name="t", nodes=[Long], redis_url=redis_url, visibility_timeout=1
        )

    async with running(make()) as first:
        state = await sm.enqueue("Long", {"seconds": 6.0})  # 6 visibility timeouts
        await asyncio.wait_for(Long.started.wait(), 10)
        async with running(make()) as thief:  # reclaims anything idle past 1 s
            result = await sm.wait_for_states("Long", [state], timeout=20)
            assert thief.settled == 0
        assert first.settled == 1
    assert result[state].status == "SUCCEEDED"
    assert Long.executions == 1  # never stolen
    await _all_clear(sm, "Long")


# -- dead consumers --------------------------------------------------------------------------
async def test_dead_consumers_are_removed_live_and_holding_ones_kept(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    stream = sm.keys.queue("Nap")
    await sm.broker.ensure_groups(["Nap"])
    held = await sm.enqueue("Nap", {"seconds": 0})
    await sm.client.xreadgroup(GROUP, "dead-holding", {stream: ">"}, count=1)
    for name in ("dead-empty-1", "dead-empty-2"):
        await sm.client.execute_command("XGROUP", "CREATECONSUMER", stream, GROUP, name)

    def make(visibility: float) -> Runtime:
        return Runtime(
            namespace=namespace,
            name="live",
            nodes=[Nap],
            redis_url=redis_url,
            block_ms=200,
            visibility_timeout=visibility,
            consumer_idle_timeout=2.0,
        )

    # Visibility long: dead-holding's entry stays its own while the consumers are pruned.
    async with running(make(120)) as one, running(make(120)) as two:

        async def empty_ones_gone() -> bool:
            return not {"dead-empty-1", "dead-empty-2"} & (await _consumers(sm, "Nap")).keys()

        await _until("idle consumers without pending entries are removed", empty_ones_gone, 15)
        # The round (one atomic script per stream) that removed them kept these:
        consumers = await _consumers(sm, "Nap")
        assert consumers.keys() == {one.consumer, two.consumer, "dead-holding"}
        assert consumers["dead-holding"]["pending"] == 1
        assert consumers["dead-holding"]["idle"] >= 2000  # kept for its entry, not for idling
    # Stopped cleanly: they left the group. Now a worker that reclaims the held entry;
    # then dead-holding holds nothing and goes too.
    assert (await _consumers(sm, "Nap")).keys() == {"dead-holding"}
    async with running(make(0.5)) as three:
        result = await sm.wait_for_states("Nap", [held], timeout=15)

        async def only_live_left() -> bool:
            return (await _consumers(sm, "Nap")).keys() == {three.consumer}

        await _until("the emptied dead consumer is removed", only_live_left, 15)
    assert result[held].status == "SUCCEEDED"
    assert (await _consumers(sm, "Nap")).keys() == set()  # three left on its clean stop
    assert await sm.client.zrange(f"{sm.keys.base}:alive", 0, -1) == []  # nobody alive
    await _all_clear(sm, "Nap")


async def test_deliveries_carried_across_releases_count_toward_the_poison_limit(
    redis_url: str, namespace: str, sm: StateManager, redis: Any
) -> None:
    """A state released at shutdown comes back as a new entry carrying its deliveries so far
    (`d`). Orphaned once more by a dead worker, it has been handed out d + 1 times: at the
    limit it is dead-lettered as a poison message when reclaimed, not run again (the claim
    script sees only the new entry's own count, 1)."""
    stream = sm.keys.queue("Nap")
    envelope = {"v": 1, "i": "released-4-times", "in": {"seconds": 0}, "d": 4}
    await redis.xadd(stream, {"_exo": msgpack.packb(envelope)})
    innocent = await sm.enqueue("Nap", {"seconds": 0, "i": 1})
    await _orphan(sm, "Nap", 2)
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Nap],
        redis_url=redis_url,
        visibility_timeout=0.5,
        max_deliveries=5,
    )
    async with running(rt):
        done = await sm.wait_for_states("Nap", [innocent], timeout=15)

        async def dead_lettered() -> bool:
            return len(await sm.dead_letters()) == 1

        await _until("the released state is dead-lettered", dead_lettered, 15)
    [dead] = await sm.dead_letters()
    assert dead.state_id == "released-4-times" and "poison" in dead.error
    assert dead.deliveries == 6  # 4 carried + the dead worker's + ours
    assert done[innocent].status == "SUCCEEDED"
    # Not run: its only result is the poison failure.
    results = {o.state_id: o.status for o in await sm.outputs("Nap")}
    assert results == {"released-4-times": "FAILED", innocent: "SUCCEEDED"}
    assert await sm.pending("Nap") == {"length": 0, "pending": 0, "delayed": 0}
