"""Cron triggers: every Runtime runs a scheduler that starts graph runs on schedule (UTC),
exactly once per fire time however many Runtimes run.

Expressions are standard 5-field cron (`m h dom mon dow`, minute resolution) or 6 fields
with SECONDS FIRST (`s m h dom mon dow`, as in Quartz/Spring), parsed by croniter; `@hourly`
style aliases work too.

How it stays exactly-once: each scheduler computes the same fire times (UTC, whole
seconds) and, when one is due, calls the cron_fire script, which SETs the marker
`exo:{ns}:cron:<graph>:<fire_ts>` with NX and only when it wins writes the run (the same
writes as `StateManager.trigger`, in the same script). The marker lives `marker_ttl_s`,
longer than any fire time is still attempted (`grace_s`), so a late scheduler never fires
a time again.

Missed fire times: a trigger counts from when its graph version was upserted or the
scheduler started, whichever is later. A fire time is fired if some scheduler is running
within `grace_s` (60 s) after it; fire times that pass while no Runtime runs are NOT
caught up (a restart never causes a burst of runs), and neither are those more than
`grace_s` late (a scheduler that stalled skips them, logging how far it skipped).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from exospherehost.broker.fields import RUN_CRON, RUN_FIRE_TS, RUN_TRIGGER
from exospherehost.broker.streams import Broker
from exospherehost.errors import ShutdownAbandoned
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.graph.cron import CronExpressionError, check_expression, next_fire
from exospherehost.graph.runplan import plan_run, run_store
from exospherehost.graphstore import GraphStore, compile_doc
from exospherehost.runtime.resilience import OutageLog, Retrier, pause

log = logging.getLogger("exospherehost.runtime.cron")


@dataclass
class _Graph:
    version: int
    updated_s: float
    expressions: list[str]
    compiled: CompiledGraph | None = None


@dataclass
class _Trigger:
    graph: str
    expression: str
    next_ts: int


@dataclass
class CronStats:
    fired: int = 0  # runs this scheduler started
    duplicates: int = 0  # fire times another scheduler had already fired
    skipped: int = 0  # fire times given up (too late, or the run could not be planned)
    errors: list[str] = field(default_factory=list)  # the last few problems, newest last


class CronScheduler:
    """Fires the cron triggers of every graph of a namespace. `clock` (epoch seconds) is
    injectable for tests; `tick(now)` does one round without sleeping. `run()` loops until
    `stop()` (cooperatively: redis-py can swallow a cancellation into a retry)."""

    def __init__(
        self,
        broker: Broker,
        graphs: GraphStore,
        *,
        clock: Callable[[], float] = time.time,
        reload_s: float = 2.0,
        grace_s: float = 60.0,
        marker_ttl_s: int | None = None,
        outage: OutageLog | None = None,
    ) -> None:
        self.broker = broker
        self.keys = broker.keys
        self.graphs = graphs
        self.clock = clock
        self._stop = asyncio.Event()
        self.reload_s = reload_s
        self.grace_s = grace_s
        self.marker_ttl_s = marker_ttl_s or int(grace_s) + 600
        self.stats = CronStats()
        self.outage = outage or OutageLog()  # the Runtime shares its own (and its worker's)
        self._retry = Retrier(self.outage, self._stop)  # a stop ends an outage's retries
        self._started: float | None = None
        self._reload_due = 0.0
        self._loaded: dict[str, _Graph] = {}
        self._triggers: dict[tuple[str, str], _Trigger] = {}

    @property
    def triggers(self) -> dict[tuple[str, str], int]:
        """(graph, expression) -> next fire time (epoch seconds) currently scheduled."""
        return {k: t.next_ts for k, t in self._triggers.items()}

    def stop(self) -> None:
        self._stop.set()

    async def _pause(self, seconds: float) -> None:
        await pause(seconds, self._stop)

    async def run(self) -> None:
        """Schedule until `stop()`; Redis outages are ridden out with capped backoff."""
        while not self._stop.is_set():
            try:
                await self._retry.until_ok(self.tick)
            except ShutdownAbandoned:
                return  # stopped while Redis is unreachable
            except Exception as exc:
                log.exception("cron scheduler round failed")
                self._note(f"round failed: {type(exc).__name__}: {exc}")
                await self._pause(1.0)
                continue
            wake = min([t.next_ts for t in self._triggers.values()] + [self._reload_due])
            await self._pause(min(max(wake - self.clock(), 0.005), self.reload_s))

    async def tick(self, now: float | None = None) -> int:
        """Reload graphs when due, fire every due fire time; returns runs started."""
        now = self.clock() if now is None else now
        if self._started is None:
            self._started = now
        if now >= self._reload_due:
            await self.reload(now)
        fired = 0
        for key, trig in list(self._triggers.items()):
            while trig.next_ts <= now and self._triggers.get(key) is trig:
                if now - trig.next_ts > self.grace_s:
                    resume = next_fire(trig.expression, math.ceil(now - self.grace_s) - 1)
                    self.stats.skipped += 1
                    self._note(
                        f"graph {trig.graph!r} cron {trig.expression!r}: fire times from "
                        f"{_iso(trig.next_ts)} to before {_iso(resume)} are more than "
                        f"{self.grace_s:g}s late; skipped"
                    )
                    trig.next_ts = resume
                    continue
                fired += await self._fire(trig, now)
                trig.next_ts = next_fire(trig.expression, trig.next_ts)
        return fired

    async def reload(self, now: float) -> None:
        """Pick up new, changed and removed graphs (only changed versions are read)."""
        self._reload_due = now + self.reload_s
        versions = await self.graphs.versions()
        for name in list(self._loaded):
            if name not in versions:
                del self._loaded[name]
        for name, version in versions.items():
            known = self._loaded.get(name)
            if known is not None and known.version == version:
                continue
            doc = await self.graphs.load(name, version)
            if doc is None:
                continue
            loaded = _Graph(version, float(doc.get("updated_ms") or 0) / 1000, [])
            for trig in doc.get("triggers") or ():
                expression = str(trig.get("expression", ""))
                try:
                    loaded.expressions.append(check_expression(expression))
                except CronExpressionError as exc:
                    self._note(f"graph {name!r}: {exc}; trigger ignored")
            if loaded.expressions:
                try:
                    loaded.compiled = compile_doc(doc)
                except Exception as exc:  # a forged document: skip it until it changes
                    self._note(f"graph {name!r} v{version} cannot be compiled ({exc})")
                    loaded.expressions = []
            self._loaded[name] = loaded
        started = self._started if self._started is not None else now
        wanted: set[tuple[str, str]] = set()
        for name, g in self._loaded.items():
            since = math.floor(max(started, g.updated_s))
            for expression in g.expressions:
                key = (name, expression)
                wanted.add(key)
                if key not in self._triggers:
                    first = next_fire(expression, since)
                    self._triggers[key] = _Trigger(name, expression, first)
                    log.info(
                        "graph %r: cron %r scheduled, first fire %s", name, expression, _iso(first)
                    )
        for key in list(self._triggers):
            if key not in wanted:
                del self._triggers[key]
                log.info("graph %r: cron %r no longer scheduled", *key)

    async def _fire(self, trig: _Trigger, now: float) -> int:
        """Try to start the run of `trig` for its current fire time: 1 when this scheduler
        started it, 0 when another had (or it cannot be started)."""
        fire_ts = trig.next_ts
        for _ in range(3):
            g = self._loaded.get(trig.graph)
            if g is None or g.compiled is None or trig.expression not in g.expressions:
                return 0  # the graph or this trigger was removed meanwhile
            try:
                graph = g.compiled
                start = plan_run(
                    graph,
                    self.keys,
                    inputs={},
                    store=run_store(graph, {}),
                    start_delay_ms=0,
                    now_ms=int(now * 1000),
                    extra_fields={
                        RUN_TRIGGER: "cron",
                        RUN_CRON: trig.expression,
                        RUN_FIRE_TS: fire_ts,
                    },
                )
            except (ValueError, TypeError) as exc:
                self.stats.skipped += 1
                self._note(f"graph {trig.graph!r} cron fire {_iso(fire_ts)} skipped: {exc}")
                return 0
            result = await self.broker.cron_fire(start, g.version, fire_ts, self.marker_ttl_s)
            if result == 1:
                self.stats.fired += 1
                log.debug("graph %r: cron run %s for %s", trig.graph, start.run_id, _iso(fire_ts))
                return 1
            if result == 0:
                self.stats.duplicates += 1
                return 0
            await self.reload(now)  # -1: upserted meanwhile; fire with the current version
        return 0

    def _note(self, message: str) -> None:
        log.warning("%s", message)
        self.stats.errors = [*self.stats.errors[-9:], message]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
