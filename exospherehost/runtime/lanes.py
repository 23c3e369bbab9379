"""A Runtime process serves every lane of its namespace: one Worker per lane.

A lane (broker/keys.py) is one hash tag, so one Redis Cluster slot. Each lane's Worker has
its own XREADGROUP over the lane's node streams, its own settle calls (one per lane per
batch: a settle script touches one lane's keys only), and its own promoter, reclaimer and
heartbeat. The Workers share the Runtime's retrier (one outage log, one stop) and its
stats. With one lane (the default) this is exactly one Worker on lane 0, as before lanes:
the hot path is the Worker's, unchanged.

Lanes can change while runs flow (`StateManager.set_lanes`): every `check_s` this process
reads the lane count again and starts a Worker for each lane it should serve and does not
yet: the current lanes, and lanes of an older count that still hold a state of its nodes.
It never stops a lane's Worker before the process stops (a retired lane that looks empty
may still get a run started by a client that read the old count a moment ago); a new
process serves retired lanes only while they hold something. A run never moves: it
finishes on the lane it started on.

`workers` (the concurrency) is shared out: each lane's Worker gets ceil(workers / lanes
served at start) executors; `batch_size` is per lane (one read and one settle per lane
per batch)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from exospherehost.broker.streams import Broker
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.cancelling import cancel_and_wait
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.prefetch import Prefetch
from exospherehost.runtime.resilience import Retrier, pause
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.stats import RuntimeStats
from exospherehost.runtime.worker import Worker

log = logging.getLogger("exospherehost.runtime.worker")

LANE_CHECK_S = 5.0
"""How often a Runtime reads its namespace's lane count again."""


class LaneWorkers:
    """The Workers of one Runtime process, one per lane served; used as the Runtime's
    worker (`run`, `stop`, `stats`, `settled`)."""

    def __init__(
        self,
        broker: Broker,
        specs: Sequence[NodeSpec],
        consumer: str,
        graphs: GraphCache,
        settle_cfg: SettleConfig,
        *,
        concurrency: int = 32,
        retry: Retrier | None = None,
        ready: asyncio.Event | None = None,
        check_s: float | None = None,
        factory: Callable[..., Worker] = Worker,
        **worker_options: Any,
    ) -> None:
        self.broker = broker
        self.specs = list(specs)
        self.consumer = consumer
        self.graphs = graphs
        self.settle_cfg = settle_cfg
        self.concurrency = concurrency
        self.retry = retry if retry is not None else Retrier()
        self.ready = ready if ready is not None else asyncio.Event()
        self.check_s = LANE_CHECK_S if check_s is None else check_s
        self.worker_options = worker_options
        self._factory = factory
        self.stats = RuntimeStats([s.name for s in self.specs])
        self.workers: dict[int, Worker] = {}  # lane tag number -> its Worker
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._per_lane = concurrency

    @property
    def settled(self) -> int:
        return sum(w.settled for w in self.workers.values())

    @property
    def inflight(self) -> int:
        return sum(w.inflight for w in self.workers.values())

    @property
    def executing(self) -> int:
        return sum(w.executing for w in self.workers.values())

    @property
    def max_inflight(self) -> int:
        """Over the lanes served; before they are known, one lane's (Prefetch.window)."""
        if not self.workers:
            options = self.worker_options
            batch = int(options.get("batch_size", 100))
            return Prefetch.window(self.concurrency, batch, options.get("prefetch"))
        return sum(w.max_inflight for w in self.workers.values())

    @property
    def lanes(self) -> list[int]:
        """Tag numbers of the lanes served now."""
        return sorted(self.workers)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()  # the first sets the shared retrier's deadline
        if not self.workers:  # stopped before serving: nothing to finish
            self.retry.stop(time.monotonic())

    def _worker(self, lane: int) -> Worker:
        lane_broker = self.broker.on_lane(lane)
        cfg = dataclasses.replace(self.settle_cfg, keys=lane_broker.keys)
        worker = self._factory(
            lane_broker,
            self.specs,
            self.consumer,
            self.graphs,
            cfg,
            concurrency=self._per_lane,
            retry=self.retry,
            ready=asyncio.Event(),
            **self.worker_options,
        )
        worker.stats = self.stats  # one set of counters for the process
        return worker

    async def _lanes_to_serve(self) -> list[int]:
        return await self.broker.lanes_to_serve([s.name for s in self.specs])

    def _start(self, lanes: Sequence[int]) -> list[Worker]:
        started = []
        for lane in lanes:
            if lane in self.workers:
                continue
            worker = self.workers[lane] = self._worker(lane)
            if self.retry.stopping.is_set():
                worker.stop()
            self._tasks[lane] = asyncio.create_task(worker.run(), name=f"exo-lane-{lane}")
            started.append(worker)
        if started and len(self.workers) > 1:
            log.info(
                "serving %d lanes of namespace %s: %s",
                len(self.workers),
                self.broker.keys.namespace,
                ", ".join(self.broker.keys.on_lane(t).lane_base for t in self.lanes),
            )
        return started

    async def run(self) -> None:
        """Serve every lane until stopped; `ready` is set once the Workers of the lanes
        served at start joined their groups."""
        stopping = self.retry.stopping
        try:
            lanes = await self.retry.until_ok(self._lanes_to_serve)
        except Exception:
            if stopping.is_set():
                return
            raise
        self._per_lane = max(1, -(-self.concurrency // len(lanes)))
        first = self._start(lanes)
        readiness = asyncio.gather(*(w.ready.wait() for w in first))
        readiness.add_done_callback(lambda _: self.ready.set())
        watch = asyncio.create_task(self._watch(), name="exo-lanes")
        try:
            while self._tasks:
                done, _ = await asyncio.wait(
                    list(self._tasks.values()), return_when=asyncio.FIRST_COMPLETED
                )
                failed = None
                for task in done:
                    lane = next(t for t, x in self._tasks.items() if x is task)
                    del self._tasks[lane]
                    if not task.cancelled() and task.exception() is not None:
                        failed = task
                if failed is not None or not stopping.is_set():
                    # A lane's Worker ended while serving (it failed): stop them all, as a
                    # one-lane Runtime stops when its Worker fails.
                    self.stop()
                    rest = list(self._tasks.values())
                    await asyncio.gather(*rest, return_exceptions=True)
                    self._tasks.clear()
                    if failed is not None:
                        failed.result()  # raises the lane's error
        finally:
            # The watch makes Redis calls, where one cancel can be lost.
            await cancel_and_wait([readiness, watch])

    async def _watch(self) -> None:
        """Start Workers for lanes that came to be served (a new count, or an old lane
        that holds states again)."""
        stopping = self.retry.stopping
        last_error = ""
        while not await pause(self.check_s, stopping):
            try:
                lanes = await self._lanes_to_serve()
            except Exception as exc:  # an outage, a bad count: said once, checked again
                if str(exc) != last_error:
                    log.warning("cannot read the lanes of %s: %s", self.broker.keys.namespace, exc)
                    last_error = str(exc)
                continue
            last_error = ""
            if not stopping.is_set():
                self._start(lanes)
