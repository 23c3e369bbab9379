"""One benchmark Runtime process: `python -m benchmarks.worker --url URL --namespace NS ...`.

Start-up handshake, so that interpreter start-up and imports stay outside the timings:

1. import everything and build the Runtime (nothing is read from Redis yet);
2. RPUSH a JSON line {"index", "pid"} to ``ready_key(ns)``;
3. BLPOP ``go_key(ns, index)``: the harness pushes every go key in one pipeline right
   after starting its clock;
4. serve with the Runtime (connect, register nodes, create groups, read/settle);
5. on SIGTERM print one JSON line (states settled, CPU seconds since "go", and the
   ``time.monotonic()`` stamps - CLOCK_MONOTONIC, comparable across processes - of the
   go signal and of the Runtime having started), then stop the Runtime. The report comes
   first so a slow or stuck shutdown cannot lose it; a shutdown that takes longer than
   ``--exit-timeout`` ends the process with exit code 3.

``--register-only`` instead registers the nodes, stops and exits: the harness uses it
before upserting a graph, so runs can be triggered before any benchmark worker is
released.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import redis

from benchmarks.nodes import NODE_SETS
from exospherehost import Runtime

EXIT_STUCK = 3


def ready_key(namespace: str) -> str:
    """List the workers push their readiness to (kept inside the run's namespace)."""
    return f"exo:{{{namespace}}}:bench:ready"


def go_key(namespace: str, index: int) -> str:
    """List one worker blocks on until the harness releases it."""
    return f"exo:{{{namespace}}}:bench:go:{index}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--nodes", choices=sorted(NODE_SETS), required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=32, help="Runtime(workers=...)")
    p.add_argument("--block-ms", type=int, default=1000)
    p.add_argument("--output-maxlen", type=int, default=100_000)
    p.add_argument("--go-timeout", type=float, default=120.0)
    p.add_argument("--exit-timeout", type=float, default=8.0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--untuned-gc", action="store_true", help="Runtime(tune_gc=False)")
    p.add_argument("--state-records", choices=("full", "off"), default="full")
    p.add_argument(
        "--prefetch", type=int, default=None, help="Runtime(prefetch=...) (default: adaptive)"
    )
    p.add_argument("--register-only", action="store_true")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="--url is a node of a Redis Cluster (the handshake's client routes by slot; "
        "the Runtime finds out by itself)",
    )
    return p.parse_args(argv)


def _wait_for_go(
    url: str, namespace: str, index: int, timeout: float, cluster: bool = False
) -> bool:
    client = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        client.rpush(ready_key(namespace), json.dumps({"index": index, "pid": os.getpid()}))
        parent = os.getppid()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.blpop([go_key(namespace, index)], timeout=1):
                return True
            if os.getppid() != parent:  # the harness died: do not linger
                return False
        return False
    finally:
        client.close()


async def _started(runtime: Runtime, task: asyncio.Task[None]) -> None:
    started = asyncio.ensure_future(runtime.started.wait())
    await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()  # surface the error that ended it


async def _register_only(runtime: Runtime) -> None:
    """Start until the nodes are registered, then leave: a clean stop is attempted for
    at most a second (nothing was read, so nothing can be lost by exiting)."""
    task = runtime.start()
    assert task is not None
    await _started(runtime, task)
    runtime.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    except TimeoutError:
        sys.stdout.flush()
        os._exit(0)


async def _serve(
    runtime: Runtime, index: int, go_at: float, cpu0: float, exit_timeout: float
) -> None:
    """Serve until SIGTERM/SIGINT; print the report, then stop the Runtime."""
    loop = asyncio.get_running_loop()
    report: dict[str, Any] = {"index": index, "pid": os.getpid(), "go_at": go_at}

    def on_signal() -> None:
        if "settled" in report:
            return
        report["settled"] = runtime.settled
        report["cpu_s"] = round(time.process_time() - cpu0, 4)
        print(json.dumps(report), flush=True)
        runtime.stop()
        loop.call_later(exit_timeout, _stuck, exit_timeout)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, _dump, runtime)
    if trace := os.environ.get("EXO_BENCH_TRACE"):
        _trace_calls(trace)
    task = runtime.start()
    assert task is not None
    await _started(runtime, task)
    report["started_at"] = time.monotonic()
    await task


def _trace_calls(directory: str) -> None:
    """EXO_BENCH_TRACE=DIR: stamp every read and settle call of this worker (monotonic
    start and end, entries or states) and write them to DIR/trace-<pid>.json at exit, for
    a timeline of who waits on whom (a diagnostic; patches the Broker class in this
    process only)."""
    import atexit

    from exospherehost.broker.streams import Broker

    calls: list[tuple[str, float, float, int]] = []
    read, settle = Broker.read, Broker.settle

    async def traced_read(self: Broker, *a: Any, **k: Any) -> Any:
        t0 = time.monotonic()
        got = await read(self, *a, **k)
        calls.append(("read", t0, time.monotonic(), sum(len(e) for _, e in got)))
        return got

    async def traced_settle(self: Broker, plan: Any, *a: Any, **k: Any) -> Any:
        t0 = time.monotonic()
        got = await settle(self, plan, *a, **k)
        calls.append(("settle", t0, time.monotonic(), len(plan)))
        return got

    Broker.read = traced_read  # type: ignore[method-assign]
    Broker.settle = traced_settle  # type: ignore[method-assign]

    def write() -> None:
        with open(os.path.join(directory, f"trace-{os.getpid()}.json"), "w") as out:
            json.dump(calls, out)

    atexit.register(write)


def _dump(runtime: Runtime) -> None:
    """SIGUSR1: log where each lane's Worker holds its states (a diagnostic of a stalled
    measurement; reads the Runtime's private state, nothing is changed)."""
    lanes = getattr(runtime, "_worker", None)
    for tag, worker in sorted(getattr(lanes, "workers", {}).items()):
        queue = worker._queue
        held = {node: len(ids) for node, ids in worker.holdings.held.items() if ids}
        logging.warning(
            "lane %s: held %s (count %d of %d), job queue %d (waking %d, waiters %d), "
            "executing %d, outcomes waiting %d, settled %d",
            tag,
            held,
            worker.holdings.count,
            worker.holdings.limit,
            len(queue),
            queue._waking,
            len(queue._waiters),
            worker.executing,
            len(worker._outcomes),
            worker.settled,
        )


def _stuck(exit_timeout: float) -> None:
    logging.warning("runtime did not stop within %ss of SIGTERM; exiting", exit_timeout)
    sys.stdout.flush()
    os._exit(EXIT_STUCK)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(name)s %(message)s")
    runtime = Runtime(
        namespace=args.namespace,
        name="bench",
        nodes=NODE_SETS[args.nodes],
        redis_url=args.url,
        batch_size=args.batch_size,
        workers=args.concurrency,
        block_ms=args.block_ms,
        output_maxlen=args.output_maxlen,
        grace_period=5.0,
        # A dedicated worker process, as under a blocking Runtime.start() (which tunes the
        # collector by default); the Runtime runs as a task here only to report.
        tune_gc=not args.untuned_gc,
        prefetch=args.prefetch,
        state_records=args.state_records,
    )
    if args.register_only:
        asyncio.run(_register_only(runtime))
        return 0
    if not _wait_for_go(args.url, args.namespace, args.index, args.go_timeout, args.cluster):
        print(json.dumps({"index": args.index, "error": "no go signal"}), flush=True)
        return 1
    factory = None
    if args.loop == "uvloop":
        import uvloop  # the `fast` extra, as Runtime.start() would pick it

        factory = uvloop.new_event_loop
    go_at, cpu0 = time.monotonic(), time.process_time()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(runtime, args.index, go_at, cpu0, args.exit_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
