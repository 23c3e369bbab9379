"""The W1/W2 actors on dramatiq with its `RedisBroker`, for
`python -m benchmarks.bench --peers` (see benchmarks/README.md).

Worker processes are started with dramatiq's CLI:

    BENCH_REDIS_URL=redis://... BENCH_NS=... dramatiq benchmarks.peer_dramatiq \\
        --processes W --threads 8

- `noop(name, data)`: W1, the same payload as our `Noop` (dramatiq does not validate
  arguments);
- `a(x)` sends `b(x + 1)`, which sends `c(x + 1)`, which records `x + 1`: W2's chain;
- `sleep_ms(ms)` sleeps `ms` milliseconds in its thread: W4's slow node.

The broker is `RedisBroker(url=..., namespace=...)` with dramatiq's default middleware;
the handshake middleware only holds each worker process at the start line and reports
what it ran when it shuts down."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from benchmarks.peer_common import dramatiq_namespace, from_env, go_key, ready_key, reports_key

URL, NS = from_env()
DONE: list[int] = []  # list.append is atomic under the GIL: safe from worker threads
FINAL: list[int] = []
SLEPT: list[int] = []  # W4's sleep_ms runs
GO_AT: list[float] = []  # time.monotonic() of this process's go signal (W4's join order)


class Handshake(Middleware):
    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        client = redis.Redis.from_url(URL)
        client.rpush(ready_key(NS), json.dumps({"pid": os.getpid()}))
        client.blpop([go_key(NS)], timeout=120)
        GO_AT.append(time.monotonic())
        client.close()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        client = redis.Redis.from_url(URL)
        doc = {
            "pid": os.getpid(),
            "noop": len(DONE),
            "final": FINAL,
            "slept": len(SLEPT),
            "go_at": GO_AT[0] if GO_AT else None,
        }
        client.rpush(reports_key(NS), json.dumps(doc))
        client.close()


broker = RedisBroker(url=URL, namespace=dramatiq_namespace(NS))  # type: ignore[no-untyped-call]
broker.add_middleware(Handshake())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop(name: str, data: dict[str, Any]) -> bool:
    DONE.append(1)
    return True


@dramatiq.actor(actor_name="sleep_ms")
def sleep_ms(ms: int) -> None:
    time.sleep(ms / 1000)
    SLEPT.append(1)


@dramatiq.actor(actor_name="c")
def c(x: int) -> None:
    FINAL.append(x + 1)


@dramatiq.actor(actor_name="b")
def b(x: int) -> None:
    c.send(x + 1)


@dramatiq.actor(actor_name="a")
def a(x: int) -> None:
    b.send(x + 1)
