"""Prometheus metrics of a Runtime process (opt-in: ``Runtime(..., metrics_port=9464)``).

Counters and the execution-time histogram are read from the Runtime's in-process
:class:`~exospherehost.runtime.stats.RuntimeStats` when Prometheus scrapes, so the hot path does
nothing but its integer adds. Queue gauges (backlog, pending, delayed) come from Redis:
a small asyncio task in the Runtime's loop refreshes a snapshot every few seconds, and the
scrape (in the HTTP server's thread) only reads that snapshot; it never touches the
asyncio Redis client, which belongs to the loop.

Series (labels ``namespace``, ``node``):

- ``exosphere_node_executions_total{outcome=succeeded|failed|pruned|requeued}``
- ``exosphere_node_retries_total``, ``exosphere_node_dead_lettered_total``: failed
  executions given another attempt / sent to the dead letters
- ``exosphere_node_settled_total``, ``exosphere_node_late_settles_total``,
  ``exosphere_node_malformed_total``
- ``exosphere_node_execution_seconds`` (histogram, buckets ``stats.BUCKETS``)
- ``exosphere_node_backlog``, ``exosphere_node_pending``, ``exosphere_node_delayed``,
  ``exosphere_node_consumers`` (live workers reading the node's stream: see
  broker.queues.LIVE_IDLE_MS), ``exosphere_node_oldest_pending_seconds`` (age of the
  oldest state handed out and not settled; 0 when none) (gauges, refreshed every
  ``GAUGE_REFRESH_S``)
- ``exosphere_dead_letters`` (label ``namespace``: the dead stream's length, XLEN) and
  ``exosphere_runs_running`` (labels ``namespace``, ``graph``: RUNNING runs among each
  graph's newest ``RUNS_SCANNED``) (gauges, same refresh)

The execution histogram counts executions only: a state refused before ``execute()`` ran
(invalid inputs, missing secrets) is a failure but has no execution time.

plus the standard ``process_*``, ``python_gc_*`` and ``python_info`` series.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from exospherehost.broker.client import Redis
from exospherehost.broker.graphs import GraphRecords
from exospherehost.broker.streams import Broker
from exospherehost.errors import MetricsPortError as MetricsPortError  # old import path
from exospherehost.runtime.cancelling import cancel_and_wait
from exospherehost.runtime.stats import BUCKETS, RuntimeStats

if TYPE_CHECKING:
    from exospherehost.runtime.process import Runtime

log = logging.getLogger("exospherehost.runtime.metrics")

GAUGE_REFRESH_S = 5.0
"""Seconds between two reads of the queue gauges from Redis."""

RUNS_SCANNED = 1000
"""Newest runs of each graph whose status the runs-running gauge reads (one pipelined
HGET each per refresh); an older run still RUNNING is not counted."""

OUTCOMES = ("succeeded", "failed", "pruned", "requeued")
LABELS = ["namespace", "node"]
Gauges = Mapping[str, Mapping[str, float]]
"""node -> {"backlog", "pending", "delayed", "consumers", "oldest_pending_seconds"}"""

NODE_GAUGES = (
    ("backlog", "States on the node's stream not yet handed to a worker."),
    ("pending", "States handed to a worker and not yet settled."),
    ("delayed", "States waiting for their due time (retries, delays, requeues)."),
    (
        "consumers",
        "Live workers reading the node's stream (a killed worker's consumer is not counted).",
    ),
    (
        "oldest_pending_seconds",
        "Age of the oldest state handed to a worker and not yet settled (0: none).",
    ),
)


def _le(bound: float) -> str:
    # The text format's bucket label: Go's float formatting ("+Inf", "0.5", "10.0").
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@dataclass(frozen=True, slots=True)
class Totals:
    """Namespace-wide gauges, read with the node gauges."""

    dead_letters: int
    runs_running: Mapping[str, int]  # graph -> RUNNING runs


class RuntimeCollector(Collector):
    """Builds the exosphere_* families from a Runtime's counters at scrape time."""

    def __init__(
        self,
        namespace: str,
        stats: Callable[[], RuntimeStats | None],
        gauges: Callable[[], Gauges],
        totals: Callable[[], Totals | None] = lambda: None,
    ) -> None:
        self.namespace = namespace
        self._stats = stats
        self._gauges = gauges
        self._totals = totals

    def describe(self) -> Iterable[Metric]:
        # Names without samples: registering then does not run a full collect.
        return list(self._families(None, {}, None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._stats(), self._gauges(), self._totals()))

    def _families(
        self, stats: RuntimeStats | None, gauges: Gauges, totals: Totals | None
    ) -> Iterator[Metric]:
        ns = self.namespace
        executions = CounterMetricFamily(
            "exosphere_node_executions",
            "Executions of a node finished in this process, by outcome.",
            labels=[*LABELS, "outcome"],
        )
        simple = {
            "retried": CounterMetricFamily(
                "exosphere_node_retries",
                "Failed executions scheduled for another attempt (retry policy).",
                labels=LABELS,
            ),
            "dead_lettered": CounterMetricFamily(
                "exosphere_node_dead_lettered",
                "Failed executions sent to the dead-letter stream (retries spent or a "
                "permanent failure).",
                labels=LABELS,
            ),
            "settled": CounterMetricFamily(
                "exosphere_node_settled",
                "States settled by this process (outcome written by the settle script).",
                labels=LABELS,
            ),
            "late_settles": CounterMetricFamily(
                "exosphere_node_late_settles",
                "Settles skipped because another worker had settled the state first.",
                labels=LABELS,
            ),
            "malformed": CounterMetricFamily(
                "exosphere_node_malformed",
                "Stream entries that could not be decoded (dead-lettered unexecuted).",
                labels=LABELS,
            ),
        }
        seconds = HistogramMetricFamily(
            "exosphere_node_execution_seconds",
            "Time spent in a node's execute(), seconds.",
            labels=LABELS,
        )
        for node, s in (stats.nodes if stats is not None else {}).items():
            for outcome in OUTCOMES:
                executions.add_metric([ns, node, outcome], getattr(s, outcome))
            for attr, family in simple.items():
                family.add_metric([ns, node], getattr(s, attr))
            counts = list(s.exec_buckets)  # copy: the loop thread keeps adding
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), float(cumulative)))
            seconds.add_metric([ns, node], buckets, s.exec_seconds_sum)
        yield executions
        yield from simple.values()
        yield seconds
        for kind, doc in NODE_GAUGES:
            gauge = GaugeMetricFamily(f"exosphere_node_{kind}", doc, labels=LABELS)
            for node, values in gauges.items():
                gauge.add_metric([ns, node], values[kind])
            yield gauge
        dead = GaugeMetricFamily(
            "exosphere_dead_letters",
            "Dead letters in the namespace's dead-letter stream (XLEN).",
            labels=["namespace"],
        )
        running = GaugeMetricFamily(
            "exosphere_runs_running",
            f"Graph runs RUNNING (among each graph's newest {RUNS_SCANNED}).",
            labels=["namespace", "graph"],
        )
        if totals is not None:
            dead.add_metric([ns], totals.dead_letters)
            for graph, n in totals.runs_running.items():
                running.add_metric([ns, graph], n)
        yield dead
        yield running


class MetricsExporter:
    """The HTTP endpoint and gauge refresher of one Runtime; lives in the Runtime's loop."""

    def __init__(
        self,
        runtime: Runtime,
        port: int,
        addr: str = "0.0.0.0",
        refresh_s: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.port = port
        self.addr = addr
        # Read at construction, not at import, so tests can shorten it.
        self.refresh_s = GAUGE_REFRESH_S if refresh_s is None else refresh_s
        # Replaced whole by the refresher, read by the scrape thread: no lock needed.
        self.gauges: Gauges = {}
        self.totals: Totals | None = None
        # A registry of our own: several Runtimes in one process must not collide in
        # the global one, and nothing else registered there is ours to expose.
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(
            RuntimeCollector(
                runtime.namespace,
                lambda: runtime.stats,
                lambda: self.gauges,
                lambda: self.totals,
            )
        )
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Redis | None = None

    async def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.port, self.addr, registry=self.registry
            )
        except OSError as exc:
            raise MetricsPortError(
                f"cannot serve metrics on {self.addr}:{self.port}: {exc.strerror or exc}"
            ) from exc
        # A connection of its own: a slow gauge read never waits for the worker's pool.
        self._client = self.runtime.config.client()
        broker = Broker(self._client, self.runtime.namespace)
        self._task = asyncio.create_task(self._refresh(broker), name="exo-metrics-gauges")
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.addr, self.port)

    async def aclose(self) -> None:
        if self._task is not None:
            # Re-cancelled until it ends (one cancel can be lost in a Redis call); the
            # caller's own cancellation is not swallowed.
            (error,) = await cancel_and_wait([self._task])
            if error is not None:
                log.warning("the queue gauges' refresh had failed: %r", error)
        if self._server is not None:
            # shutdown() waits for serve_forever to notice (up to its 0.5 s poll): off-loop.
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
        if self._client is not None:
            await self._client.aclose()

    async def _refresh(self, broker: Broker) -> None:
        ours = {n.__name__ for n in self.runtime.nodes}
        # The first read after registration, so our nodes are already listed.
        await self.runtime.started.wait()
        failing = False
        while True:
            try:
                # Registered nodes only, as `exosphere status` shows them.
                names = [n for n in await broker.registry.names() if n in ours]
                stats = {n: await broker.queues.stats(n) for n in names}
                totals = await read_totals(broker)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("cannot read queue gauges from Redis (%s); retrying", exc)
                failing = True
                self.gauges = {}  # absent beats stale: an outage must not look like a calm
                self.totals = None
            else:
                failing = False
                self.gauges = {
                    node: {
                        # Settled entries are deleted, so the stream holds backlog + pending.
                        "backlog": max(0, s.length - s.pending),
                        "pending": s.pending,
                        "delayed": s.delayed,
                        "consumers": s.consumers,
                        "oldest_pending_seconds": s.oldest_pending_ms / 1000 if s.pending else 0.0,
                    }
                    for node, s in stats.items()
                }
                self.totals = totals
            await asyncio.sleep(self.refresh_s)


async def read_totals(broker: Broker) -> Totals:
    """The dead-letter count and the RUNNING runs per graph (of each graph's newest
    RUNS_SCANNED runs), in a round trip per graph."""
    running: dict[str, int] = {}
    for graph in await GraphRecords(broker.client, broker.keys).names():
        ids = await broker.runs.run_ids(graph, 0, RUNS_SCANNED)
        statuses = await broker.runs.statuses(ids) if ids else []
        running[graph] = sum(1 for st in statuses if st == "RUNNING")
    return Totals(await broker.dead_letters.count(), running)
