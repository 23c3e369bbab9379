"""The hot loop of one Runtime process: read -> execute -> settle, as three kinds of
coroutines joined by two buffers, so a read, executions and settles overlap:

    reader ──Jobs──▶ queue ──▶ N executors ──Outcomes──▶ buffer ──▶ settler (1 script/batch,
                                                                   2 batches in flight)

No task is spawned per state: `concurrency` long-lived executors pull from the queue, and
a state whose node never awaits runs straight through. `inflight` (read, not yet settled)
is bounded by `max_inflight`, which is also the most states a crash can leave pending.
The reader and each settle slot keep their own Redis connection (exospherehost.broker.lane).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Literal, TypeVar

from redis.exceptions import ResponseError

from exospherehost.broker.codec import MalformedEntry, decode, printable_fields
from exospherehost.broker.keys import ENVELOPE_FIELD
from exospherehost.broker.lane import Lane
from exospherehost.broker.plan import APPLIED, FAILED, REFUSED
from exospherehost.broker.streams import Broker
from exospherehost.errors import ShutdownAbandoned as ShutdownAbandoned  # old import path
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.execution import (
    InternalErrors,
    NodeSpec,
    describe,
    execute,
    format_traceback,
)
from exospherehost.runtime.failurelog import FailureLog
from exospherehost.runtime.jobqueue import JobQueue
from exospherehost.runtime.outcomes import Failed, Job, Malformed, Outcome, Released, source
from exospherehost.runtime.resilience import TRANSIENT, OutageLog, pause
from exospherehost.runtime.settle import (
    SettleConfig,
    as_failure,
    plan_dead_letters,
    plan_settle,
)
from exospherehost.runtime.stats import RuntimeStats
from exospherehost.secrets import SecretsError

log = logging.getLogger("exospherehost.runtime.worker")
SETTLES_IN_FLIGHT = 2  # see Worker._settler
# After the grace period, how long settles still retry through an outage before a
# stopping worker gives up (what is unsettled then stays pending and gets reclaimed).
SETTLE_AFTER_GRACE_S = 2.0
_UNSETTLED = -1  # flag of a state whose settle failed: left pending, counted nowhere
T = TypeVar("T")


class Worker:
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
        # Entries read and not yet settled, per node: entry id -> monotonic read time.
        self._held: dict[str, dict[bytes, float]] = {n: {} for n in self.specs}
        self._watch: dict[tuple[str, bytes], asyncio.Event] = {}  # settles awaited
        # Room for ~4 batches: reads go on while a settle is in flight. With 2 the worker
        # sat idle ~14% of the time waiting for settles (W1: 0.86 -> 0.97 core busy).
        self.max_inflight = batch_size * 4 + concurrency
        self.inflight = 0
        self.settled = 0
        self.stats = RuntimeStats(list(self.specs))
        self._queue: JobQueue[Job] = JobQueue()
        self._outcomes: list[Outcome] = []
        self._has_outcomes = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_deadline = 0.0  # set by stop(): when a stopping worker gives up on Redis
        # Tasks with nothing to finish once stopping (run() itself: start-up and reading;
        # promoter, reclaimer): in an outage they give up at once. None before run().
        self._quit_first: set[asyncio.Task[object]] | None = None
        self._bugs = InternalErrors(log)  # bugs of our own, logged once per kind
        self.executing = 0  # executions running now (said when stopping)
        self.cut_short = 0  # executions cancelled at the end of the grace period
        # Node failures, each once with what happens next (rate-limited per node).
        self._failures = FailureLog(logging.getLogger("exospherehost.failures"))
        self._done = asyncio.Event()  # everything read was settled or released
        self.ready = asyncio.Event()  # groups exist and this consumer joined them
        self._executing: set[asyncio.Task[None]] = set()
        self.outage = OutageLog()  # shared with the Runtime's other loops (cron)
        # A connection each for the reader's and the settles' one-call-per-batch loops.
        self._read_lane = Lane(broker.client)
        self._settle_lanes = [Lane(broker.client) for _ in range(SETTLES_IN_FLIGHT)]
        # Reclaiming (see _reclaimer). From how many deliveries a reclaimed entry is a
        # suspect, run alone; the one suspect awaited now: (node, id), settled, deadline.
        self._suspect_from = suspect_threshold(max_deliveries)
        self._suspect: tuple[tuple[str, bytes], asyncio.Event, float] | None = None
        # A suspect's execution bound (Job.timeout): 10 visibility timeouts leave a healthy
        # slow state room, and a hung one then fails under its retry policy instead of
        # holding an executor for good (heartbeats keep its claim alive meanwhile).
        self.suspect_timeout_s = (
            suspect_timeout_s if suspect_timeout_s is not None else visibility_ms / 100
        )
        # A consumer holding nothing, idle and not recorded alive this long is a dead
        # worker's (kill -9 skips _retire): removed (see _prune). Streams are pruned every
        # half of it, so it has a floor: pruning must not become a busy loop.
        if consumer_idle_ms is None:
            consumer_idle_ms = max(10 * visibility_ms, 300_000)
        self.consumer_idle_ms = max(consumer_idle_ms, 1000)
        self._prune_due: dict[str, float] = {}  # node -> monotonic time of its next prune
        self.consumers_removed = 0

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.grace_s + SETTLE_AFTER_GRACE_S
        self._stopping.set()
        self._room.set()  # a reader waiting for room wakes up and sees the stop

    async def run(self) -> None:
        serving = asyncio.current_task()
        self._quit_first = {serving} if serving is not None else set()
        nodes = list(self.specs)
        try:
            await self._until_ok(lambda: self.broker.ensure_groups(nodes))
            await self._until_ok(lambda: self.broker.join(self.consumer, nodes))
            for lane in self._settle_lanes:
                # Connected up front: settles then reach Redis in the order they were sent
                # (a lane connecting lazily would let a later batch overtake).
                await self._until_ok(lane.open)
        except ShutdownAbandoned as exc:  # stopped before serving, Redis unreachable
            log.warning("stopped before serving: %s", exc)
            for lane in self._settle_lanes:
                await lane.close()
            return
        self.ready.set()
        settler = asyncio.create_task(self._settler(), name="exo-settler")
        background = [
            asyncio.create_task(self._promoter(), name="exo-promoter"),
            asyncio.create_task(self._reclaimer(), name="exo-reclaimer"),
            asyncio.create_task(self._heartbeat(), name="exo-heartbeat"),
        ]
        self._quit_first.update(background[:2])  # the heartbeat keeps claims in the grace
        executors = [
            asyncio.create_task(self._executor(), name=f"exo-exec-{i}")
            for i in range(self.concurrency)
        ]
        self._executing.update(executors)
        abandoned = False  # a stopping worker gave up on an unreachable Redis
        try:
            await self._reader()
        except ShutdownAbandoned:
            pass  # stopped while Redis is unreachable: there is nothing more to read
        finally:
            self.stop()  # also when the reader failed: let the settler finish
            await self._drain(executors)
            self._has_outcomes.set()
            try:
                await settler
            except ShutdownAbandoned:
                abandoned = True
            # Background loops end on their own at their next wake-up (cancelling them
            # mid-call is unreliable: redis-py can swallow a cancellation into a retry);
            # only one stuck in an outage is cancelled after a bound.
            self._done.set()
            _, stuck = await asyncio.wait(background, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if unsettled := sum(len(held) for held in self._held.values()):
                log.warning(
                    "stopped with %d states unsettled (Redis unreachable until the stop "
                    "deadline); they stay pending and another worker reclaims them after "
                    "visibility_timeout",
                    unsettled,
                )
            if abandoned or self.outage.since is not None:
                # Redis is down (and what we hold stays pending anyway): leaving the
                # groups would only cost one more failing call.
                log.warning("could not leave the consumer groups: Redis unreachable")
            else:
                await self._retire(nodes)
            for lane in (self._read_lane, *self._settle_lanes):
                await lane.close()

    # -- reading ------------------------------------------------------------------------
    async def _reader(self) -> None:
        nodes = list(self.specs)
        while not self._stopping.is_set():
            room = self.max_inflight - self.inflight
            if room < self.batch_size // 2 + 1:
                self._room.clear()
                # One event, set by settles and by stop(): waiting on two would cost two
                # tasks per wait, and the reader waits here about once per batch.
                await self._room.wait()
                continue
            # XREADGROUP's COUNT applies per stream: share the room between the streams so
            # a read never overshoots what may be in flight (a read then overlaps settles).
            count = max(1, min(self.batch_size, room) // len(nodes))
            batches = await self._until_ok(
                partial(
                    self.broker.read, self.consumer, nodes, count, self.block_ms, self._read_lane
                )
            )
            for node, entries in batches:
                self._accept(node, entries)

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
        self.inflight += len(entries)
        held = self._held[node]
        now = time.monotonic()
        stream = self.broker.keys.queue(node)
        put = self._queue.put
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
        while (job := await queue.get()) is not None:
            started = clock()
            self.executing += 1
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
        if env.run_id is not None and env.graph is not None:
            graph = self.graphs.compiled.get((env.graph, env.graph_version))  # cached: no await
            if graph is None:  # first state of this graph version here: load it
                graph = await self._until_ok(partial(self.graphs.get, env.graph, env.graph_version))
            secrets = self.graphs.secrets(env.graph, env.graph_version)
            ident = env.identifier or ""
            if graph is not None and env.unite is not None and ident in graph.unites:
                # A fired fan-in: its inputs come from what every branch left behind.
                collected = await self._until_ok(
                    partial(self.broker.collected, env.run_id, ident, env.unite)
                )
                try:
                    env.inputs = graph.unite_inputs(ident, env.ctx, collected)
                except Exception as exc:
                    reason = f"cannot build the inputs of uniting node {ident!r}: {exc}"
                    return Failed(job, reason, format_traceback(exc), permanent=True)
        return await execute(self.specs[job.node], job, graph, secrets, self.broker)

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
        left = self._stop_deadline - SETTLE_AFTER_GRACE_S - time.monotonic()
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
        for task in late:
            task.cancel()
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
            task = asyncio.create_task(self._settle_batch(batch, lanes.pop(), lanes, slots))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    async def _settle_batch(
        self, batch: list[Outcome], lane: Lane, lanes: list[Lane], slots: asyncio.Semaphore
    ) -> None:
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
        self.inflight -= len(batch)
        self.settled += len(batch)
        self._room.set()
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
        flags = await self._until_ok(lambda: self.broker.settle(plan, lane))
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
                got = await self._until_ok(lambda: self.broker.settle(plan, lane))
            except ResponseError as exc:
                reason += f"; nor as a failure: {exc}"
            else:
                if not got.errors:
                    return got[0]
                acked = got[0] == FAILED
                reason += f"; nor as a failure: {got.errors[0]}"
        bare = plan_dead_letters([(outcome, reason)], cfg, acked=acked)
        try:
            got = await self._until_ok(lambda: self.broker.settle(bare, lane))
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

    async def _promoter(self) -> None:
        """Move due retries / delayed states to their streams. Every Runtime runs this;
        the script is atomic, so many promoters never duplicate a state."""
        nodes = list(self.specs)
        while not self._stopping.is_set():
            moved, next_due = await self._until_ok(lambda: self.broker.promote(nodes))
            if moved:
                continue
            wait = 0.5 if next_due < 0 else max(0.002, min(0.5, next_due / 1000 - time.time()))
            await pause(wait, self._stopping)

    async def _retire(self, nodes: list[str]) -> None:
        """Leave the consumer groups on a clean stop, so stopped workers do not pile up as
        consumers; a consumer still holding pending entries stays (they get reclaimed)."""
        try:
            kept = await self.broker.retire(self.consumer, nodes)
        except TRANSIENT as exc:
            log.warning("could not leave the consumer groups (%s)", exc)
            return
        if kept:
            log.warning("%d stream(s) still hold unsettled entries of %s", kept, self.consumer)

    # -- reclaiming and heartbeats ------------------------------------------------------
    async def _reclaimer(self) -> None:
        """Take over states whose worker died or hung (pending longer than the visibility
        timeout), as many at once as there is free room (max_inflight - inflight) for,
        never more. An entry delivered once is mostly innocent read-ahead of one dead or hung
        worker: those run in parallel, like read entries. An entry delivered more often is
        a suspect (it may be what killed its workers): suspects run ONE AT A TIME, the next
        claimed once the last one settled or after a bounded wait (the visibility timeout;
        a hung one keeps its executor, under an execution bound). A poison message
        therefore drags innocent batch-mates along for one delivery at most, never to the
        delivery limit; one delivered `max_deliveries` times is dead-lettered, not run.
        Now and then also removes dead workers' consumers from the groups."""
        interval = self.visibility_ms / 2000
        streak = 0  # reclaimed since the last quiet round: logged once, not per state
        while not self._stopping.is_set():
            for node in self.specs:
                await self._prune(node)  # when due; also keeps our consumers marked alive
            # A claim filled its room: there may be more, claimed as room frees. Only then
            # (not whenever reads fill the room) does a round follow the settles' pace.
            more = False
            for node in self.specs:
                if self._stopping.is_set():
                    return  # claim nothing more once stopping: it could not be run
                room = self._reclaim_room()
                if room <= 0:
                    break  # full of read states: try again next round
                taken, filled = await self._reclaim(node, room)
                streak += taken
                more = more or filled
            if more:
                if self._reclaim_room() <= 0:
                    self._room.clear()  # safe: the reader checks the room before waiting
                    # Set by settles and by stop(); bounded so prunes stay on time.
                    await pause(max(0.0, min(interval, self._until_prune())), self._room)
                continue
            if streak:
                log.info("took over %d states of dead or hung workers", streak)
                streak = 0
            await self._reclaim_pause(interval)

    def _reclaim_room(self) -> int:
        """How many states may be claimed now: the free room. Not less, e.g. to leave a
        share for a read that may be on its way: a saturated worker (reads refill the
        room as soon as half a batch is free) would then never reclaim at all. So a read
        in flight during a claim can overshoot max_inflight by its count, once."""
        return self.max_inflight - self.inflight

    async def _reclaim(self, node: str, room: int) -> tuple[int, bool]:
        """One claim of `node`'s idle entries, up to `room`: (taken, whether room ran out)."""
        suspects = 1 if self._suspect_free() else 0
        # The room is reserved during the call, so a read starting meanwhile cannot take
        # it too.
        self.inflight += room
        try:
            claimed = await self._until_ok(
                partial(
                    self.broker.reclaim,
                    node,
                    self.consumer,
                    self.visibility_ms,
                    room,
                    suspects=suspects,
                    suspect_from=self._suspect_from,
                    poison_at=self.max_deliveries,
                )
            )
        finally:
            self.inflight -= room
            self._room.set()  # a reader that waited on the reservation looks again
        if claimed and self._stopping.is_set():
            # Too late to run them: they stay pending (not held, so not heartbeaten) and
            # another worker reclaims them after the visibility timeout.
            log.info("stopping: %d reclaimed %s states left for other workers", len(claimed), node)
            return 0, False
        return self._take(node, claimed), len(claimed) >= room

    def _take(self, node: str, claimed: list[tuple[bytes, int, dict[bytes, bytes]]]) -> int:
        """Accept what one claim returned, each kind its way; returns how many."""
        held = self._held[node]
        batches: dict[int, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        taken = 0
        for entry_id, deliveries, fields in claimed:
            if entry_id in held:
                continue  # already ours (our own heartbeat lagged): no second copy
            taken += 1
            kind = triage(deliveries, self._suspect_from, self.max_deliveries)
            # Deliveries of the entries it was released from at shutdown count toward the
            # poison limit too (the claim script sees this entry's own count only).
            total = deliveries + _carried_deliveries(entry_id, fields)
            if total >= self.max_deliveries:
                kind = "poison"
            # XCLAIM counted one more delivery (to us): deliveries + 1.
            if kind == "poison":
                self._accept(node, [(entry_id, fields)], _poison(total), deliveries + 1)
            elif kind == "suspect":
                log.debug("suspect %s %s (delivered %d times)", node, entry_id, deliveries)
                deadline = time.monotonic() + self.visibility_ms / 1000
                self._suspect = ((node, entry_id), self._settled_event(node, entry_id), deadline)
                self._accept(
                    node, [(entry_id, fields)], None, deliveries + 1, self.suspect_timeout_s
                )
            else:
                batches.setdefault(deliveries, []).append((entry_id, fields))
        for deliveries, entries in batches.items():
            self._accept(node, entries, None, deliveries + 1)
        return taken

    def _suspect_free(self) -> bool:
        """Whether the next suspect may be claimed: the last one settled, or its wait ran
        out (it runs on, bounded by suspect_timeout_s; reclaiming goes on without it)."""
        if self._suspect is None:
            return True
        key, settled, deadline = self._suspect
        if not settled.is_set():
            if time.monotonic() < deadline:
                return False
            self._watch.pop(key, None)  # no longer waited for
            log.warning(
                "reclaimed suspect %s %s still runs after %.1fs; claiming the next one",
                key[0],
                key[1].decode(errors="replace"),
                self.visibility_ms / 1000,
            )
        self._suspect = None
        return True

    async def _reclaim_pause(self, interval: float) -> None:
        """Wait for the next round: `interval`, or less if the awaited suspect settles or
        its wait runs out first, or a stream is due for pruning; stop() ends it at once."""
        interval = min(interval, self._until_prune())
        events = [self._stopping]
        if self._suspect is not None:
            _, settled, deadline = self._suspect
            events.append(settled)
            interval = min(interval, deadline - time.monotonic())
        await _any_set(events, max(0.0, interval))

    def _until_prune(self) -> float:
        """Seconds until a stream is due for pruning (also our liveness record)."""
        if not self._prune_due:
            return float("inf")
        return min(self._prune_due.values()) - time.monotonic()

    async def _prune(self, node: str) -> None:
        """Remove dead consumers of `node`'s group and record ours alive (see
        broker/lua/prune_consumers.lua), every consumer_idle_ms / 2: more often than
        the bound, so a live consumer always has a fresh record."""
        now = time.monotonic()
        if now < self._prune_due.get(node, 0.0):
            return
        self._prune_due[node] = now + self.consumer_idle_ms / 2000
        try:
            removed = await self._until_ok(
                partial(self.broker.prune_consumers, node, self.consumer, self.consumer_idle_ms)
            )
        except ResponseError as exc:  # e.g. an ACL without XINFO: not worth retrying
            log.warning("cannot remove dead consumers of %s (%s); not trying again", node, exc)
            self._prune_due[node] = float("inf")
            return
        if removed:
            self.consumers_removed += len(removed)
            log.info(
                "removed %d dead consumer(s) of %s: %s",
                len(removed),
                node,
                ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""),
            )

    def _settled_event(self, node: str, entry_id: bytes) -> asyncio.Event:
        event = asyncio.Event()
        self._watch[(node, entry_id)] = event
        return event

    async def _heartbeat(self) -> None:
        """Keep our claim on entries held longer than a third of the visibility timeout,
        so a healthy slow execution is not reclaimed by another worker."""
        interval = self.visibility_ms / 3000
        # Runs until everything is settled: executions finishing in the grace period
        # still need their claims kept.
        while not await pause(interval, self._done):
            old = time.monotonic() - interval
            for node, held in self._held.items():
                ids = [i for i, t in held.items() if t <= old]
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    lost = await self._until_ok(
                        partial(self.broker.heartbeat, node, self.consumer, chunk)
                    )
                    if lost:
                        log.warning(
                            "%d %s states were reclaimed by another worker; their "
                            "late settles will emit nothing",
                            len(lost),
                            node,
                        )

    # -- resilience ---------------------------------------------------------------------
    async def _until_ok(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a Redis call through an outage with capped backoff; log once per outage.

        A stop bounds the retrying (raising ShutdownAbandoned): start-up, the reader, the
        promoter and the reclaimer give up at once, as nothing new should start; other
        loops (settles above all) at the stop deadline, grace period +
        SETTLE_AFTER_GRACE_S. Nothing is lost: what was not settled stays pending in Redis
        and is reclaimed elsewhere."""
        delay = 0.05
        # Set once stopping and failing: a retry must not outlast the stop deadline (one
        # attempt can take seconds in redis-py's own retries). The first attempt is never
        # bounded, so a healthy call after the deadline still goes through.
        bound: float | None = None
        while True:
            try:
                if bound is None:
                    result = await call()
                else:
                    async with asyncio.timeout(bound):  # TimeoutError is an OSError
                        result = await call()
            except TRANSIENT as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancelled read into a connection error; the
                    # cancellation (shutdown) wins over retrying.
                    raise asyncio.CancelledError from exc
                self.outage.down(exc)
                if not self._stopping.is_set():
                    await pause(delay, self._stopping)  # a stop cuts the backoff short
                else:
                    # Before run(), the only callers are start-up calls: nothing to finish.
                    quit_now = self._quit_first is None or task in self._quit_first
                    left = 0.0 if quit_now else self._stop_deadline - time.monotonic()
                    if left <= 0:
                        raise ShutdownAbandoned(f"stopping, Redis unreachable: {exc}") from exc
                    await asyncio.sleep(min(delay, left))
                    bound = max(0.1, self._stop_deadline - time.monotonic())
                delay = min(delay * 2, 2.0)
                continue
            self.outage.up()
            return result


def _name(outcome: Outcome) -> str:
    node, entry_id = source(outcome)
    state = "" if isinstance(outcome, Malformed) else f" state {outcome.job.env.state_id}"
    return f"{node}{state} (entry {entry_id.decode()})"


def _fields(outcome: Outcome) -> dict[str, str]:
    fields = outcome.fields if isinstance(outcome, Malformed) else outcome.job.fields
    return printable_fields(dict(list(fields.items())[:20]), limit=200)


async def _any_set(events: Sequence[asyncio.Event], seconds: float) -> None:
    """Sleep up to `seconds`, waking early when any of `events` is set."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def suspect_threshold(max_deliveries: int) -> int:
    """Deliveries (before a claim) from which a reclaimed entry is a suspect, run alone.

    Entries delivered once run in parallel. If one of them killed the worker that
    reclaimed them, its batch-mates got one delivery more (2) and are suspects from then
    on: the rule costs an innocent one delivery at most, which must leave it below the
    limit. So with max_deliveries < 3 every reclaimed entry is a suspect."""
    return 2 if max_deliveries >= 3 else 1


def triage(
    deliveries: int, suspect_from: int, max_deliveries: int
) -> Literal["poison", "suspect", "run"]:
    """What to do with an entry reclaimed after `deliveries` deliveries: "poison"
    (dead-letter it, do not run it), "suspect" (run it alone) or "run" (with the rest).
    broker/lua/reclaim.lua claims by the same rule."""
    if deliveries >= max_deliveries:
        return "poison"
    if deliveries >= suspect_from:
        return "suspect"
    return "run"


_ENVELOPE_KEY = ENVELOPE_FIELD.encode()


def _carried_deliveries(entry_id: bytes, fields: dict[bytes, bytes]) -> int:
    """Deliveries an envelope carries over from entries it was released from (`d`); 0 for a
    plain entry or one that does not decode (its settle says why)."""
    if _ENVELOPE_KEY not in fields:
        return 0
    try:
        return decode(entry_id, fields).deliveries
    except Exception:
        return 0


def _poison(deliveries: int) -> str:
    return (
        f"delivered {deliveries} times without being settled: the worker running it died "
        f"or hung each time (poison message)"
    )
