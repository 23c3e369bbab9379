"""Keys and environment shared by the harness (`benchmarks.peers`) and the peer task
apps it starts with the peers' own CLIs (`benchmarks.peer_taskiq`, `benchmarks.peer_dramatiq`).

The apps read their Redis URL and namespace from the environment (``BENCH_REDIS_URL``,
``BENCH_NS``): a CLI such as ``taskiq worker`` or ``dramatiq`` imports a module and cannot
be handed arguments of ours. Every key lives under ``peer:<ns>:``, so the harness can
delete a measurement's keys by that prefix.

The start-up handshake is the one of ``benchmarks.worker``: each worker process, once it
has imported everything and built its broker, RPUSHes ``{"pid"}`` to ``ready`` and blocks
in BLPOP on ``go`` (one token per process), before it reads anything. On shutdown it
RPUSHes a report (tasks it ran, the chain's final values) to ``reports``."""

from __future__ import annotations

import os

URL_ENV = "BENCH_REDIS_URL"
NS_ENV = "BENCH_NS"


def prefix(ns: str) -> str:
    return f"peer:{ns}:"


def ready_key(ns: str) -> str:
    return f"{prefix(ns)}ready"


def go_key(ns: str) -> str:
    return f"{prefix(ns)}go"


def reports_key(ns: str) -> str:
    return f"{prefix(ns)}reports"


def taskiq_stream(ns: str) -> str:
    """The stream RedisStreamBroker uses as its queue."""
    return f"{prefix(ns)}taskiq"


def dramatiq_namespace(ns: str) -> str:
    """RedisBroker(namespace=...): its keys are `<namespace>:default`, `...default.msgs`."""
    return f"{prefix(ns)}dramatiq"


def from_env() -> tuple[str, str]:
    return os.environ[URL_ENV], os.environ[NS_ENV]
