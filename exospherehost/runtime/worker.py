"""The hot loop of one Runtime process: read -> execute -> settle, as three kinds of
coroutines joined by two buffers, so a read, executions and settles overlap:

    reader ──Jobs──▶ queue ──▶ N executors ──Outcomes──▶ buffer ──▶ settler (1 script/batch,
                                                                   2 batches in flight)

No task is spawned per state: `concurrency` long-lived executors pull from the queue, and
a state whose node never awaits runs straight through. `inflight` (read, not yet settled)
is bounded by `max_inflight`, which is also the most states a crash can leave pending.
The reader and each settle slot keep their own Redis connection (exospherehost.broker.lane).
The upkeep loops beside it (promote, reclaim, heartbeat, retire) are in runtime/upkeep/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Any

from redis.exceptions import ResponseError

from exospherehost.broker.codec import MalformedEntry, decode, printable_fields, unpack
from exospherehost.broker.lane import Lane
from exospherehost.broker.plan import APPLIED, FAILED, REFUSED
from exospherehost.broker.streams import Broker
from exospherehost.errors import ShutdownAbandoned as ShutdownAbandoned  # old import path
from exospherehost.graph.compiled import REFS
from exospherehost.graphstore import GraphCache
from exospherehost.limits import human
from exospherehost.runtime.cancelling import cancel_and_wait
from exospherehost.runtime.execution import (
    InternalErrors,
    NodeSpec,
    describe,
    execute,
    format_traceback,
)
from exospherehost.runtime.failurelog import FailureLog
from exospherehost.runtime.jobqueue import JobQueue
from exospherehost.runtime.outcomes import (
    Completed,
    Failed,
    Job,
    Malformed,
    Outcome,
    Released,
    source,
)
from exospherehost.runtime.prefetch import HORIZON_S, Prefetch
from exospherehost.runtime.resilience import Retrier, supervised
from exospherehost.runtime.settle import (
    SettleConfig,
    as_failure,
    plan_dead_letters,
    plan_settle,
)
from exospherehost.runtime.stats import RuntimeStats
from exospherehost.runtime.upkeep.cancelled import CancelledRuns
from exospherehost.runtime.upkeep.heartbeat import heartbeat
from exospherehost.runtime.upkeep.holdings import Holdings
from exospherehost.runtime.upkeep.promote import promote
from exospherehost.runtime.upkeep.prune import Pruner, consumer_idle_bound
from exospherehost.runtime.upkeep.reclaim import Reclaimer
from exospherehost.runtime.upkeep.retire import retire
from exospherehost.secrets import SecretsError

log = logging.getLogger("exospherehost.runtime.worker")
SETTLES_IN_FLIGHT = 2  # see Worker._settler
# After the grace period, how long settles still retry through an outage before a
# stopping worker gives up (what is unsettled then stays pending and gets reclaimed).
SETTLE_AFTER_GRACE_S = 2.0
_UNSETTLED = -1  # flag of a state whose settle failed: left pending, counted nowhere


class Worker:
    """`retry`: the Runtime's, shared with its other Redis calls (one outage log, one
    stop); `ready`: set once the groups exist and this consumer joined them."""

    def __init__(
        self,
        broker: Broker,
        specs: Sequence[NodeSpec],
        consumer: str,
        graphs: GraphCache,
        settle_cfg: SettleConfig,
        *,
        batch_size: int = 100,
        concurrency: int = 32,
        block_ms: int = 1000,
        grace_s: float = 30.0,
        visibility_ms: int = 30_000,
        max_deliveries: int = 5,
        suspect_timeout_s: float | None = None,
        consumer_idle_ms: int | None = None,
        retry: Retrier | None = None,
        ready: asyncio.Event | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.broker = broker
        self.specs = {s.name: s for s in specs}
        self.consumer = consumer
        self.graphs = graphs
        self.settle_cfg = settle_cfg
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.block_ms = block_ms
        self.grace_s = grace_s
        self.visibility_ms = visibility_ms
        self.max_deliveries = max_deliveries
        # How many to read per node: full batches for short executions (runtime/prefetch).
        window = Prefetch.window(concurrency, batch_size, prefetch)
        self.prefetch = Prefetch(list(self.specs), concurrency, batch_size, window, prefetch)
        self.holdings = Holdings(self.specs, window)
        # The hot path's own references (the settles release and wake per state).
        self._held, self._watch = self.holdings.held, self.holdings.watch
        self.settled = 0
        self.stats = RuntimeStats(list(self.specs))
        self._queue: JobQueue[Job] = JobQueue()
        self._outcomes: list[Outcome] = []
        self._has_outcomes = asyncio.Event()
        self.holdings.gathered = lambda: self._outcomes
        self.holdings.source = source
        self._retry = retry if retry is not None else Retrier()
        self._stopping = self._retry.stopping
        self._bugs = InternalErrors(log)  # bugs of our own, logged once per kind
        self.executing = 0  # executions running now (said when stopping)
        # Running states of watched nodes (Prefetch.watch), (node, perf_counter at start):
        # the reader reads their replacements just before they are expected to end.
        self._running: dict[int, tuple[str, float]] = {}
        self.cut_short = 0  # executions cancelled at the end of the grace period
        # Node failures, each once with what happens next (rate-limited per node).
        self._failures = FailureLog(logging.getLogger("exospherehost.failures"))
        self._done = asyncio.Event()  # everything read was settled or released
        self.ready = ready if ready is not None else asyncio.Event()
        self._executing: set[asyncio.Task[None]] = set()
        # A connection each for the reader's and the settles' one-call-per-batch loops.
        self._read_lane = Lane(broker.client)
        self._settle_lanes = [Lane(broker.client) for _ in range(SETTLES_IN_FLIGHT)]
        # Runs cancelled lately: their states are settled without being executed.
        self.cancelled = CancelledRuns()
        nodes = list(self.specs)
        idle_ms = consumer_idle_bound(consumer_idle_ms, visibility_ms)
        self._reclaimer = Reclaimer(
            broker,
            consumer,
            nodes,
            self.holdings,
            self._accept,
            self._retry,
            Pruner(broker, consumer, idle_ms, self._retry),
            visibility_ms=visibility_ms,
            max_deliveries=max_deliveries,
            suspect_timeout_s=suspect_timeout_s,
        )

    @property
    def inflight(self) -> int:
        """States read or claimed and not settled yet (at most max_inflight, see
        Reclaimer._room)."""
        return self.holdings.count

    @inflight.setter
    def inflight(self, count: int) -> None:
        self.holdings.count = count

    @property
    def max_inflight(self) -> int:
        return self.holdings.limit

    def stop(self) -> None:
        self._retry.stop(time.monotonic() + self.grace_s + SETTLE_AFTER_GRACE_S)
        self.holdings.room.set()  # a reader waiting for room wakes up and sees the stop

    async def run(self) -> None:
        """Serve until stopped: join the groups, then read -> execute -> settle, with the
        upkeep loops beside; at the stop, drain, settle what finished and leave."""
        # Tasks with nothing to finish once stopping give up at once in an outage: run()
        # itself (start-up and reading), then the promoter and the reclaimer.
        serving = asyncio.current_task()
        self._retry.serve([serving] if serving is not None else [])
        if not await self._join():
            return
        self.ready.set()
        settler = asyncio.create_task(self._settler(), name="exo-settler")
        upkeep = self._start_upkeep()
        executors = [
            asyncio.create_task(self._executor(), name=f"exo-exec-{i}")
            for i in range(self.concurrency)
        ]
        self._executing.update(executors)
        failure: BaseException | None = None
        try:
            await self._reader()
        except ShutdownAbandoned:
            pass  # stopped while Redis is unreachable: there is nothing more to read
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.stop()  # also when the reader failed: let the settler finish
            try:
                await self._drain(executors)
                self._has_outcomes.set()
                await self._shut_down(settler, upkeep)
            except Exception as exc:
                if failure is None:
                    raise
                # The reader's error is what ended the worker, and what the Runtime raises;
                # a shut-down failing after it (often of the same cause: a slot moving, a
                # server going) would otherwise replace it (issue 14: a reshard showed
                # Worker._retire, not the reader's error). Logged, with its traceback.
                log.error(
                    "the reader failed (%s: %s); stopping after it failed too",
                    type(failure).__name__,
                    failure,
                    exc_info=exc,
                )

    async def _join(self) -> bool:
        """Create the groups, join them, open the settle lanes; False if stopped first."""
        nodes = list(self.specs)
        until_ok = self._retry.until_ok
        try:
            await until_ok(lambda: self.broker.ensure_groups(nodes))
            await until_ok(lambda: self.broker.join(self.consumer, nodes))
            # Known before the first read: queued states of cancelled runs are not run.
            self.cancelled.add(
                await until_ok(lambda: self.broker.cancelled_since(0)), int(time.time() * 1000)
            )
            for lane in self._settle_lanes:
                # Connected up front: settles then reach Redis in the order they were sent
                # (a lane connecting lazily would let a later batch overtake).
                await until_ok(lane.open)
        except ShutdownAbandoned as exc:  # stopped before serving, Redis unreachable
            log.warning("stopped before serving: %s", exc)
            for lane in self._settle_lanes:
                await lane.close()
            return False
        return True

    def _start_upkeep(self) -> list[asyncio.Task[None]]:
        nodes, retry = list(self.specs), self._retry

        def beat() -> Awaitable[None]:
            return heartbeat(
                self.broker, self.consumer, self.holdings, self.visibility_ms, self._done, retry
            )

        stopping = retry.stopping
        upkeep = [
            asyncio.create_task(
                supervised("promoter", lambda: promote(self.broker, nodes, retry), stopping),
                name="exo-promoter",
            ),
            asyncio.create_task(
                supervised("reclaimer", self._reclaimer.run, stopping), name="exo-reclaimer"
            ),
            # The heartbeat goes on while stopping (claims in the grace period), to `done`.
            asyncio.create_task(supervised("heartbeat", beat, self._done), name="exo-heartbeat"),
            asyncio.create_task(
                supervised("cancelled", lambda: self.cancelled.watch(self.broker, retry), stopping),
                name="exo-cancelled",
            ),
        ]
        retry.serve(upkeep[:2] + upkeep[3:])  # the heartbeat keeps claims in the grace period
        return upkeep

    async def _shut_down(
        self, settler: asyncio.Task[None], upkeep: list[asyncio.Task[None]]
    ) -> None:
        """After the drain: let the settler finish, end the upkeep loops, leave the groups
        (unless Redis is down) and close the lanes."""
        abandoned = False  # a stopping worker gave up on an unreachable Redis
        try:
            await settler
        except ShutdownAbandoned:
            abandoned = True
        # Upkeep loops end on their own at their next wake-up (cancelling them mid-call
        # is unreliable: redis-py can swallow a cancellation into a retry); only one stuck
        # in an outage is cancelled after a bound.
        self._done.set()
        _, stuck = await asyncio.wait(upkeep, timeout=5)
        await cancel_and_wait(stuck)
        await asyncio.gather(*upkeep, return_exceptions=True)
        if unsettled := self.holdings.unsettled():
            log.warning(
                "stopped with %d states unsettled (Redis unreachable until the stop "
                "deadline); they stay pending and another worker reclaims them after "
                "visibility_timeout",
                unsettled,
            )
        if abandoned or self._retry.outage.since is not None:
            # Redis is down (and what we hold stays pending anyway): leaving the
            # groups would only cost one more failing call.
            log.warning("could not leave the consumer groups: Redis unreachable")
        else:
            await retire(self.broker, self.consumer, list(self.specs))
        for lane in (self._read_lane, *self._settle_lanes):
            await lane.close()

    # -- reading ------------------------------------------------------------------------
    async def _reader(self) -> None:
        holdings, plan, stats = self.holdings, self.prefetch.plan, self.stats.nodes
        due, running, clock = self.prefetch.due, self._running, time.perf_counter
        dry = False  # the last round of reads returned nothing
        while not self._stopping.is_set():
            # Slow nodes' states about to end count as ended: their replacements are read
            # now, so they do not wait a read round trip after the settle (runtime/prefetch).
            ending, wake = due(list(running.values()), clock()) if running else (0, None)
            # Per node, how many to read (runtime/prefetch.py): the room shared between the
            # streams (COUNT applies per stream), so a read never overshoots the window.
            reads = plan(stats, holdings.free(), self.executing - ending, len(self._queue), dry)
            if not reads:
                holdings.room.clear()
                # One event, set by settles and by stop(): waiting on two would cost two
                # tasks per wait, and the reader waits here about once per batch. Only
                # with slow states running, also until the next one is due.
                if wake is None:
                    await holdings.room.wait()
                else:
                    # At most one wake-up per HORIZON_S: a state stays due for 2 x LEAD_S.
                    pause = max(HORIZON_S, wake - clock())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(holdings.room.wait(), pause)
                continue
            block = self.block_ms if len(reads) == 1 else None
            got = 0
            for nodes, count in reads:
                batches = await self._retry.until_ok(
                    partial(self.broker.read, self.consumer, nodes, count, block, self._read_lane)
                )
                for node, entries in batches:
                    got += len(entries)
                    self._accept(node, entries)
            dry = not got

    def _accept(
        self,
        node: str,
        entries: list[tuple[bytes, dict[bytes, bytes]]],
        poison: str | None = None,
        deliveries: int = 1,
        timeout: float | None = None,
    ) -> None:
        """Take delivered entries of `node` into the pipeline (a reclaimed poison message
        straight to its settle). The hot path: it runs for every state read, so what the
        entries share is looked up once."""
        self.holdings.count += len(entries)
        held = self._held[node]
        now = time.monotonic()
        stream = self.broker.keys.queue(node)
        put = self._queue.put
        cancelled = self.cancelled.ids
        for entry_id, fields in entries:
            held[entry_id] = now
            try:
                env = decode(entry_id, fields)
            except Exception as exc:  # MalformedEntry; anything else would be a codec bug,
                # and one entry must never stop the reader: it is dead-lettered all the same.
                self.stats.malformed(node)
                why = str(exc) if isinstance(exc, MalformedEntry) else f"cannot decode: {exc!r}"
                reason = poison or why
                self._finish(Malformed(node, stream, entry_id, fields, reason, deliveries))
                continue
            job = Job(node, stream, entry_id, fields, env, deliveries, timeout)
            if poison is not None:
                self._finish(Failed(job, poison, "", permanent=True, executed=False))
            elif cancelled and env.run_id in cancelled:
                # Not executed: the settle drops it (its run is cancelled: settle.lua).
                self._finish(Completed(job, [], fanout=True))
            else:
                put(job)

    # -- executing ----------------------------------------------------------------------
    async def _executor(self) -> None:
        """Run jobs until the queue closes. Survives anything but its own cancellation
        (shutdown grace over): execute() turns whatever node code raises into an outcome,
        and a bug of our own here fails the state, logged, instead of the executor."""
        queue = self._queue
        clock = time.perf_counter
        me = asyncio.current_task()
        assert me is not None
        wall = time.time
        watched, running = self.prefetch.watched, self._running
        while (job := await queue.get()) is not None:
            started = clock()
            job.started = wall()  # the state's record (settle.py)
            self.executing += 1
            if job.node in watched:
                running[id(job)] = (job.node, started)
            try:
                outcome = await self._execute(job)
            except ShutdownAbandoned:
                self._finish(Released(job))  # Redis gone at shutdown: it stays pending
                continue
            except BaseException as exc:
                if me.cancelling():
                    self.cut_short += 1
                    self._finish(Released(job))  # shutdown grace ran out: hand it back now
                    raise
                outcome = self._internal_error(job, exc)
            finally:
                self.executing -= 1
                running.pop(id(job), None)
            if me.cancelling():  # cancelled, and node code swallowed the cancellation
                if isinstance(outcome, Failed):
                    self.cut_short += 1
                    outcome = Released(job)
                self._finish(outcome)
                raise asyncio.CancelledError
            try:
                self.stats.executed(job.node, outcome, clock() - started)
            except Exception as exc:  # counters are bookkeeping: the outcome still settles
                self._bugs.report("counting an execution", exc)
            self._finish(outcome)

    def _internal_error(self, job: Job, exc: BaseException) -> Failed:
        """A bug in our own code path (not node code): the state fails for good."""
        self._bugs.report(f"executing a {job.node} state", exc)
        reason = f"internal error executing {job.node}: {describe(exc)}"
        return Failed(job, reason, format_traceback(exc), permanent=True)

    async def _execute(self, job: Job) -> Outcome:
        env = job.env
        graph = None
        secrets: dict[str, str] | SecretsError = {}
        inputs = None  # rendered here, not kept in the envelope (a retry renders again)
        if env.run_id is not None and env.graph is not None:
            graph = self.graphs.compiled.get((env.graph, env.graph_version))  # cached: no await
            if graph is None:  # first state of this graph version here: load it
                graph = await self._retry.until_ok(
                    partial(self.graphs.get, env.graph, env.graph_version)
                )
            secrets = self.graphs.secrets(env.graph, env.graph_version)
            ident = env.identifier or ""
            read: dict[str, Any] = {}
            if graph is not None and REFS in env.ctx and ident in graph.nodes:
                # Store values too big to travel in envelopes, read now (graph.compiled).
                got = await self._read_store(job, graph.needs_store(ident, env.ctx))
                if isinstance(got, Failed):
                    return got
                read = got
            if graph is not None and env.unite is not None and ident in graph.unites:
                # A fired fan-in: its inputs come from what every branch left behind.
                collected = await self._retry.until_ok(
                    partial(self.broker.collected, env.run_id, ident, env.unite)
                )
                try:
                    if read:
                        inputs = graph.unite_inputs(ident, env.ctx, collected, read)
                    else:
                        env.inputs = graph.unite_inputs(ident, env.ctx, collected)
                except Exception as exc:
                    reason = f"cannot build the inputs of uniting node {ident!r}: {exc}"
                    return Failed(job, reason, format_traceback(exc), permanent=True)
            elif read and graph is not None:
                try:
                    inputs = graph.render_deferred(ident, env.ctx, read, env.inputs)
                except Exception as exc:
                    reason = f"cannot build the inputs of node {ident!r}: {exc}"
                    return Failed(job, reason, format_traceback(exc), permanent=True)
        return await execute(self.specs[job.node], job, graph, secrets, self.broker, inputs)

    async def _read_store(self, job: Job, keys: list[str]) -> dict[str, Any] | Failed:
        """The run-store values `keys` for a state's inputs; a missing or oversized one
        fails the state for good (deterministic), naming the key and its size."""
        env, limits = job.env, self.settle_cfg.limits
        read: dict[str, Any] = {}
        total = 0
        for key in keys:
            raw = await self._retry.until_ok(partial(self.broker.store_get, env.run_id or "", key))
            if raw is None:
                reason = (
                    f"input references ${{{{ store.{key} }}}} but the run store has no key "
                    f"{key!r} (deleted, or the run expired)"
                )
                return Failed(job, reason, "", permanent=True)
            total += len(raw)
            if total > limits.state_bytes:
                exc = limits.exceeded(
                    f"node {job.node} (state {env.state_id}, identifier {env.identifier}):",
                    f"the inputs read from the run store (key {key!r} {human(len(raw))})",
                    total,
                    "state_bytes",
                )
                return Failed(job, str(exc), "", permanent=True)
            read[key] = unpack(raw)
        return read

    def _finish(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._has_outcomes.set()

    async def _drain(self, executors: list[asyncio.Task[None]]) -> None:
        """Hand back at once what was read but not started (another worker can run it
        now); finish what runs within the grace period (counted from stop()); release
        what is still running after it."""
        self._queue.close()
        queued = self._queue.drain()
        for job in queued:
            self._finish(Released(job))
        left = self._retry.deadline - SETTLE_AFTER_GRACE_S - time.monotonic()
        running = self.executing
        if queued or running:
            log.info(
                "stopping: %d read but not started states handed back; finishing %d "
                "in-flight states (grace %.1f s)",
                len(queued),
                running,
                max(0.0, left),
            )
        _, late = await asyncio.wait(executors, timeout=max(0.0, left))
        await cancel_and_wait(late)  # node code in a Redis call can lose one cancel
        await asyncio.gather(*executors, return_exceptions=True)
        if running:
            cut = self.cut_short
            log.info(
                "stopping: %d in-flight states finished, %d cut short at the grace period "
                "and handed back",
                running - cut,
                cut,
            )

    # -- settling -----------------------------------------------------------------------
    async def _settler(self) -> None:
        """Hand the outcomes gathered so far to a settle, SETTLES_IN_FLIGHT at most at a
        time: the next batch is planned and sent while the previous one runs in Redis
        (W2's settle script takes ~2 ms there; one at a time, planning and Redis took
        turns and both sat idle a third of the time). Settles of disjoint states commute:
        each is one atomic script, and a successor cannot be in flight before the settle
        that creates it has run."""
        slots = asyncio.Semaphore(len(self._settle_lanes))
        lanes = list(self._settle_lanes)
        running: set[asyncio.Task[None]] = set()
        while True:
            if not self._outcomes:
                if all(t.done() for t in self._executing) and self._stopping.is_set():
                    break
                self._has_outcomes.clear()
                await self._has_outcomes.wait()
                continue
            await slots.acquire()  # outcomes keep gathering meanwhile: a bigger batch
            batch, self._outcomes = self._outcomes, []
            self.holdings.room.set()  # their executors are free: slow nodes read (prefetch)
            task = asyncio.create_task(self._settle_batch(batch, lanes.pop(), lanes, slots))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    async def _settle_batch(
        self, batch: list[Outcome], lane: Lane, lanes: list[Lane], slots: asyncio.Semaphore
    ) -> None:
        settling = self.holdings.settling
        settling[id(batch)] = (time.monotonic(), batch)
        try:
            try:
                flags = await self._settle(batch, lane)
            except ResponseError as exc:
                # The call was refused as a whole, before it wrote anything (the script
                # checks what can fail before its first write and catches what fails
                # after it; over maxmemory Redis refuses it up front). Settle one by one,
                # so one state cannot hold up the others.
                log.error("settle of %d states refused (%s); settling one by one", len(batch), exc)
                flags = [await self._settle_alone(outcome, lane) for outcome in batch]
        finally:
            del settling[id(batch)]
            lanes.append(lane)
            slots.release()
        # One pass over the batch: release what was held, wake watchers, count per node.
        held, watch, nodes = self._held, self._watch, self.stats.nodes
        failed: list[Outcome] = []
        for outcome, flag in zip(batch, flags, strict=True):
            node, entry_id = source(outcome)
            held[node].pop(entry_id, None)
            if watch and (watcher := watch.pop((node, entry_id), None)) is not None:
                watcher.set()
            if flag > 0:
                nodes[node].settled += 1
                if type(outcome) is Failed or type(outcome) is Malformed:
                    failed.append(outcome)
            elif flag == 0:
                nodes[node].late_settles += 1
        if failed:
            self._failures.report(failed)
        self.stats.decided(batch)
        self.holdings.count -= len(batch)
        self.settled += len(batch)
        self.holdings.room.set()
        if 2 in flags:
            self._log_orphans(batch, flags)
        if late := flags.count(0):
            # Reclaimed and settled by another worker while we ran them: the script
            # emitted nothing for these (stage transitions happen once).
            log.info("%d late settles skipped: already settled by another worker", late)

    async def _settle(self, batch: list[Outcome], lane: Lane) -> list[int]:
        """One settle script call for `batch`: its flags (see Broker.settle). States the
        script refused or could not finish are dead-lettered here (`_rescue`), so the
        flags come back as 1, 2, 0 or _UNSETTLED."""
        plan = plan_settle(batch, self.settle_cfg, self.max_deliveries)
        if plan.size > self.settle_cfg.limits.settle_bytes and len(batch) > 1:
            # Too much for one call (Redis refuses an argument over proto-max-bulk-len):
            # halves, each planned again (a state's own emissions are within the limit).
            half = len(batch) // 2
            return await self._settle(batch[:half], lane) + await self._settle(batch[half:], lane)
        flags = await self._retry.until_ok(lambda: self.broker.settle(plan, lane))
        if not flags.errors:
            return flags
        out = list(flags)
        for i, why in flags.errors.items():
            out[i] = await self._rescue(batch[i], flags[i], why, lane)
        return out

    async def _settle_alone(self, outcome: Outcome, lane: Lane) -> int:
        """Settle one state after its batch's call was refused; if its own call is refused
        too, dead-letter it with the reason; if even that is refused, leave it pending."""
        try:
            return (await self._settle([outcome], lane))[0]
        except ResponseError as exc:
            return await self._rescue(
                outcome, REFUSED, f"the settle script refused it: {exc}", lane
            )

    async def _rescue(self, outcome: Outcome, flag: int, why: str, lane: Lane) -> int:
        """A state whose settle failed part-way (FAILED: acked, its ops stopped) or was
        refused (REFUSED: untouched, still pending): dead-letter it with the reason. While
        still pending, as a permanent failure (its run learns of it); else, or when that
        is refused too, as a bare dead letter. If nothing can be written it stays pending
        (reclaimed later) with an ERROR log naming it; it never vanishes silently."""
        cfg = self.settle_cfg
        reason = f"cannot settle {type(outcome).__name__}: {why}"
        acked = flag == FAILED
        if not acked and (failure := as_failure(outcome, reason)) is not None:
            plan = plan_settle([failure], cfg)
            try:
                got = await self._retry.until_ok(lambda: self.broker.settle(plan, lane))
            except ResponseError as exc:
                reason += f"; nor as a failure: {exc}"
            else:
                if not got.errors:
                    return got[0]
                if got[0] == FAILED:
                    # Acked, so the pre-pass let it through and an op after the first
                    # failed: a permanent failure's first op is its dead letter (see
                    # settle._Planner.failed), which is written. Another, bare, letter
                    # would be a second one for the same state (redriven twice).
                    log.error(
                        "dead-lettered %s, but its run's bookkeeping failed: %s; %s",
                        _name(outcome),
                        reason,
                        got.errors[0],
                    )
                    return APPLIED
                reason += f"; nor as a failure: {got.errors[0]}"
        bare = plan_dead_letters([(outcome, reason)], cfg, acked=acked)
        try:
            got = await self._retry.until_ok(lambda: self.broker.settle(bare, lane))
        except ResponseError as exc:
            reason += f"; nor as a bare dead letter: {exc}"
        else:
            if not got.errors:
                log.error("dead-lettered %s: %s", _name(outcome), reason)
                return APPLIED if acked else got[0]
            reason += f"; nor as a bare dead letter: {got.errors[0]}"
        where = "ACKED BUT NOT DEAD-LETTERED" if acked else "left pending"
        log.error("%s %s (fields %s): %s", where, _name(outcome), _fields(outcome), reason)
        return _UNSETTLED

    def _log_orphans(self, batch: list[Outcome], flags: list[int]) -> None:
        """States settled without effect because their run does not exist (it expired
        after run_retention, or the entry was forged): say which, once per batch."""
        orphans = [
            f"{o.job.node} state {o.job.env.state_id} of run {o.job.env.run_id} "
            f"(graph {o.job.env.graph!r})"
            for o, flag in zip(batch, flags, strict=True)
            if flag == 2 and not isinstance(o, Malformed)
        ]
        log.warning(
            "%d state(s) settled without effect, their run does not exist (expired after "
            "run_retention, or a forged entry): %s",
            len(orphans),
            "; ".join(orphans[:10]) + (" ..." if len(orphans) > 10 else ""),
        )


def _name(outcome: Outcome) -> str:
    node, entry_id = source(outcome)
    state = "" if isinstance(outcome, Malformed) else f" state {outcome.job.env.state_id}"
    return f"{node}{state} (entry {entry_id.decode()})"


def _fields(outcome: Outcome) -> dict[str, str]:
    fields = outcome.fields if isinstance(outcome, Malformed) else outcome.job.fields
    return printable_fields(dict(list(fields.items())[:20]), limit=200)
