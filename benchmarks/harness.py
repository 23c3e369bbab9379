"""What every measurement shares: its context, CPU/command snapshots, the timed window's
figures, waiting for a quiet machine, adaptive completion polling and key clean-up.

Imports nothing else of `benchmarks`, so the workloads, the peers and the CLI can all
build on it without an import cycle."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

RawRedis: TypeAlias = Any
"""A redis.asyncio.Redis with bytes replies, untyped: the benchmarks send commands (INFO,
MEMORY, SCAN, CLIENT) that exospherehost.broker.client.RedisClient leaves out."""


ROOT = Path(__file__).resolve().parents[1]
POLL_MIN_S, POLL_MAX_S = 0.001, 0.02
"""Completion polling bounds (see next_poll)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def payload(i: int) -> dict[str, Any]:
    return {"name": f"item-{i}", "data": {"i": i, "tag": "x"}}


@dataclass
class Ctx:
    url: str
    client: RawRedis
    batch_size: int
    timeout: float
    py_spy: Path | None
    py_spy_rate: int
    external: bool
    py_spy_lines: bool = False
    quiet_s: float = 0.0
    branches: int = 100  # W3 fan-out per run
    rate: float = 1000.0  # latency: offered load, states/s
    warmup_s: float = 0.5  # latency: states sent (and discarded) before measuring
    output_maxlen: int = 100_000  # memory: the Runtime's output_maxlen (its default)
    dramatiq_threads: int = 8  # peers: `dramatiq --threads` (its default)
    loop: str = "asyncio"  # the workers' event loop: asyncio or uvloop
    untuned_gc: bool = False  # workers with Runtime(tune_gc=False)
    state_records: str = "full"  # workers with Runtime(state_records=...)
    cluster: bool = False  # `client` is a RedisCluster; `nodes` its masters
    lanes: int = 1  # w1/w2: the namespace's lane count (StateManager.set_lanes)
    # One plain client per master (the server's `client` itself when not a cluster): CPU,
    # command counts and key clean-up are per node.
    nodes: list[RawRedis] = field(default_factory=list)

    @property
    def masters(self) -> list[RawRedis]:
        return self.nodes or [self.client]

    async def settle_machine(self) -> None:
        """With --wait-quiet, hold the measurement until other processes are idle."""
        if self.quiet_s > 0:
            load = await wait_quiet(self.quiet_s)
            if load >= 0.25:
                log(f"machine still busy ({load:.2f} cores) after {self.quiet_s}s; measuring")

    def namespace(self, workload: str) -> str:
        return f"bench-{workload}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Snapshot:
    """CPU and command counters at one instant, to attribute a window's CPU time."""

    at: float  # time.monotonic()
    redis_cpu_s: float
    machine_busy_s: float  # all cores, from /proc/stat (0 where unavailable)
    steal_s: float
    harness_cpu_s: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec), INFO commandstats
    # Per master (one entry on a single server): (address, command calls counted in
    # commandstats - scripts' commands included -, total_commands_processed, CPU seconds).
    per_node: tuple[tuple[str, int, int, float], ...] = ()


def _proc_stat() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot, from Linux /proc/stat: busy is
    user+nice+system+irq+softirq; steal is time a virtual CPU wanted to run but the
    hypervisor ran something else (a noisy neighbour outside this machine)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz, ticks[7] / hz


def _machine_busy_s() -> float:
    return _proc_stat()[0]


async def wait_quiet(limit_s: float, threshold: float = 0.25, window_s: float = 0.5) -> float:
    """Wait (at most `limit_s`) until the machine's CPU use over `window_s` is below
    `threshold` cores, i.e. nothing else is running; returns the last load seen."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, t0 = _machine_busy_s(), time.monotonic()
        await asyncio.sleep(window_s)
        load = (_machine_busy_s() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load


def _address(client: RawRedis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


async def snapshot(client: RawRedis, nodes: Sequence[RawRedis] | None = None) -> Snapshot:
    """CPU and command counters of Redis (summed over `nodes`, the masters of a cluster;
    default: `client` alone), the machine and this process."""
    commands: dict[str, tuple[int, int]] = {}
    per_node: list[tuple[str, int, int, float]] = []
    redis_cpu = 0.0
    for node in nodes or [client]:
        cpu = await node.info("cpu")
        stats = await node.info("commandstats")
        total = await node.info("stats")
        calls_here = 0
        for name, v in stats.items():
            if isinstance(v, dict):
                key = name.removeprefix("cmdstat_")
                c0, u0 = commands.get(key, (0, 0))
                commands[key] = (c0 + int(v["calls"]), u0 + int(v["usec"]))
                calls_here += int(v["calls"])
        node_cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        redis_cpu += node_cpu
        per_node.append(
            (_address(node), calls_here, int(total["total_commands_processed"]), node_cpu)
        )
    busy, steal = _proc_stat()
    return Snapshot(
        at=time.monotonic(),
        redis_cpu_s=redis_cpu,
        machine_busy_s=busy,
        steal_s=steal,
        harness_cpu_s=time.process_time(),
        commands=commands,
        per_node=tuple(per_node),
    )


def master_shares(a: Snapshot, b: Snapshot) -> list[dict[str, Any]]:
    """Each master's part of the window's Redis work: command calls (commandstats, which
    counts the commands scripts run too), top-level commands (total_commands_processed)
    and CPU, with each one's share of the sum over the masters. The snapshots' own INFO
    calls are a handful per master and left in."""
    elapsed = b.at - a.at
    rows = []
    for (addr, c0, t0, cpu0), (_, c1, t1, cpu1) in zip(a.per_node, b.per_node, strict=True):
        rows.append({"node": addr, "calls": c1 - c0, "top_level": t1 - t0, "cpu_s": cpu1 - cpu0})
    calls = sum(r["calls"] for r in rows) or 1
    top = sum(r["top_level"] for r in rows) or 1
    cpu = sum(r["cpu_s"] for r in rows) or 1.0
    return [
        {
            "node": r["node"],
            "calls": r["calls"],
            "calls_share": round(r["calls"] / calls, 3),
            "top_level_commands": r["top_level"],
            "top_level_share": round(r["top_level"] / top, 3),
            "redis_cpu": round(r["cpu_s"] / elapsed, 3),
            "cpu_share": round(r["cpu_s"] / cpu, 3),
        }
        for r in rows
    ]


def command_deltas(a: Snapshot, b: Snapshot, top: int = 8) -> dict[str, dict[str, float]]:
    """The commands Redis spent most time on between two snapshots (commands run inside
    scripts are counted too, under their own names)."""
    out: dict[str, dict[str, float]] = {}
    for name, (calls, usec) in b.commands.items():
        c0, u0 = a.commands.get(name, (0, 0))
        if calls > c0:
            out[name] = {"calls": calls - c0, "usec": usec - u0}
    ranked = sorted(out.items(), key=lambda kv: -kv[1]["usec"])[:top]
    return {k: {**v, "usec_per_call": round(v["usec"] / v["calls"], 2)} for k, v in ranked}


def measurement(
    n: int,
    a: Snapshot,
    b: Snapshot,
    reports: list[dict[str, Any]],
    external: bool,
    worker_cpu_s: float | None = None,
) -> dict[str, Any]:
    """Rates and CPU use of one timed window [a.at, b.at].

    CPU figures are in cores (CPU seconds per wall second). `other_cpu` is what the
    machine spent beyond the harness, the workers and Redis: other processes competing
    for the cores; a large value marks a disturbed measurement. The workers' CPU comes
    from their reports, or from `worker_cpu_s` (peers, measured from /proc)."""
    elapsed = b.at - a.at
    worker_cpu = sum(float(r["cpu_s"]) for r in reports)
    if worker_cpu_s is not None:
        worker_cpu = worker_cpu_s
    redis_cpu = b.redis_cpu_s - a.redis_cpu_s
    harness_cpu = b.harness_cpu_s - a.harness_cpu_s
    result: dict[str, Any] = {
        "n": n,
        "seconds": round(elapsed, 4),
        "rate": round(n / elapsed, 1),
        "worker_cpu": round(worker_cpu / elapsed, 3),
        "redis_cpu": round(redis_cpu / elapsed, 3),
        "harness_cpu": round(harness_cpu / elapsed, 3),
        # CPU cost per item, steadier than rates on a shared machine.
        "worker_us_per_item": round(worker_cpu / n * 1e6, 2),
        "redis_us_per_item": round(redis_cpu / n * 1e6, 2),
    }
    if b.machine_busy_s and not external:
        busy = b.machine_busy_s - a.machine_busy_s
        other = busy - worker_cpu - redis_cpu - harness_cpu
        result["other_cpu"] = round(max(0.0, other) / elapsed, 3)
        result["steal_cpu"] = round((b.steal_s - a.steal_s) / elapsed, 3)
    if reports:
        # From "go" to the slowest worker's Runtime having registered and created groups.
        result["startup_ms"] = round(max(r["started_at"] - a.at for r in reports) * 1000, 1)
        result["workers"] = reports
    result["redis_commands"] = command_deltas(a, b)
    if len(a.per_node) > 1:
        result["masters"] = master_shares(a, b)
    return result


def next_poll(last: tuple[float, int] | None, now: float, left: int) -> float:
    """Seconds to the next completion poll, given the previous poll `last` = (time, items
    left) and this one: every POLL_MAX_S while far from done, then at half the estimated
    time left (at least POLL_MIN_S), so the end is caught within ~1 ms while the poller
    itself costs the measured machine next to nothing."""
    if last is not None and last[1] > left:
        rate = (last[1] - left) / (now - last[0])
        return min(POLL_MAX_S, max(POLL_MIN_S, left / rate / 2))
    return POLL_MAX_S


async def cleanup(client: RawRedis, namespace: str, nodes: Sequence[RawRedis] | None = None) -> int:
    """UNLINK every key of `namespace`: those under its own tag (exo:{ns}:) and its lanes'
    (exo:{ns/n}:), on every node in `nodes` (a cluster's masters; default: `client`).
    One key per UNLINK, pipelined: a cluster node refuses a multi-key UNLINK over slots."""
    deleted = 0
    for node in nodes or [client]:
        for match in (f"exo:{{{namespace}}}:*", f"exo:{{{namespace}/*"):
            batch: list[bytes] = []
            async for key in node.scan_iter(match=match, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await _unlink(node, batch)
                    batch = []
            if batch:
                deleted += await _unlink(node, batch)
    return deleted


async def _unlink(node: RawRedis, keys: list[bytes]) -> int:
    pipe = node.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(n) for n in await pipe.execute())
