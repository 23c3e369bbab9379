"""The worker's settler: batches planned and sent while earlier ones run in Redis, at most
SETTLES_IN_FLIGHT at a time, each settled once (a stub broker stands in for Redis)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from benchmarks.nodes import Noop
from broker.codec import Envelope
from broker.keys import Keys
from broker.plan import SettlePlan
from exospherehost.execution import NodeSpec
from exospherehost.outcomes import Completed, Job
from exospherehost.settle import SettleConfig
from exospherehost.worker import SETTLES_IN_FLIGHT, Worker

KEYS = Keys("ns")


class StubBroker:
    """`settle` blocks until the test releases that call; records what each call held."""

    def __init__(self) -> None:
        self.keys = KEYS
        self.client = SimpleNamespace(connection_pool=None)
        self.calls: list[tuple[list[bytes], asyncio.Event]] = []
        self.changed = asyncio.Condition()

    async def settle(self, plan: SettlePlan, lane: object) -> list[int]:
        release = asyncio.Event()
        async with self.changed:
            self.calls.append(([item[1] for item in plan.items], release))
            self.changed.notify_all()
        await release.wait()
        return [1] * len(plan.items)

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.calls) == n)


async def _run_ready_callbacks() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_batches_overlap_up_to_the_limit_and_each_settles_once() -> None:
    assert SETTLES_IN_FLIGHT == 2
    broker = StubBroker()
    cfg = SettleConfig(keys=KEYS, graphs={})
    worker = Worker(broker, [NodeSpec.of(Noop)], "c", None, cfg)  # type: ignore[arg-type]
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
