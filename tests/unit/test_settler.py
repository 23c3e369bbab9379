"""The worker's settler: batches planned and sent while earlier ones run in Redis, at most
SETTLES_IN_FLIGHT at a time, each settled once (a stub broker stands in for Redis)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from benchmarks.nodes import Noop
from exospherehost.broker.codec import Envelope
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import SettleFlags, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.graphstore import GraphCache
from exospherehost.runtime import worker as worker_module
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.outcomes import Completed, Job, Malformed
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.worker import SETTLES_IN_FLIGHT, Worker

KEYS = Keys("ns")


class StubBroker:
    """`settle` blocks until the test releases that call; records what each call held."""

    def __init__(self) -> None:
        self.keys = KEYS
        self.client = SimpleNamespace(connection_pool=None)
        self.calls: list[tuple[list[bytes], asyncio.Event]] = []
        self.changed = asyncio.Condition()

    async def settle(self, plan: SettlePlan, lane: object) -> SettleFlags:
        release = asyncio.Event()
        async with self.changed:
            self.calls.append(([item[1] for item in plan.items], release))
            self.changed.notify_all()
        await release.wait()
        return SettleFlags([1] * len(plan.items), {})

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.calls) == n)


def make_worker(broker: StubBroker) -> Worker:
    cfg = SettleConfig(keys=KEYS, graphs={})
    return Worker(cast(Broker, broker), [NodeSpec.of(Noop)], "c", cast(GraphCache, None), cfg)


async def _run_ready_callbacks() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batches_overlap_up_to_the_limit_and_each_settles_once() -> None:
    assert SETTLES_IN_FLIGHT == 2
    broker = StubBroker()
    worker = make_worker(broker)
    settler = asyncio.create_task(worker._settler())

    def finish(i: int) -> None:
        entry = f"1-{i}".encode()
        worker._held["Noop"][entry] = 0.0
        worker.inflight += 1
        job = Job("Noop", KEYS.queue("Noop"), entry, {}, Envelope(f"s{i}", {}))
        worker._finish(Completed(job, [{"ok": True}], False))

    finish(0)
    await broker.wait_calls(1)
    finish(1)
    finish(2)
    await broker.wait_calls(2)  # planned and sent while the first runs
    finish(3)
    await _run_ready_callbacks()
    assert len(broker.calls) == 2  # the limit: the third batch waits for a free slot
    broker.calls[0][1].set()
    await broker.wait_calls(3)
    assert [ids for ids, _ in broker.calls] == [[b"1-0"], [b"1-1", b"1-2"], [b"1-3"]]
    for _, release in broker.calls:
        release.set()
    await _run_ready_callbacks()
    assert worker.settled == 4 and worker.inflight == 0 and worker._held["Noop"] == {}
    assert worker.stats.nodes["Noop"].settled == 4
    worker._stopping.set()  # no executors ran: the settler ends once nothing is left
    worker._has_outcomes.set()
    await asyncio.wait_for(settler, 5)


def test_an_entry_the_codec_chokes_on_is_dead_lettered_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One entry must never stop the reader: even an exception the codec does not turn
    into MalformedEntry (a codec bug) makes a Malformed outcome for that entry alone."""

    def broken(entry_id: bytes, fields: dict[bytes, bytes]) -> Envelope:
        if entry_id == b"1-1":
            raise KeyError("boom")
        return Envelope("ok", {})

    monkeypatch.setattr(worker_module, "decode", broken)
    worker = make_worker(StubBroker())
    worker._accept("Noop", [(b"1-0", {}), (b"1-1", {}), (b"1-2", {})])
    [bad] = worker._outcomes
    assert isinstance(bad, Malformed) and bad.entry_id == b"1-1"
    assert bad.reason == "cannot decode: KeyError('boom')"
    assert len(worker._queue) == 2 and worker.inflight == 3
