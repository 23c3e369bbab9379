"""The memory workload: Redis `used_memory` before, at the backlog's peak and after N
no-op states went through W1 (see `memory` for the procedure)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from benchmarks.harness import Ctx, RawRedis, cleanup, measurement, payload, snapshot
from benchmarks.processes import Workers, wait_drained
from exospherehost import StateManager
from exospherehost.broker.keys import GROUP, Keys


async def used_memory(client: RawRedis) -> dict[str, int]:
    """INFO memory's main figures, plus MEMORY STATS' breakdown of the overhead."""
    info = await client.info("memory")
    out = {
        k: int(info[k])
        for k in (
            "used_memory",
            "used_memory_dataset",
            "used_memory_overhead",
            "used_memory_rss",
            "used_memory_scripts",
            "used_memory_vm_total",
        )
        if k in info
    }
    stats = await client.memory_stats()
    for name, value in stats.items():
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key in ("overhead.hashtable.main", "clients.normal", "keys.count", "aof.buffer"):
            out[key] = int(value)
    return out


async def _connected_clients(client: RawRedis) -> int:
    return int((await client.info("clients"))["connected_clients"])


async def _until_clients(client: RawRedis, count: int, timeout: float) -> None:
    """Wait (at most `timeout`) until no more than `count` clients are connected: the
    stopped workers' connections are closed, so their buffers are not counted."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01)):
        if await _connected_clients(client) <= count or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


async def key_sizes(client: RawRedis, namespace: str, top: int = 8) -> dict[str, int]:
    """MEMORY USAGE of the namespace's biggest keys."""
    sizes: dict[str, int] = {}
    async for key in client.scan_iter(match=f"exo:{{{namespace}}}:*", count=1000):
        sizes[key.decode()] = int(await client.memory_usage(key, samples=0) or 0)
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top])


async def memory(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Redis `used_memory` before, and after N no-op states went through W1.

    All N states are enqueued first (in `enqueue_many` calls of 100,000, all before the
    drain), then W workers drain them. `used_memory` is read (1) before, with this
    namespace empty; (2) after the enqueue (the backlog's peak); (3) after the drain, with
    the workers stopped and disconnected: this includes the output stream, which the
    Runtime caps with `MAXLEN ~ output_maxlen` (results of graphless states are kept by
    design); (4) after DEL of that output stream.

    The same procedure runs first with 10,000 states in another namespace, as a warm-up:
    Redis 7 allocates a latency histogram (latency-tracking, ~30-40 KB) per command name
    on that command's first use, and never frees it. A fresh server would otherwise
    charge ~0.5 MB of one-off histograms to the measured states; a long-running server
    has them already. `before_cold` is used_memory before the warm-up."""
    cold = await used_memory(ctx.client)
    await _memory_once(ctx, min(n, 10_000), processes, f"{label}-warmup")
    result = await _memory_once(ctx, n, processes, label)
    result["before_cold"] = cold
    return result


async def _memory_once(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    ns = ctx.namespace("mem")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "noop", processes, output_maxlen=ctx.output_maxlen, label=label)
    chunk = 100_000
    try:
        await sm.client.ping()
        clients = await _connected_clients(ctx.client)
        before = await used_memory(ctx.client)
        t = time.perf_counter()
        for start in range(0, n, chunk):
            await sm.enqueue_many("Noop", [payload(i) for i in range(start, min(n, start + chunk))])
        enqueue_s = time.perf_counter() - t
        peak = await used_memory(ctx.client)
        await workers.start()
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        await workers.go()
        drained = await wait_drained(
            ctx, [("stream", keys.queue("Noop"))], workers, max(ctx.timeout, 170.0)
        )
        b = replace(await snapshot(ctx.client), at=drained)
        reports = await workers.stop()
        await _until_clients(ctx.client, clients, 5.0)
        settled = sum(int(r["settled"]) for r in reports)
        pending = (await ctx.client.xpending(keys.queue("Noop"), GROUP))["pending"]
        if settled != n or pending or await ctx.client.xlen(keys.dead()):
            raise AssertionError(f"memory check failed: settled {settled}, pending {pending}")
        out_len = int(await ctx.client.xlen(keys.output("Noop")))
        after = await used_memory(ctx.client)
        sizes = await key_sizes(ctx.client, ns)
        await ctx.client.delete(keys.output("Noop"))
        after_no_output = await used_memory(ctx.client)
        remaining = await key_sizes(ctx.client, ns)
        result = measurement(n, a, b, reports, ctx.external)
        base = before["used_memory"]
        result.update(
            {
                "enqueue_s": round(enqueue_s, 3),
                "output_maxlen": ctx.output_maxlen,
                "output_stream_len": out_len,
                "before": before,
                "peak": peak,
                "after": after,
                "after_no_output": after_no_output,
                "delta": after["used_memory"] - base,
                "ratio": round(after["used_memory"] / base, 4),
                "delta_no_output": after_no_output["used_memory"] - base,
                "ratio_no_output": round(after_no_output["used_memory"] / base, 4),
                "keys_after": sizes,
                "keys_after_no_output": remaining,
            }
        )
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)
