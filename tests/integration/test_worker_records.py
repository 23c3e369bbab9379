"""What a Runtime publishes about itself for dashboards (broker/workers.py, runtime/upkeep/
report.py): a worker record that says who it is and what it did, a clean stop marked as
such, an expired record shown as lost, and per-node throughput in 10-second buckets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from exospherehost import Runtime, StateManager
from exospherehost.broker.workers import BUCKET_S
from exospherehost.client.workers import WorkerInfo
from tests.integration.apps.nodes import Square
from tests.integration.helpers import running

T = TypeVar("T")


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]], timeout: float = 15) -> T:
    """Poll `probe` until it returns something truthy (worker records are written every 5 s
    on the wall clock: there is no event to await from outside the process)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"never saw {what} within {timeout}s; last: {last!r}")


async def test_a_runtime_publishes_its_record_and_throughput(
    redis_url: str, namespace: str
) -> None:
    rt = Runtime(namespace=namespace, name="recs", nodes=[Square], redis_url=redis_url, workers=7)
    async with StateManager(namespace, redis_url=redis_url) as sm:
        async with running(rt):
            ids = await sm.enqueue_many("Square", [{"value": i} for i in range(20)])
            await sm.wait_for_states("Square", ids, timeout=10)

            async def processed() -> WorkerInfo | None:
                [w] = await sm.workers()
                return w if w.processed == 20 else None

            w = await eventually("20 processed in the worker record", processed)
            assert (w.consumer, w.state, w.runtime, w.nodes) == (
                rt.consumer,
                "serving",
                "recs",
                ["Square"],
            )
            assert (w.concurrency, w.failed, w.inflight, w.groups) == (7, 0, 0, ["Square"])
            assert w.host and w.pid and w.last_seen_ms is not None and w.last_seen_ms < 10_000
            assert w.per_node == {"Square": {"done": 20, "failed": 0, "dead": 0}}
            # The 20 states are in the buckets (the one still filling included).
            now = int(time.time())
            series = await sm.broker.workers.throughput(now - 60, now + BUCKET_S, ["Square"])
            assert sum(series["Square"]["done"]) == 20, series
            assert sum(series["Square"]["failed"]) == 0
        # A clean stop writes a last record, marked stopped.
        [w] = await sm.workers()
        assert (w.state, w.processed, w.inflight) == ("stopped", 20, 0)


async def test_expired_records_are_lost_and_group_only_consumers_unknown(
    redis_url: str, namespace: str
) -> None:
    async with StateManager(namespace, redis_url=redis_url) as sm:
        board = sm.broker.workers
        now_ms = int(time.time() * 1000)
        # A worker whose record expired (killed): indexed, with no record.
        await board.publish("old:hostA:11:aaaaaa", {"runtime": "old", "state": "serving"}, now_ms)
        await sm.broker.client.execute_command("DEL", sm.broker.keys.worker("old:hostA:11:aaaaaa"))
        # A consumer in a group that never wrote a record (an older Runtime).
        await sm.broker.registry.register({"Square": "{}"})
        await sm.broker.ensure_groups(["Square"])
        await sm.broker.join("legacy:hostB:22:bbbbbb", ["Square"])
        workers = {w.consumer: w for w in await sm.workers()}
        lost, unknown = workers["old:hostA:11:aaaaaa"], workers["legacy:hostB:22:bbbbbb"]
        assert (lost.state, lost.runtime, lost.host, lost.pid) == ("lost", "old", "hostA", 11)
        assert lost.inflight is None  # not known for a worker that went silent
        assert (unknown.state, unknown.host, unknown.pid) == ("unknown", "hostB", 22)
        assert unknown.groups == ["Square"]


async def test_throughput_buckets_add_up_per_node_and_window(
    redis_url: str, namespace: str
) -> None:
    async with StateManager(namespace, redis_url=redis_url) as sm:
        board = sm.broker.workers
        now = int(time.time())
        base = now - now % 60 - 120  # a minute boundary two minutes ago
        for i, (done, failed) in enumerate([(5, 1), (7, 0), (0, 3)]):
            await board.publish("w:h:1:x", {}, now * 1000, {"A": (done, failed)}, base + i * 10)
        # A second worker adds to the same bucket.
        await board.publish("w:h:2:y", {}, now * 1000, {"A": (1, 0), "B": (2, 0)}, base)
        series = await board.throughput(base, base + 40, ["A", "B", "C"])
        assert series == {
            "A": {"done": [6, 7, 0, 0], "failed": [1, 0, 3, 0]},
            "B": {"done": [2, 0, 0, 0], "failed": [0, 0, 0, 0]},
            "C": {"done": [0, 0, 0, 0], "failed": [0, 0, 0, 0]},
        }
        # A window across a minute boundary, not aligned to it.
        series = await board.throughput(base + 50, base + 70, ["A"])
        assert series["A"] == {"done": [0, 0], "failed": [0, 0]}
        series = await board.throughput(base + 10, base + 30, ["A"])
        assert series["A"] == {"done": [7, 0], "failed": [0, 3]}


async def test_a_namespace_is_in_use_with_nodes_graphs_dead_letters_or_workers(
    redis_url: str, namespace: str
) -> None:
    async with StateManager(namespace, redis_url=redis_url) as sm:
        assert not await sm.in_use()  # the dashboard shows "unknown namespace"
        await sm.broker.workers.publish("w:h:1:x", {}, int(time.time() * 1000))
        assert await sm.in_use()
    async with StateManager(namespace + "b", redis_url=redis_url) as other:
        assert not await other.in_use()
        await other.broker.client.execute_command(
            "XADD", other.broker.keys.dead(), "*", "node", "N"
        )
        assert await other.in_use()
