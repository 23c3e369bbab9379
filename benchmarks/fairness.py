"""W4: slow nodes and workers that join late (issue 11).

A backlog of N states of a node that awaits `ms` milliseconds is enqueued; then P worker
processes with `workers=C` each are released, the i-th `i * stagger` seconds after the
first, and the clock runs from the first release until every state is settled (the queue
stream is empty: a settle deletes its entry). Per scenario:

- `makespan`: that time;
- `ideal`: when the executor slots available so far (processes join one by one) add up
  to the total sleep: sum_i C * max(0, T - i * stagger) = sum(ms) (the issue's bound;
  never below the longest single state);
- `fifo_ideal`: what a perfect central dispatcher would reach (each state, in stream
  order, starts the moment any joined slot is free; no overhead): the best any FIFO
  queue can do with this order of states (with long and short states mixed, the last
  long ones start near the end and no queue can avoid their tail);
- `efficiency` = ideal / makespan (`fifo_efficiency` = fifo_ideal / makespan);
- `per_worker`: states each worker process settled, in the order they joined.

Scenarios (the table of issue 11): `fixed` 2,000 x 100 ms, C=32; `mixed` 2,000 states of
10 or 1,000 ms (4:1, shuffled with a fixed seed), C=32; both at P = 1, 2, 4 (`--processes`)
with all processes released together; `mixed-nodes`, the same states on two nodes (`Sleep`
10 ms, `SleepLong` 1,000 ms) served by every worker, at the same P (not in issue 11's
table: the reader chooses between the streams, so its `fifo_ideal` is the longest-first
dispatcher's (LPT), which no single FIFO order allows); `mixed-stagger` (1 s apart) and
`slow-stagger` (600 x 1,000 ms, C=8, 2 s apart) at the largest P asked for, at least 2; `wide` one
process with `workers=1000` and 10,000 x 1,000 ms (states/s of one process).
The peers (`--peers`) run the same scenarios in the same invocation where they can
express them (benchmarks/peers_w4.py).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.harness import Ctx, cleanup, snapshot
from benchmarks.processes import Workers, wait_drained
from exospherehost import StateManager
from exospherehost.broker.keys import GROUP, Keys

SEED = 11


@dataclass(frozen=True)
class Scenario:
    kind: str  # fixed | mixed | mixed-nodes | mixed-stagger | slow-stagger | wide
    n: int
    processes: int
    concurrency: int
    stagger_s: float

    @property
    def label(self) -> str:
        return f"w4-{self.kind}-p{self.processes}x{self.concurrency}"

    def durations_ms(self) -> list[int]:
        if self.kind == "fixed":
            return [100] * self.n
        if self.kind in ("mixed", "mixed-nodes", "mixed-stagger"):
            slow = self.n // 5
            ms = [1000] * slow + [10] * (self.n - slow)
            random.Random(SEED).shuffle(ms)
            return ms
        return [1000] * self.n  # slow-stagger, wide

    @property
    def shape(self) -> str:
        return {
            "fixed": "100 ms",
            "mixed": "10 or 1,000 ms (4:1)",
            "mixed-nodes": "10 ms and 1,000 ms nodes (4:1)",
            "mixed-stagger": "10 or 1,000 ms (4:1)",
            "slow-stagger": "1,000 ms",
            "wide": "1,000 ms",
        }[self.kind]


def scenarios(processes: Sequence[int], only: Sequence[str] | None = None) -> list[Scenario]:
    """The W4 table for these process counts (see the module docstring)."""
    top = max(2, *processes)
    rows = [Scenario("fixed", 2000, p, 32, 0.0) for p in processes]
    rows += [Scenario("mixed", 2000, p, 32, 0.0) for p in processes]
    rows += [Scenario("mixed-nodes", 2000, p, 32, 0.0) for p in processes]
    rows += [
        Scenario("mixed-stagger", 2000, top, 32, 1.0),
        Scenario("slow-stagger", 600, top, 8, 2.0),
        Scenario("wide", 10_000, 1, 1000, 0.0),
    ]
    return [s for s in rows if not only or s.kind in only]


def ideal_s(durations_ms: Sequence[int], processes: int, concurrency: int, stagger: float) -> float:
    """The issue's bound: T with sum_i C * max(0, T - i * stagger) = total sleep."""
    work = sum(durations_ms) / 1000
    joined, t = 0, 0.0
    for i in range(processes):
        start = i * stagger
        # With `joined` processes since t, is the work done before the next one joins?
        if joined and t + (work / (joined * concurrency)) <= start:
            break
        work -= joined * concurrency * (start - t)
        joined, t = i + 1, start
    return max(t + work / (joined * concurrency), max(durations_ms) / 1000)


def fifo_ideal_s(
    durations_ms: Sequence[int], processes: int, concurrency: int, stagger: float
) -> float:
    """A perfect dispatcher: each state in order takes the first slot to come free."""
    slots = [i * stagger for i in range(processes) for _ in range(concurrency)]
    heapq.heapify(slots)
    end = 0.0
    for ms in durations_ms:
        start = heapq.heappop(slots)
        finish = start + ms / 1000
        end = max(end, finish)
        heapq.heappush(slots, finish)
    return end


def best_order(sc: Scenario) -> list[int]:
    """The order the `fifo_ideal` dispatcher takes states in: the stream's, or with two
    nodes to choose from (`mixed-nodes`), longest first (LPT)."""
    ms = sc.durations_ms()
    return sorted(ms, reverse=True) if sc.kind == "mixed-nodes" else ms


def figures(sc: Scenario, makespan: float, per_worker: list[int]) -> dict[str, Any]:
    ms = sc.durations_ms()
    ideal = ideal_s(ms, sc.processes, sc.concurrency, sc.stagger_s)
    fifo = fifo_ideal_s(best_order(sc), sc.processes, sc.concurrency, sc.stagger_s)
    return {
        "scenario": sc.kind,
        "shape": sc.shape,
        "n": sc.n,
        "processes": sc.processes,
        "concurrency": sc.concurrency,
        "stagger_s": sc.stagger_s,
        "makespan_s": round(makespan, 3),
        "ideal_s": round(ideal, 3),
        "fifo_ideal_s": round(fifo, 3),
        "efficiency": round(ideal / makespan, 3),
        "fifo_efficiency": round(fifo / makespan, 3),
        "rate": round(sc.n / makespan, 1),
        "per_worker": per_worker,
    }


async def release(stagger: float, count: int, go_one: Any) -> None:
    """go_one(i) for i in 0..count-1, the i-th at i * stagger seconds after the first."""
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i * stagger - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await go_one(i)


async def w4_ours(ctx: Ctx, sc: Scenario, label: str, prefetch: int | None) -> dict[str, Any]:
    ns = ctx.namespace("w4")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    two = sc.kind == "mixed-nodes"
    nodes = ["Sleep", "SleepLong"] if two else ["Sleep"]
    workers = Workers(
        ctx,
        ns,
        "sleep2" if two else "sleep",
        sc.processes,
        output_maxlen=max(2 * sc.n, 100_000),
        label=label,
        concurrency=sc.concurrency,
        prefetch=prefetch,
    )
    try:
        ms = sc.durations_ms()
        if two:  # the same states, the long ones on their own node
            await sm.enqueue_many("Sleep", [{"ms": m} for m in ms if m < 1000])
            await sm.enqueue_many("SleepLong", [{"ms": m} for m in ms if m >= 1000])
        else:
            await sm.enqueue_many("Sleep", [{"ms": m} for m in ms])
        await workers.start()
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        releasing = asyncio.create_task(release(sc.stagger_s, sc.processes, workers.go_one))
        timeout = (
            ctx.timeout
            + sc.stagger_s * sc.processes
            + 2 * fifo_ideal_s(ms, sc.processes, sc.concurrency, sc.stagger_s)
        )
        streams = [("stream", keys.queue(n)) for n in nodes]
        drained = await wait_drained(ctx, streams, workers, timeout)
        await releasing
        b = replace(await snapshot(ctx.client), at=drained)
        reports = sorted(await workers.stop(), key=lambda r: int(r["index"]))
        per_worker = [int(r["settled"]) for r in reports]
        outputs = pending = 0
        for n in nodes:
            outputs += await ctx.client.xlen(keys.output(n))
            pending += (await ctx.client.xpending(keys.queue(n), GROUP))["pending"]
        if sum(per_worker) != sc.n or outputs != sc.n or pending:
            raise AssertionError(
                f"w4 check failed: settled {per_worker}, {outputs} outputs, {pending} pending; "
                f"expected {sc.n}"
            )
        result = figures(sc, b.at - a.at, per_worker)
        result["prefetch"] = "adaptive" if prefetch is None else prefetch
        # From each worker's go to its Runtime serving (connect, register, groups, GC tune).
        result["startup_ms"] = [
            round((float(r["started_at"]) - float(r["go_at"])) * 1000, 1) for r in reports
        ]
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)
