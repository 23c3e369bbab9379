"""The hot loop of one Runtime process: read -> execute -> settle, as three kinds of
coroutines joined by two buffers, so a read, executions and settles overlap:

    reader ──Jobs──▶ queue ──▶ N executors ──Outcomes──▶ buffer ──▶ settler (1 script/batch,
                                                                   2 batches in flight)

No task is spawned per state: `concurrency` long-lived executors pull from the queue, and
a state whose node never awaits runs straight through. `inflight` (read, not yet settled)
is bounded by `max_inflight`, which is also the most states a crash can leave pending.
The reader and each settle slot keep their own Redis connection (broker.lane).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.codec import MalformedEntry, decode
from broker.lane import Lane
from broker.streams import Broker
from exospherehost.execution import InternalErrors, NodeSpec, describe, execute, format_traceback
from exospherehost.graphstore import GraphCache
from exospherehost.jobqueue import JobQueue
from exospherehost.outcomes import Failed, Job, Malformed, Outcome, Released, source
from exospherehost.resilience import OutageLog
from exospherehost.secrets import SecretsError
from exospherehost.settle import SettleConfig, plan_settle
from exospherehost.stats import RuntimeStats

log = logging.getLogger("exospherehost.worker")
SETTLES_IN_FLIGHT = 2  # see Worker._settler
# After the grace period, how long settles still retry through an outage before a
# stopping worker gives up (what is unsettled then stays pending and gets reclaimed).
SETTLE_AFTER_GRACE_S = 2.0
_UNSETTLED = -1  # flag of a state whose settle failed: left pending, counted nowhere
T = TypeVar("T")
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class ShutdownAbandoned(RedisConnectionError):
    """A stopping worker gave up a Redis call: Redis stayed unreachable up to the stop
    deadline. Whatever it held stays pending in Redis, for another worker to reclaim."""


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
        self._done = asyncio.Event()  # everything read was settled or released
        self.ready = asyncio.Event()  # groups exist and this consumer joined them
        self._executing: set[asyncio.Task[None]] = set()
        self.outage = OutageLog()  # shared with the Runtime's other loops (cron)
        # A connection each for the reader's and the settles' one-call-per-batch loops.
        self._read_lane = Lane(broker.client)
        self._settle_lanes = [Lane(broker.client) for _ in range(SETTLES_IN_FLIGHT)]

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
            job = Job(node, stream, entry_id, fields, env, deliveries)
            if poison is not None:
                self._finish(Failed(job, poison, "", permanent=True))
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
            try:
                outcome = await self._execute(job)
            except ShutdownAbandoned:
                self._finish(Released(job))  # Redis gone at shutdown: it stays pending
                continue
            except BaseException as exc:
                if me.cancelling():
                    self._finish(Released(job))  # shutdown grace ran out: hand it back now
                    raise
                outcome = self._internal_error(job, exc)
            if me.cancelling():  # cancelled, and node code swallowed the cancellation
                self._finish(Released(job) if isinstance(outcome, Failed) else outcome)
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
        """Finish what was read within the grace period (counted from stop()); release
        the rest at once."""
        self._queue.close()
        left = self._stop_deadline - SETTLE_AFTER_GRACE_S - time.monotonic()
        _, late = await asyncio.wait(executors, timeout=max(0.0, left))
        for task in late:
            task.cancel()
        await asyncio.gather(*executors, return_exceptions=True)
        for job in self._queue.drain():
            self._finish(Released(job))

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
                # A script error must not take the batch down with one bad state:
                # settle one by one; what still fails stays pending (reclaimed later).
                log.error("settle of %d states failed (%s); settling one by one", len(batch), exc)
                flags = []
                for outcome in batch:
                    try:
                        flags += await self._settle([outcome], lane)
                    except ResponseError:
                        log.exception("cannot settle %r; left pending", outcome)
                        flags.append(_UNSETTLED)
        finally:
            lanes.append(lane)
            slots.release()
        # One pass over the batch: release what was held, wake watchers, count per node.
        held, watch, nodes = self._held, self._watch, self.stats.nodes
        for outcome, flag in zip(batch, flags, strict=True):
            node, entry_id = source(outcome)
            held[node].pop(entry_id, None)
            if watch and (watcher := watch.pop((node, entry_id), None)) is not None:
                watcher.set()
            if flag > 0:
                nodes[node].settled += 1
            elif flag == 0:
                nodes[node].late_settles += 1
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
        """One settle script call for `batch`: its flags (see Broker.settle)."""
        plan = plan_settle(batch, self.settle_cfg)
        return await self._until_ok(lambda: self.broker.settle(plan, lane))

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
            await _pause(wait, self._stopping)

    async def _retire(self, nodes: list[str]) -> None:
        """Leave the consumer groups on a clean stop, so stopped workers do not pile up as
        consumers; a consumer still holding pending entries stays (they get reclaimed)."""
        try:
            kept = await self.broker.retire(self.consumer, nodes)
        except _TRANSIENT as exc:
            log.warning("could not leave the consumer groups (%s)", exc)
            return
        if kept:
            log.warning("%d stream(s) still hold unsettled entries of %s", kept, self.consumer)

    # -- reclaiming and heartbeats ------------------------------------------------------
    async def _reclaimer(self) -> None:
        """Take over states whose worker died or hung (pending longer than the visibility
        timeout). Each reclaimed state is a suspect — it may be what killed its worker —
        so suspects are claimed and run ONE AT A TIME, each settled before the next is
        claimed: a poison message then costs at most one more worker per delivery and
        never drags a batch of innocent states towards the delivery limit with it. A
        state already delivered `max_deliveries` times is dead-lettered, not run."""
        interval = self.visibility_ms / 2000
        streak = 0  # reclaimed since the last quiet round: logged once, not per state
        while not self._stopping.is_set():
            claimed_any = False
            for node in self.specs:
                if self._stopping.is_set():
                    return  # claim nothing more once stopping: it could not be run
                claimed = await self._until_ok(
                    partial(self.broker.reclaim, node, self.consumer, self.visibility_ms, 1)
                )
                for entry_id, deliveries, fields in claimed:
                    if entry_id in self._held[node]:
                        continue  # already ours (our own heartbeat lagged): no second copy
                    claimed_any = True
                    streak += 1
                    poison = None
                    if deliveries >= self.max_deliveries:
                        poison = (
                            f"delivered {deliveries} times without being settled: the worker "
                            f"running it died or hung each time (poison message)"
                        )
                    log.debug("reclaimed %s %s (delivered %d times)", node, entry_id, deliveries)
                    settled = self._settled_event(node, entry_id)
                    # XCLAIM counted one more delivery (to us).
                    self._accept(node, [(entry_id, fields)], poison, deliveries + 1)
                    await settled.wait()
            if not claimed_any:
                if streak:
                    log.info("took over %d states of dead or hung workers", streak)
                    streak = 0
                await _pause(interval, self._stopping)

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
        while not await _pause(interval, self._done):
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
            except _TRANSIENT as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancelled read into a connection error; the
                    # cancellation (shutdown) wins over retrying.
                    raise asyncio.CancelledError from exc
                self.outage.down(exc)
                if not self._stopping.is_set():
                    await _pause(delay, self._stopping)  # a stop cuts the backoff short
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


async def _pause(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep up to `seconds`, waking early when `stop` is set; returns whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
