"""The W1/W2 tasks on taskiq with taskiq-redis's `RedisStreamBroker`, for
`python -m benchmarks.bench --peers` (see benchmarks/README.md).

Worker processes are started with taskiq's CLI:

    BENCH_REDIS_URL=redis://... BENCH_NS=... taskiq worker \\
        benchmarks.peer_taskiq:worker_broker --workers W --log-level WARNING

- `noop(name, data) -> True`: W1, the same payload as our `Noop` (taskiq validates the
  arguments against the type hints with pydantic, as our `Inputs` model does);
- `a(x)` kicks `b(x + 1)`, which kicks `c(x + 1)`, which records `x + 1`: W2's chain;
- `sleep_ms(ms)` awaits `ms` milliseconds: W4's slow node (benchmarks/peers_w4.py).

Broker settings are taskiq-redis's defaults except the queue (stream) name and
`consumer_id="0"`: the group must deliver the backlog enqueued before the worker started
(the harness creates the group itself, from id 0, before enqueueing)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

from benchmarks.peer_common import from_env, go_key, ready_key, reports_key, taskiq_stream

DONE: list[int] = []  # one element per noop task run in this process
FINAL: list[int] = []  # c's values
SLEPT: list[int] = []  # one element per W4 sleep_ms task run
GO_AT: list[float] = []  # time.monotonic() of this process's go signal (W4's join order)


def make_broker(url: str, ns: str) -> RedisStreamBroker:
    broker = RedisStreamBroker(url=url, queue_name=taskiq_stream(ns), consumer_id="0")

    @broker.task(task_name="noop")
    async def noop(name: str, data: dict[str, Any]) -> bool:
        DONE.append(1)
        return True

    @broker.task(task_name="sleep_ms")
    async def sleep_ms(ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        SLEPT.append(1)
        return ms

    @broker.task(task_name="c")
    async def c(x: int) -> int:
        FINAL.append(x + 1)
        return x + 1

    @broker.task(task_name="b")
    async def b(x: int) -> int:
        await c.kiq(x + 1)
        return x + 1

    @broker.task(task_name="a")
    async def a(x: int) -> int:
        await b.kiq(x + 1)
        return x + 1

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def hold(state: TaskiqState) -> None:
        client = aioredis.Redis.from_url(url)
        try:
            await client.rpush(ready_key(ns), json.dumps({"pid": os.getpid()}))
            await client.blpop([go_key(ns)], timeout=120)
            GO_AT.append(time.monotonic())
        finally:
            await client.aclose()

    @broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
    async def report(state: TaskiqState) -> None:
        client = aioredis.Redis.from_url(url)
        try:
            doc = {
                "pid": os.getpid(),
                "noop": len(DONE),
                "final": FINAL,
                "slept": len(SLEPT),
                "go_at": GO_AT[0] if GO_AT else None,
            }
            await client.rpush(reports_key(ns), json.dumps(doc))
        finally:
            await client.aclose()

    return broker


def worker_broker() -> RedisStreamBroker:
    """The broker factory `taskiq worker` calls in each worker process."""
    return make_broker(*from_env())
