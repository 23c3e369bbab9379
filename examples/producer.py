"""Upsert the example graph, trigger runs and wait for them:
`python -m examples.producer [--runs N] [--timeout S]`.

Connects like the worker (EXOSPHERE_REDIS_URL, EXOSPHERE_NAMESPACE default "demo").
Run k gets inputs {"base": k*10}, so its labels are for values 10k, 10k+1, 10k+2. Exits
1 if any run failed, timed out or produced wrong results; 2 on a configuration or graph error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

from examples.nodes import GRAPH_NAME, SPLIT_ITEMS, graph_nodes
from exospherehost import StateManager
from exospherehost.client.statemanager import GraphValidationError
from exospherehost.config import ConfigError

log = logging.getLogger("examples.producer")


def _check(k: int, results: list[dict[str, Any]]) -> str | None:
    """None if run k's leaf outputs are the expected labels, else what is wrong."""
    got = sorted(
        (r["outputs"]["value"], r["outputs"]["square"], r["outputs"]["text"]) for r in results
    )
    want = [(v, v * v, f"v={v} sq={v * v}") for v in range(k * 10, k * 10 + SPLIT_ITEMS)]
    return None if got == want else f"expected {want}, got {got}"


async def produce(namespace: str, runs: int, timeout: float) -> int:
    """Returns the number of failed runs."""
    async with StateManager(namespace) as sm:
        # Waits (up to `timeout`) for a worker to register the nodes, so the producer may
        # start before the workers do.
        doc = await sm.upsert_graph(
            GRAPH_NAME, graph_nodes(namespace), secrets={}, validation_timeout=timeout
        )
        log.info("graph %s v%s upserted in namespace %s", GRAPH_NAME, doc["version"], namespace)
        start = time.monotonic()
        run_ids = [await sm.trigger(GRAPH_NAME, inputs={"base": k * 10}) for k in range(runs)]
        failed = 0
        # Runs proceed in parallel on the workers; waiting in order only orders the checks.
        for k, run_id in enumerate(run_ids):
            left = max(1.0, timeout - (time.monotonic() - start))
            try:
                status = await sm.wait(run_id, timeout=left)
            except TimeoutError as exc:
                failed += 1
                log.error("run %d (%s) timed out: %s", k, run_id, exc)
                continue
            if status.status != "SUCCEEDED":
                failed += 1
                log.error("run %d (%s) %s: %s", k, run_id, status.status, status.nodes)
                continue
            problem = _check(k, await sm.results(run_id))
            if problem:
                failed += 1
                log.error("run %d (%s) wrong results: %s", k, run_id, problem)
        elapsed = time.monotonic() - start
    print(
        f"{runs - failed}/{runs} runs of {GRAPH_NAME!r} succeeded, {failed} failed, "
        f"in {elapsed:.2f}s (namespace {namespace!r})",
        flush=True,
    )
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.producer", description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="runs to trigger (default 100)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for workers to register and for all runs to finish",
    )
    args = parser.parse_args(argv)
    if args.runs < 0:
        parser.error("--runs must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    namespace = os.environ.get("EXOSPHERE_NAMESPACE", "demo")
    try:
        failed = asyncio.run(produce(namespace, args.runs, args.timeout))
    except (ConfigError, GraphValidationError) as exc:
        log.error("%s", exc)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
