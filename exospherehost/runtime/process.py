"""Runtime: serve a set of nodes from their Redis streams in this process.

Run as many Runtime processes as the load needs; they share each stream's consumer group,
so Redis hands each state to exactly one of them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from redis.exceptions import RedisError

from exospherehost.broker.keys import check_name
from exospherehost.broker.serverinfo import eviction_check
from exospherehost.broker.streams import Broker
from exospherehost.config import ConfigError, legacy_arguments, resolve
from exospherehost.errors import InvalidArgument, ShutdownAbandoned
from exospherehost.graphstore import GraphCache, GraphStore
from exospherehost.limits import SizeLimits
from exospherehost.limits import use as use_limits
from exospherehost.logs import setup_logging
from exospherehost.models import RetryPolicyModel
from exospherehost.node import BaseNode, node_schema, validate_nodes
from exospherehost.runtime.cancelling import cancel_and_wait
from exospherehost.runtime.cron import CronScheduler
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.gctune import tune_for_throughput
from exospherehost.runtime.lanes import LaneWorkers
from exospherehost.runtime.loopwatch import LoopWatch
from exospherehost.runtime.resilience import Retrier, is_outage, pause, supervised
from exospherehost.runtime.settle import STATE_RECORD_LEVELS, SettleConfig
from exospherehost.runtime.stats import RuntimeStats
from exospherehost.runtime.upkeep.report import Reporter
from exospherehost.runtime.worker import Worker
from exospherehost.secrets import SecretsCipher, check_namespace_secrets

log = logging.getLogger("exospherehost.runtime.process")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (an optional speed-up of the blocking
    start(); inside a caller's loop we use theirs), else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}")


class Runtime:
    loop_block_warn_s: float = 1.0
    """Seconds the event loop may be held by one piece of code (a node calling blocking
    code in `execute`) before a WARNING names it (exospherehost/runtime/loopwatch.py)."""
    registry_check_s: float = 5.0
    """Seconds between checks that this Runtime's nodes are still in the namespace's node
    registry (graphs are validated against it); a Redis that lost its data lost it too."""

    def __init__(
        self,
        namespace: str,
        name: str,
        nodes: Sequence[object],
        redis_url: str | None = None,
        key: str | None = None,
        *,
        batch_size: int = 100,
        workers: int = 32,
        block_ms: int = 1000,
        default_retry_policy: RetryPolicyModel | None = None,
        output_maxlen: int = 100_000,
        dead_letters_maxlen: int = 100_000,
        run_retention: timedelta = timedelta(days=1),
        grace_period: float = 30.0,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        consumer_idle_timeout: float | None = None,
        metrics_port: int | None = None,
        tune_gc: bool | None = None,
        prefetch: int | None = None,
        state_records: str = "full",
        # The original SDK's arguments, accepted where they cost nothing (README: Migrating).
        state_manager_uri: str | None = None,
        state_manage_version: str | None = None,
        poll_interval: float | None = None,
        size_limits: SizeLimits | None = None,
    ) -> None:
        redis_url = legacy_arguments(
            redis_url, state_manager_uri, state_manage_version, "state_manage_version"
        )
        if poll_interval is not None:  # reads block until states come: nothing polls
            _positive("poll_interval", poll_interval)
        self.namespace = check_name("namespace", namespace)
        self.name = check_name("name", name)
        self.nodes = validate_nodes(nodes)
        for label, value in (
            ("batch_size", batch_size),
            ("workers", workers),
            ("block_ms", block_ms),
            ("grace_period", grace_period),
            ("visibility_timeout", visibility_timeout),
            ("max_deliveries", max_deliveries),
        ):
            _positive(label, value)
        if consumer_idle_timeout is not None:
            _positive("consumer_idle_timeout", consumer_idle_timeout)
        if (
            isinstance(output_maxlen, bool)
            or not isinstance(output_maxlen, int)
            or output_maxlen < 0
        ):
            raise InvalidArgument(
                f"output_maxlen must be an int >= 0 (0 = keep no results), got {output_maxlen!r}"
            )
        if (
            isinstance(dead_letters_maxlen, bool)
            or not isinstance(dead_letters_maxlen, int)
            or dead_letters_maxlen < 0
        ):
            raise InvalidArgument(
                f"dead_letters_maxlen must be an int >= 0 (0 = no cap), got {dead_letters_maxlen!r}"
            )
        if block_ms > 5000:
            raise InvalidArgument(
                f"block_ms must be at most 5000 (the socket timeout is 10 s), got {block_ms}"
            )
        if metrics_port is not None and (
            isinstance(metrics_port, bool)
            or not isinstance(metrics_port, int)
            or not 1 <= metrics_port <= 65535
        ):
            raise InvalidArgument(
                f"metrics_port must be a port number (1-65535), got {metrics_port!r}"
            )
        self.metrics_port = metrics_port
        if state_records not in STATE_RECORD_LEVELS:
            raise InvalidArgument(
                f"state_records must be one of {', '.join(map(repr, STATE_RECORD_LEVELS))}, "
                f"got {state_records!r}"
            )
        # "full": every settle of a graph state writes its record (StateManager.state);
        # "off": none (the run history, counters and results are kept either way).
        self.state_records = state_records
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0
        ):
            raise InvalidArgument(
                f"prefetch must be None (adapt to execution times) or an int >= 0 (states "
                f"read ahead beyond the workers), got {prefetch!r}"
            )
        # None: read ahead per node by its execution times (exospherehost.runtime.prefetch).
        self.prefetch = prefetch
        if tune_gc is not None and not isinstance(tune_gc, bool):
            raise InvalidArgument(f"tune_gc must be True, False or None, got {tune_gc!r}")
        # None: tune the collector (exospherehost.runtime.gctune) only when start() owns the
        # process, i.e. runs its own event loop; inside a caller's loop, leave it alone.
        self.tune_gc = tune_gc
        self.config = resolve(redis_url, key)
        self.batch_size, self.workers, self.block_ms = batch_size, workers, block_ms
        self.default_retry_policy = default_retry_policy or RetryPolicyModel()
        self.output_maxlen = output_maxlen
        # The namespace's dead-letter stream is capped near this at each dead letter this
        # process writes (XADD MAXLEN ~, oldest first); 0: no cap.
        self.dead_letters_maxlen = dead_letters_maxlen
        # What one state may carry (exospherehost.limits); default: the environment.
        if size_limits is not None and not isinstance(size_limits, SizeLimits):
            raise InvalidArgument(
                f"size_limits must be an exospherehost.limits.SizeLimits, got {size_limits!r}"
            )
        self.size_limits = size_limits if size_limits is not None else SizeLimits.from_env()
        self.run_retention_s = int(run_retention.total_seconds())
        self.grace_period = grace_period
        self.visibility_ms = int(visibility_timeout * 1000)
        self.max_deliveries = max_deliveries
        # None: the Worker's default, max(10 x visibility_timeout, 5 min).
        self.consumer_idle_ms = (
            None if consumer_idle_timeout is None else int(consumer_idle_timeout * 1000)
        )
        # Replicas share `name`; host, pid and a random part keep consumers apart.
        self.consumer = f"{name}:{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._worker: LaneWorkers | None = None  # one Worker per lane
        self._cron: CronScheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._started_once = False
        self.started = asyncio.Event()
        self._reporter: Reporter | None = None  # writes this worker's record (dashboards)
        self.registry_checks = 0  # completed registry checks (tests wait on it)

    @property
    def settled(self) -> int:
        return self._worker.settled if self._worker else 0

    @property
    def stats(self) -> RuntimeStats | None:
        """Live per-node counters of this process (None before start)."""
        return self._worker.stats if self._worker else None

    @property
    def cron(self) -> CronScheduler | None:
        """This process's cron scheduler (None before start); see exospherehost.runtime.cron."""
        return self._cron

    def start(self) -> asyncio.Task[None] | None:
        """Block serving nodes until stopped (SIGINT/SIGTERM stop it cleanly); inside a
        running event loop, return the serving task instead."""
        if self._started_once:
            # Its stop request, worker and statistics belong to the first run: a second
            # start would return at once, serving nothing, without a word.
            raise RuntimeError(
                f"Runtime {self.name!r} of namespace {self.namespace!r} was started already: a "
                f"Runtime serves once; create a new Runtime to serve again"
            )
        self._started_once = True
        setup_logging()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            # Not inside the `except`: every traceback raised while serving (and stored in
            # dead letters) would begin with "no running event loop ... During handling
            # of the above exception, another exception occurred".
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main(install_signals=True, tune_gc=self.tune_gc is not False))
            return None
        main = self._main(install_signals=False, tune_gc=self.tune_gc is True)
        return loop.create_task(main, name=f"exo-runtime-{self.name}")

    def stop(self) -> None:
        """Stop reading, finish in-flight states (up to grace_period), settle them, release
        the rest. Safe from any thread or a signal handler."""
        self._stop_requested = True
        loop, worker = self._loop, self._worker
        if loop is not None and worker is not None:
            loop.call_soon_threadsafe(worker.stop)

    async def _main(self, install_signals: bool, tune_gc: bool) -> None:
        self._loop = asyncio.get_running_loop()
        # Its own task: node code's self.store checks against this Runtime's limits.
        use_limits(self.size_limits)
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.stop)
        client = self.config.client()
        exporter = None
        try:
            broker = Broker(client, self.namespace)
            store = GraphStore(client, broker.keys)
            # EXOSPHERE_SECRETS_KEY: decrypts graph secrets (checked below, at start).
            cipher = SecretsCipher.from_env()
            cache = GraphCache(store, cipher)
            settle_cfg = SettleConfig(
                keys=broker.keys,
                graphs=cache.compiled,
                default_retry=self.default_retry_policy,
                output_maxlen=self.output_maxlen,
                limits=self.size_limits,
                run_retention_s=self.run_retention_s,
                dead_maxlen=self.dead_letters_maxlen,
                worker=self.consumer,
                state_records=self.state_records,
            )
            specs = [NodeSpec.of(n) for n in self.nodes]
            # One for the worker and our own start-up calls: one outage log, one stop.
            retry = Retrier()
            self._worker = LaneWorkers(
                broker,
                specs,
                self.consumer,
                cache,
                settle_cfg,
                batch_size=self.batch_size,
                concurrency=self.workers,
                block_ms=self.block_ms,
                grace_s=self.grace_period,
                visibility_ms=self.visibility_ms,
                max_deliveries=self.max_deliveries,
                consumer_idle_ms=self.consumer_idle_ms,
                retry=retry,
                ready=self.started,  # set once its consumers joined the groups
                prefetch=self.prefetch,
                factory=Worker,  # looked up here: tests give Workers options through it
            )
            if self.metrics_port is not None:
                # Imported on use: only Runtimes that export load prometheus_client.
                from exospherehost.runtime.metrics import MetricsExporter

                exporter = MetricsExporter(self, self.metrics_port)
                await exporter.start()
            if self._stop_requested:
                self._worker.stop()
            try:
                await retry.until_ok(lambda: self._check_server(broker))
                await retry.until_ok(lambda: self._check_secrets(store, cipher))
                await retry.until_ok(lambda: self._register(broker))
            except ShutdownAbandoned as exc:  # stopped while Redis was down: nothing read yet
                log.warning("runtime %s stopped before serving: %s", self.name, exc)
                return
            log.info(
                "runtime %s serving %s in namespace %s as %s",
                self.name,
                [s.name for s in specs],
                self.namespace,
                self.consumer,
            )
            # Every Runtime schedules the namespace's cron triggers (fires are exactly-once).
            self._cron = CronScheduler(broker, store, outage=retry.outage)
            cron_task = asyncio.create_task(self._cron.run(), name="exo-cron")
            registry_stop = asyncio.Event()
            registry_task = asyncio.create_task(
                self._keep_registered(broker, registry_stop), name="exo-registry"
            )
            watch = LoopWatch(self.loop_block_warn_s)
            watch_task = asyncio.create_task(watch.run(), name="exo-loopwatch")
            # Who this worker is and what it did, for dashboards: every 5 s, off the hot path.
            self._reporter = self._make_reporter(broker, self._worker)
            reporter = self._reporter
            report_task = asyncio.create_task(
                supervised("reporter", lambda: reporter.run(registry_stop), registry_stop),
                name="exo-reporter",
            )
            if tune_gc:
                tune_for_throughput()  # set up: what exists now lives as long as we serve
            try:
                await self._worker.run()
            finally:
                # Cooperative stops; cancel only a loop stuck in a Redis call.
                self._cron.stop()
                registry_stop.set()
                loops = [cron_task, registry_task, report_task]
                _, stuck = await asyncio.wait(loops, timeout=5)
                await cancel_and_wait([*stuck, watch_task])
                await asyncio.gather(*loops, watch_task, return_exceptions=True)
                if retry.outage.since is None:  # in an outage it would only time out
                    await self._reporter.stopped()
        finally:
            if exporter is not None:
                await exporter.aclose()
            await client.aclose()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
        # The pair of the "serving" line: an operator sees that a stop finished.
        log.info("runtime %s stopped; it settled %d states", self.name, self.settled)

    def _make_reporter(self, broker: Broker, worker: LaneWorkers) -> Reporter:
        def live() -> dict[str, int]:
            return {"inflight": worker.inflight, "executing": worker.executing}

        static = {
            "concurrency": self.workers,
            "batch_size": self.batch_size,
            "max_inflight": worker.max_inflight,
            "visibility_ms": self.visibility_ms,
        }
        return Reporter(broker.workers, self.consumer, self.name, worker.stats, live, static)

    async def _check_server(self, broker: Broker) -> None:
        """Refuse a Redis that evicts any key (allkeys-*: queued states and runs would vanish
        without a trace), unless EXOSPHERE_ALLOW_EVICTION is set; warn on volatile-*."""
        verdict = await eviction_check(broker.client)
        if verdict is None:
            return
        fatal, why = verdict
        if fatal and os.environ.get("EXOSPHERE_ALLOW_EVICTION", "") in ("", "0", "false", "no"):
            raise ConfigError(why)
        log.warning("%s", why)

    async def _check_secrets(self, store: GraphStore, cipher: SecretsCipher | None) -> None:
        """Refuse to start without EXOSPHERE_SECRETS_KEY when a graph has secrets."""
        check_namespace_secrets(await store.current_secrets(), cipher)

    async def _register(self, broker: Broker, nodes: Sequence[type[BaseNode]] = ()) -> None:
        """Record the schemas of `nodes` (default: all of ours) so graphs can be validated
        against them."""
        now = int(time.time() * 1000)
        mapping = {
            n.__name__: json.dumps({**node_schema(n), "runtime": self.name, "registered_ms": now})
            for n in nodes or self.nodes
        }
        await broker.registry.register(mapping)

    async def _keep_registered(self, broker: Broker, stop: asyncio.Event) -> None:
        """Every `registry_check_s`, write again the registry entries of our nodes that are
        gone (Redis restarted without persistence, an operator's FLUSHDB): without them
        `upsert_graph` refuses graphs of nodes we serve. One pipelined HEXISTS per node
        per check, never per state."""
        names = [n.__name__ for n in self.nodes]
        last_error = ""
        while not await pause(self.registry_check_s, stop):
            try:
                missing = await broker.registry.missing(names)
                if missing:
                    await self._register(broker, [n for n in self.nodes if n.__name__ in missing])
                    log.warning(
                        "node registry of namespace %s was missing (Redis lost data?); "
                        "re-registered %d nodes: %s",
                        self.namespace,
                        len(missing),
                        ", ".join(missing),
                    )
                last_error = ""
            except (RedisError, OSError, RuntimeError) as exc:
                if is_outage(exc):
                    pass  # the worker's loops log an outage; the next check retries
                elif not isinstance(exc, RedisError):
                    raise
                elif str(exc) != last_error:  # e.g. an ACL without HEXISTS: say so once
                    log.warning(
                        "node registry check in namespace %s failed: %s", self.namespace, exc
                    )
                    last_error = str(exc)
            self.registry_checks += 1
