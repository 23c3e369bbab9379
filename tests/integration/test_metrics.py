"""The Prometheus endpoint of a Runtime (metrics_port=...), scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, RetryPolicyModel, Runtime, StateManager
from exospherehost.broker.codec import Envelope
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import ZADD_DELAYED
from exospherehost.runtime.metrics import MetricsPortError
from exospherehost.runtime.outcomes import Failed, Job
from exospherehost.runtime.settle import SettleConfig, plan_settle
from exospherehost.runtime.stats import BUCKETS, RuntimeStats
from tests.integration.apps.nodes import SampleNode
from tests.integration.helpers import running

pytestmark = pytest.mark.redis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Boom(BaseNode):
    """Always fails: with one retry allowed, each state fails twice, then is dead."""

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        raise RuntimeError(f"boom {self.inputs.x}")


class Gate(BaseNode):
    """Holds its executions until the test opens the gate."""

    opened: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        await Gate.opened.wait()
        return self.Outputs(i=self.inputs.i)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def scrape(port: int) -> Samples:
    """Every sample of the endpoint: (name, labels) -> value."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_counters_and_histogram_over_http(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    port = free_port()
    rt = Runtime(
        namespace,
        "metrics",
        [SampleNode, Boom],
        redis_url=redis_url,
        metrics_port=port,
        default_retry_policy=RetryPolicyModel(max_retries=1, backoff_factor=1),
    )
    async with running(rt), StateManager(namespace, redis_url) as sm:
        ids = await sm.enqueue_many("SampleNode", [{"name": f"n{i}", "data": {}} for i in range(3)])
        await sm.enqueue("Boom", {"x": 1})
        # Undecodable: dead-lettered as malformed, never executed.
        await redis.xadd(sm.keys.queue("SampleNode"), {"_exo": b"\xc1not msgpack"})
        await sm.wait_for_states("SampleNode", ids, timeout=15)

        async def all_dead() -> bool:
            return len(await sm.dead_letters()) == 2

        await until(all_dead)
        samples = await scrape(port)

    ns = namespace
    executions = "exosphere_node_executions_total"
    assert value(samples, executions, namespace=ns, node="SampleNode", outcome="succeeded") == 3
    assert value(samples, executions, namespace=ns, node="SampleNode", outcome="failed") == 0
    assert value(samples, executions, namespace=ns, node="Boom", outcome="failed") == 2
    assert value(samples, executions, namespace=ns, node="Boom", outcome="succeeded") == 0
    assert value(samples, "exosphere_node_retries_total", namespace=ns, node="Boom") == 1
    assert value(samples, "exosphere_node_dead_lettered_total", namespace=ns, node="Boom") == 1
    assert (
        value(samples, "exosphere_node_dead_lettered_total", namespace=ns, node="SampleNode") == 0
    )
    assert value(samples, "exosphere_node_malformed_total", namespace=ns, node="SampleNode") == 1
    # Settled: 3 results + the malformed entry's dead letter; Boom: the retry + the dead letter.
    assert value(samples, "exosphere_node_settled_total", namespace=ns, node="SampleNode") == 4
    assert value(samples, "exosphere_node_settled_total", namespace=ns, node="Boom") == 2
    assert value(samples, "exosphere_node_late_settles_total", namespace=ns, node="Boom") == 0

    for node, count in (("SampleNode", 3), ("Boom", 2)):
        labels = {"namespace": ns, "node": node}
        assert value(samples, "exosphere_node_execution_seconds_count", **labels) == count
        assert 0 < value(samples, "exosphere_node_execution_seconds_sum", **labels) < 5
        buckets = [
            value(samples, "exosphere_node_execution_seconds_bucket", le=le, **labels)
            for le in [repr(float(b)) for b in BUCKETS] + ["+Inf"]
        ]
        assert buckets == sorted(buckets), "buckets are cumulative"
        assert buckets[-1] == count
    assert ("process_cpu_seconds_total", frozenset()) in samples  # the standard collectors


async def test_queue_gauges_are_refreshed_from_redis(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exospherehost.runtime.metrics.GAUGE_REFRESH_S", 0.1)
    Gate.opened = asyncio.Event()
    port = free_port()
    # At most workers + prefetch = 5 states in flight: the other 5 stay in the backlog.
    rt = Runtime(
        namespace,
        "gauges",
        [Gate],
        redis_url=redis_url,
        metrics_port=port,
        batch_size=1,
        workers=1,
        prefetch=4,
    )
    async with running(rt), StateManager(namespace, redis_url) as sm:
        await sm.enqueue_many("Gate", [{"i": i} for i in range(10)])
        await sm.enqueue_many("Gate", [{"i": i} for i in range(4)], delay_ms=60_000)
        labels = {"namespace": namespace, "node": "Gate"}

        async def gauges_show_it() -> bool:
            samples = await scrape(port)
            return (
                samples.get(("exosphere_node_pending", frozenset(labels.items()))) == 5
                and samples.get(("exosphere_node_backlog", frozenset(labels.items()))) == 5
                and samples.get(("exosphere_node_delayed", frozenset(labels.items()))) == 4
            )

        await until(gauges_show_it)
        Gate.opened.set()

        async def drained() -> bool:
            samples = await scrape(port)
            return (
                samples.get(("exosphere_node_pending", frozenset(labels.items()))) == 0
                and samples.get(("exosphere_node_backlog", frozenset(labels.items()))) == 0
            )

        await until(drained)
        await sm.client.delete(sm.keys.delayed("Gate"))
    # Stopped with the Runtime: the port is free again.
    with pytest.raises(OSError):
        await scrape(port)


async def test_port_in_use_fails_the_runtime_clearly(redis_url: str, namespace: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rt = Runtime(namespace, "busy", [SampleNode], redis_url=redis_url, metrics_port=port)
        with pytest.raises(MetricsPortError, match=f"cannot serve metrics on 0.0.0.0:{port}"):
            async with running(rt):
                pass


@pytest.mark.parametrize("bad", [0, 70000, -1, True, "9464", 9464.0])
def test_metrics_port_is_validated(bad: object) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Runtime("ns", "t", [SampleNode], redis_url="redis://127.0.0.1:1/0", metrics_port=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("permanent", [False, True])
@pytest.mark.parametrize("attempt", [0, 1, 2, 3])
def test_retried_or_dead_lettered_matches_settle_planning(attempt: int, permanent: bool) -> None:
    """The stats' split of failures follows the settle plan's decision (no drift)."""
    cfg = SettleConfig(keys=Keys("ns"), graphs={}, default_retry=RetryPolicyModel(max_retries=2))
    env = Envelope("s1", {"x": 1}, attempt=attempt)
    job = Job("Boom", cfg.keys.queue("Boom"), b"1-0", {}, env)
    failed = Failed(job, "boom", "", permanent=permanent)
    ops = plan_settle([failed], cfg).items[0][2]
    planned_retry = any(op[0] == ZADD_DELAYED for op in ops)
    stats = RuntimeStats(["Boom"])
    stats.decided([failed])  # what the worker counts once the settle is applied
    counted_retry = stats.nodes["Boom"].retried == 1
    assert counted_retry == planned_retry == (not permanent and attempt < 2)
    assert stats.nodes["Boom"].dead_lettered == (not planned_retry)
