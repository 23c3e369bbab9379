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

One clock: Redis's. The script fires a time only when it is due and at most
`marker_ttl_s - 60` late by Redis's clock (TIME), so a host whose clock is off can neither
fire early, nor fire a time in the future, nor fire one whose marker expired. Each
scheduler also reads Redis's clock whenever it reloads graphs (and before it skips fire
times as too late) and schedules by it (its host clock + the measured offset), and logs a
warning (at most once an hour) when its host's clock is more than `max_skew_s` off
Redis's. Triggers count from the version's `updated_ms`, Redis's clock too.

Missed fire times: a trigger counts from when its graph version was upserted or the
scheduler started, whichever is later. A fire time is fired if some scheduler is running
within `grace_s` (60 s) after it; fire times that pass while no Runtime runs are NOT
caught up (a restart never causes a burst of runs), and neither are those more than
`grace_s` late (a scheduler that stalled skips them, logging how far it skipped).
"""

from __future__ import annotations

import asyncio
import enum
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
from exospherehost.graphstore import SECRETS_SWEEP_S, GraphStore, compile_doc
from exospherehost.runtime.resilience import OutageLog, Retrier, pause

log = logging.getLogger("exospherehost.runtime.cron")

MARKER_MARGIN_S = 60
"""A fire marker outlives the latest time its fire time may be fired by this much."""

SKEW_LOG_EVERY_S = 3600.0
"""A host clock off Redis's is warned about at most this often (per scheduler)."""


class _Fire(enum.Enum):
    FIRED = "fired"
    DONE = "done"  # fired by another, too late, or impossible
    EARLY = "early"  # not due by Redis's clock


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
    early: int = 0  # fires Redis refused as not due yet by its clock (then re-synced)
    errors: list[str] = field(default_factory=list)  # the last few problems, newest last


class CronScheduler:
    """Fires the cron triggers of every graph of a namespace. `clock` (the host's clock,
    epoch seconds) is injectable for tests; the scheduler runs on Redis's clock, estimated
    as `clock()` + the offset measured at each reload. `tick(now)` does one round without
    sleeping (`now`: Redis's time). `run()` loops until `stop()` (cooperatively: redis-py
    can swallow a cancellation into a retry)."""

    def __init__(
        self,
        broker: Broker,
        graphs: GraphStore,
        *,
        clock: Callable[[], float] = time.time,
        reload_s: float = 2.0,
        grace_s: float = 60.0,
        marker_ttl_s: int | None = None,
        max_skew_s: float = 2.0,
        outage: OutageLog | None = None,
    ) -> None:
        self.broker = broker
        self.keys = broker.keys
        self.graphs = graphs
        self.clock = clock
        self._stop = asyncio.Event()
        self.reload_s = reload_s
        self.grace_s = grace_s
        self.marker_ttl_s = marker_ttl_s or math.ceil(grace_s) + 600
        if self.marker_ttl_s < grace_s + 2 * MARKER_MARGIN_S:
            raise ValueError(
                f"marker_ttl_s ({self.marker_ttl_s}) must exceed grace_s ({grace_s:g}) by "
                f"at least {2 * MARKER_MARGIN_S} s"
            )
        # The script refuses fire times later than this by Redis's clock: a marker set at
        # or after its fire time (Redis's clock again) still lives then.
        self.late_bound_s = self.marker_ttl_s - MARKER_MARGIN_S
        self.max_skew_s = max_skew_s
        self.offset: float | None = None  # Redis's clock - the host's, as last measured
        self._skew_logged: float | None = None  # monotonic time of the last skew warning
        self.stats = CronStats()
        self.outage = outage or OutageLog()  # the Runtime shares its own (and its worker's)
        self._retry = Retrier(self.outage, self._stop)  # a stop ends an outage's retries
        self._started: float | None = None
        self._reload_due = 0.0
        self._sweep_due = 0.0  # the secrets sweep rides on this loop, which every Runtime runs
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

    def now(self) -> float:
        """Redis's clock as this scheduler estimates it (epoch seconds)."""
        return self.clock() + (self.offset or 0.0)

    async def sync_clock(self) -> float:
        """Measure Redis's clock against the host's (`clock`); warn when they differ by
        more than `max_skew_s`. Returns the offset (Redis - host, seconds)."""
        before = self.clock()
        seconds, micros = await self.graphs.records.clock()
        after = self.clock()
        self.offset = seconds + micros / 1e6 - (before + after) / 2
        if abs(self.offset) > self.max_skew_s:
            now = time.monotonic()
            if self._skew_logged is None or now - self._skew_logged >= SKEW_LOG_EVERY_S:
                self._skew_logged = now
                log.warning(
                    "this host's clock is %.1f s %s Redis's (more than %g s): cron fire "
                    "times follow Redis's clock; fix the host's time sync (e.g. NTP)",
                    abs(self.offset),
                    "behind" if self.offset > 0 else "ahead of",
                    self.max_skew_s,
                )
        return self.offset

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
            await self._pause(min(max(wake - self.now(), 0.005), self.reload_s))

    async def tick(self, now: float | None = None) -> int:
        """Reload graphs when due, fire every due fire time; returns runs started. `now`
        (Redis's time) defaults to this scheduler's estimate, re-measured when a reload
        is due."""
        estimated = now is None
        synced = False
        if now is None:
            if self.offset is None or self.now() >= self._reload_due:
                await self.sync_clock()
                synced = True
            now = self.now()
        if self._started is None:
            self._started = now
        if now >= self._reload_due:
            await self.reload(now)
        fired = 0
        for key, trig in list(self._triggers.items()):
            while trig.next_ts <= now and self._triggers.get(key) is trig:
                if now - trig.next_ts > self.grace_s:
                    if estimated and not synced:  # a jump of the host's clock? Ask Redis
                        await self.sync_clock()
                        synced, now = True, self.now()
                        continue
                    resume = next_fire(trig.expression, math.ceil(now - self.grace_s) - 1)
                    self.stats.skipped += 1
                    self._note(
                        f"graph {trig.graph!r} cron {trig.expression!r}: fire times from "
                        f"{_iso(trig.next_ts)} to before {_iso(resume)} are more than "
                        f"{self.grace_s:g}s late; skipped"
                    )
                    trig.next_ts = resume
                    continue
                outcome = await self._fire(trig, now)
                if outcome is _Fire.EARLY:  # not due by Redis's clock (it re-synced)
                    if estimated:
                        synced, now = True, self.now()
                    break  # try it again when due by the re-synced clock
                fired += outcome is _Fire.FIRED
                trig.next_ts = next_fire(trig.expression, trig.next_ts)
        if now >= self._sweep_due:  # after the fires: never delays one
            self._sweep_due = now + SECRETS_SWEEP_S
            kept = await self.graphs.keep_live_secrets()
            if kept:
                log.info("kept the secrets of replaced graph versions with runs: %s", kept)
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

    async def _fire(self, trig: _Trigger, now: float) -> _Fire:
        """Try to start the run of `trig` for its current fire time: FIRED when this
        scheduler started it, EARLY when Redis's clock says it is not due yet, else DONE
        (another had fired it, it is too late, or it cannot be started)."""
        fire_ts = trig.next_ts
        for _ in range(3):
            g = self._loaded.get(trig.graph)
            if g is None or g.compiled is None or trig.expression not in g.expressions:
                return _Fire.DONE  # the graph or this trigger was removed meanwhile
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
                return _Fire.DONE
            result = await self.broker.cron_fire(
                start, g.version, fire_ts, self.marker_ttl_s, self.late_bound_s
            )
            if result == 1:
                self.stats.fired += 1
                log.debug("graph %r: cron run %s for %s", trig.graph, start.run_id, _iso(fire_ts))
                return _Fire.FIRED
            if result == 0:
                self.stats.duplicates += 1
                return _Fire.DONE
            if result == -2:
                self.stats.early += 1
                await self.sync_clock()
                return _Fire.EARLY
            if result == -3:
                self.stats.skipped += 1
                self._note(
                    f"graph {trig.graph!r} cron fire {_iso(fire_ts)} is more than "
                    f"{self.late_bound_s}s late by Redis's clock; skipped"
                )
                return _Fire.DONE
            await self.reload(now)  # -1: upserted meanwhile; fire with the current version
        return _Fire.DONE

    def _note(self, message: str) -> None:
        log.warning("%s", message)
        self.stats.errors = [*self.stats.errors[-9:], message]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
