"""The latency workload: end-to-end percentiles of single states enqueued one at a time
at a steady offered load, stamped by a separate follower process."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from benchmarks.harness import Ctx, cleanup, measurement, payload, snapshot
from benchmarks.processes import Follower, Workers
from exospherehost import StateManager
from exospherehost.broker.keys import GROUP, Keys


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max (nearest rank) and mean of `values`, in the same unit."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in stats.items()}


async def paced(
    count: int, rate: float, send: Callable[[int], Awaitable[str]]
) -> tuple[dict[str, float], list[float]]:
    """Call `send(i)` for i < count, one call at a time, at `rate` calls/s on a fixed
    schedule (a late call is made at once, never skipped). Returns {state id: monotonic
    time just before its call} and each call's lateness behind its schedule (s)."""
    sent: dict[str, float] = {}
    late: list[float] = []
    start = time.monotonic() + 0.002
    for i in range(count):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        t = time.monotonic()
        sent[await send(i)] = t
        late.append(max(0.0, t - due))
    return sent, late


async def _consumers(ctx: Ctx, stream: str) -> int:
    try:
        return len(await ctx.client.xinfo_consumers(stream, GROUP))
    except ResponseError:
        return 0  # the group does not exist yet


async def latency(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """End-to-end latency of single states at a steady offered load well below capacity.

    One producer (this process) calls `StateManager.enqueue` for one state at a time at
    `ctx.rate` states/s; W Runtime processes serve `Noop`; a follower process XREADs the
    output stream with BLOCK. Latency = the follower's stamp of a result minus the stamp
    taken just before the enqueue call of its state (both CLOCK_MONOTONIC).

    Phases: (1) `probe`: the producer XADDs N_probe entries straight to the output stream
    at the same rate with no worker involved: the floor of the measuring apparatus
    (client call + Redis + follower wake-up); (2) warm-up states, discarded; (3) the N
    measured states."""
    ns = ctx.namespace("lat")
    keys = Keys(ns)
    out = keys.output("Noop")
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "noop", processes, label=label)
    n_probe = min(n, int(ctx.rate))  # one second of probes
    n_warm = int(ctx.rate * ctx.warmup_s)
    window = n / ctx.rate
    follower = Follower(ctx, out, f"exo:{{{ns}}}:bench:follower", n_probe + n_warm + n, window + 60)
    try:
        await sm.client.ping()
        await follower.start()
        await workers.start()

        async def probe(i: int) -> str:
            state = f"probe-{i}"
            await ctx.client.xadd(out, {"state": state, "status": "PROBE"})
            return state

        probe_sent, _ = await paced(n_probe, ctx.rate, probe)
        await workers.go()
        deadline = time.monotonic() + 30
        while await _consumers(ctx, keys.queue("Noop")) < processes:
            workers.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not join the consumer group")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the reader is in XREADGROUP BLOCK by now

        async def enqueue(i: int) -> str:
            return await sm.enqueue("Noop", payload(i))

        await paced(n_warm, ctx.rate, enqueue)
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        sent, late = await paced(n, ctx.rate, enqueue)
        b = await snapshot(ctx.client)
        report = await follower.result()
        seen: dict[str, float] = report["seen"]
        reports = await workers.stop()
        missing = [s for s in sent if s not in seen]
        if missing:
            raise AssertionError(f"latency check failed: {len(missing)} results never seen")
        if report.get("statuses", {}) != {"PROBE": n_probe, "SUCCEEDED": n_warm + n}:
            raise AssertionError(f"latency check failed: statuses {report.get('statuses')}")
        lat = [seen[s] - t for s, t in sent.items()]
        floor = [seen[s] - t for s, t in probe_sent.items()]
        result = measurement(n, a, b, reports, ctx.external)
        result["offered_rate"] = ctx.rate
        result["latency_ms"] = _ms(percentiles(lat))
        result["probe_latency_ms"] = _ms(percentiles(floor))
        result["producer_late_ms"] = _ms(percentiles(late))
        result["follower_reads"] = report["reads"]
        return result
    finally:
        await follower.kill()
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)
