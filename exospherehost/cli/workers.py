"""`exosphere worker`: serve nodes in one Runtime process, or supervise several."""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import click

from exospherehost.cli._common import Settings, namespace_option, one_line_errors, pass_settings
from exospherehost.config import resolve
from exospherehost.logs import setup_logging
from exospherehost.runtime.metrics import MetricsPortError
from exospherehost.runtime.process import Runtime

log = logging.getLogger("exospherehost.cli.workers")
_TARGET = "MODULE:NODES"


def load_nodes(target: str) -> list[object]:
    """`pkg.mod:ALL` (a list of node classes) or `pkg.mod:Split,Square` (class names)."""
    module_name, sep, names = target.partition(":")
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not sep or not module_name or module_name.startswith(".") or not wanted:
        raise click.BadParameter(
            f"{target!r}: expected MODULE:NODES, e.g. examples.nodes:ALL or "
            "examples.nodes:Split,Square",
            param_hint=_TARGET,
        )
    if os.getcwd() not in sys.path:
        # `python -m` puts the working directory on sys.path; a console script does not,
        # and `exosphere worker myapp.nodes:ALL` run from the project should find myapp.
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint=_TARGET
        ) from None
    nodes: list[object] = []
    for name in wanted:
        if not hasattr(module, name):
            raise click.BadParameter(f"{module_name!r} has no {name!r}", param_hint=_TARGET)
        value = getattr(module, name)
        if isinstance(value, list | tuple | set | frozenset):
            nodes.extend(value)
        else:
            nodes.append(value)
    return nodes


@dataclass(frozen=True)
class _Plan:
    """What a worker process needs to build its Runtime; pickled to spawned children
    (through a pipe, so the password never shows in a process list)."""

    target: str
    namespace: str
    name: str
    redis_url: str | None
    key: str | None
    options: dict[str, Any] = field(default_factory=dict)

    def runtime_nodes(self) -> list[object]:
        """Import the node classes (and fail here, in one line, when they are wrong)."""
        return load_nodes(self.target)

    def runtime(self, metrics_port: int | None) -> Runtime:
        nodes = self.runtime_nodes()
        return Runtime(
            self.namespace,
            self.name,
            nodes,
            self.redis_url,
            self.key,
            metrics_port=metrics_port,
            **self.options,
        )


def _child(plan: _Plan, cwd: str, metrics_port: int | None) -> None:
    """Entry point of a spawned worker process: one Runtime until SIGTERM."""
    early_stop: list[int] = []
    # Until the Runtime installs its own handlers, a SIGTERM is remembered, not fatal.
    signal.signal(signal.SIGTERM, lambda signum, _frame: early_stop.append(signum))
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    runtime = plan.runtime(metrics_port)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: runtime.stop())
    if early_stop:
        runtime.stop()
    try:
        runtime.start()
    except MetricsPortError as exc:
        log.error("%s", exc)
        sys.exit(1)


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class _Fleet:
    """Child processes and the stop / kill escalation of Ctrl-C and SIGTERM."""

    def __init__(self) -> None:
        self.procs: list[BaseProcess] = []
        self.stopping = False
        self.signals = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("%s: stopping worker processes (again to kill them)", signal.strsignal(signum))
            self.stop()
        else:
            log.warning("killing worker processes; their unsettled states will be reclaimed")
            self.send(signal.SIGKILL)

    def stop(self) -> None:
        self.stopping = True
        self.send(signal.SIGTERM)

    def send(self, sig: int) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, sig)


def _supervise(plan: _Plan, processes: int, metrics_port: int | None) -> list[str]:
    """Run `processes` worker processes until stopped; returns what went wrong."""
    spawn = multiprocessing.get_context("spawn")
    fleet = _Fleet()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in handled}
    # Children inherit an ignored SIGINT through spawn's exec: a Ctrl-C reaches the whole
    # process group, and a child still importing must not die of KeyboardInterrupt; this
    # parent forwards one SIGTERM to each instead (a running Runtime handles both).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, fleet.on_signal)
    failures: list[str] = []
    try:
        for i in range(processes):
            if fleet.stopping:
                break
            port = None if metrics_port is None else metrics_port + i
            proc: BaseProcess = spawn.Process(
                target=_child, args=(plan, os.getcwd(), port), name=f"exosphere-worker-{i}"
            )
            proc.start()
            fleet.procs.append(proc)
        signal.signal(signal.SIGINT, fleet.on_signal)
        log.info(
            "started %d worker processes (pids %s)",
            len(fleet.procs),
            ", ".join(str(p.pid) for p in fleet.procs),
        )
        alive = dict(enumerate(fleet.procs))
        while alive:
            wait([p.sentinel for p in alive.values()])
            for i, proc in list(alive.items()):
                if proc.exitcode is None:
                    continue
                del alive[i]
                code = proc.exitcode
                # A child SIGTERMed before its handler was installed did not crash.
                if code != 0 and not (fleet.stopping and code == -signal.SIGTERM):
                    failures.append(f"worker process {i} (pid {proc.pid}) {_describe(code)}")
                if not fleet.stopping:
                    # N processes or none: a supervisor above (systemd, Kubernetes)
                    # restarts the whole worker, which is easier to reason about.
                    log.log(
                        logging.ERROR if code else logging.WARNING,
                        "worker process %d (pid %d) %s; stopping the others",
                        i,
                        proc.pid,
                        _describe(code),
                    )
                    fleet.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not failures:
        log.info("worker processes stopped cleanly")
    return failures


# Shared with `exosphere dev`.
concurrency_option = click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Concurrent executions per process.",
)
processes_option = click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runtime processes to run (each a separate Python process).",
)


@click.command(short_help="Serve nodes in one or more Runtime processes.")
@click.argument("target", metavar=_TARGET)
@namespace_option
@click.option(
    "--name",
    default="exosphere-worker",
    show_default=True,
    help="Runtime name (replicas may share it; consumers get host, pid and a random part).",
)
@concurrency_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Entries read per XREADGROUP.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="States read ahead beyond --concurrency, fixed (default: adapted per node to "
    "its execution times; 0 = only for idle executors).",
)
@processes_option
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds in-flight states may take to finish when stopping.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (process i on PORT+i).",
)
@click.option(
    "--dead-letters-max",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="Cap of the namespace's dead-letter stream (trimmed near it, oldest first, as "
    "dead letters are added); 0: no cap.",
)
@pass_settings
def worker(
    settings: Settings,
    target: str,
    name: str,
    concurrency: int,
    batch_size: int,
    prefetch: int | None,
    processes: int,
    grace_period: float,
    metrics_port: int | None,
    dead_letters_max: int,
) -> None:
    """Serve the nodes MODULE:NODES until stopped.

    MODULE:NODES names node classes: `examples.nodes:ALL` (a list of them) or
    `examples.nodes:Split,Square` (class names). MODULE is imported from the current
    directory too.

    Ctrl-C or SIGTERM stops cleanly: reading stops, in-flight states finish (up to
    --grace-period) and are settled, the rest go back on their streams. A second Ctrl-C
    kills the processes (their states are reclaimed by other workers later). With
    --processes N, when one process exits the others are stopped too; the exit status
    is non-zero if any of them failed.
    """
    namespace = settings.require_namespace()
    if metrics_port is not None and metrics_port + processes - 1 > 65535:
        raise click.BadParameter("PORT+processes-1 exceeds 65535", param_hint="--metrics-port")
    setup_logging()
    plan = _Plan(
        target,
        namespace,
        name,
        settings.redis_url,
        settings.key,
        {
            "batch_size": batch_size,
            "workers": concurrency,
            "grace_period": grace_period,
            "dead_letters_maxlen": dead_letters_max,
            "prefetch": prefetch,
        },
    )
    with one_line_errors(settings):
        # Built here even for N processes: bad nodes or options fail once, in one line.
        runtime = plan.runtime(metrics_port)
        _check_redis(settings)
    if processes == 1:
        try:
            runtime.start()
        except MetricsPortError as exc:
            raise click.ClickException(str(exc)) from None
        log.info("worker stopped cleanly")
        return
    failures = _supervise(plan, processes, metrics_port)
    if failures:
        raise click.ClickException("; ".join(failures))


def _check_redis(settings: Settings) -> None:
    """Fail now, in one line, rather than have workers retry an unreachable Redis."""

    async def ping() -> None:
        client = resolve(settings.redis_url, settings.key).client()
        try:
            await client.ping()
        finally:
            await client.aclose()

    asyncio.run(ping())
