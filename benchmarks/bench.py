"""Batch-throughput benchmarks of the SDK on Redis Streams.

    .venv/bin/python -m benchmarks.bench [--workload LIST] [--n N] [--processes W[,W...]]
        [--repeat R] [--peers] [--redis-url URL] [--py-spy DIR]

Workloads (see benchmarks/README.md for the exact definitions):

- ``w1``: drain a backlog of N no-op states with W Runtime processes (states/s);
- ``w2``: drain N triggered runs of a 3-stage graph A -> B -> C (runs/s; each run is
  three states, so states/s is three times that);
- ``w3``: drain N triggered runs that each fan out to 100 branches and unite
  (runs/s; each run is 102 states);
- ``enqueue``: ``StateManager.enqueue_many`` of N states (states/s);
- ``latency``: end-to-end p50/p90/p99/max of single states enqueued one at a time at a
  steady 1,000/s, seen on the output stream by a blocking follower;
- ``memory``: Redis used_memory before and after 1,000,000 states went through W1.

``all`` is enqueue,w1,w2,w3. ``--peers`` also runs w1/w2 on taskiq-redis and dramatiq
(the `peers` extra: pip install -e '.[peers]') in the same invocation, interleaved with ours.

Unless ``--redis-url`` is given a private redis-server is started (and stopped) for the
invocation. Every measurement uses a fresh namespace and deletes its keys afterwards;
nothing else on the server is touched (no FLUSHALL, ever).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import IO, Any, TypeAlias

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from benchmarks.worker import go_key, ready_key
from exospherehost import GraphNodeModel, StateManager, UnitesModel
from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import GROUP, Keys
from exospherehost.testing.server import PrivateServer

RawRedis: TypeAlias = Any
"""A redis.asyncio.Redis with bytes replies, untyped: the bench sends commands (INFO, MEMORY,
SCAN, CLIENT) that exospherehost.broker.client.RedisClient leaves out."""

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
DEFAULT_N = {
    "w1": 20_000,
    "w2": 5_000,
    "w3": 100,
    "enqueue": 100_000,
    "latency": 10_000,
    "memory": 1_000_000,
}
UNIT = {
    "w1": "states/s",
    "w2": "runs/s",
    "w3": "runs/s",
    "enqueue": "states/s",
    "latency": "states/s",
    "memory": "states/s",
}
ALL = ["enqueue", "w1", "w2", "w3"]
"""What `--workload all` runs; `latency` and `memory` take 10-60 s each, so they are
asked for by name."""
GRAPH = "bench-chain"
FAN_GRAPH = "bench-fan"
POLL_MIN_S, POLL_MAX_S = 0.001, 0.02
"""Completion polling bounds (see wait_drained)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def payload(i: int) -> dict[str, Any]:
    return {"name": f"item-{i}", "data": {"i": i, "tag": "x"}}


# --------------------------------------------------------------------------- context


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


async def snapshot(client: RawRedis) -> Snapshot:
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
        if isinstance(v, dict)
    }
    busy, steal = _proc_stat()
    return Snapshot(
        at=time.monotonic(),
        redis_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        machine_busy_s=busy,
        steal_s=steal,
        harness_cpu_s=time.process_time(),
        commands=commands,
    )


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


def source_fingerprint() -> dict[str, str]:
    """sha256 of the SDK sources measured (the tree changes; numbers belong to a version)."""
    digest = hashlib.sha256()
    newest = 0.0
    for pattern in ("exospherehost/*.py", "broker/*.py", "broker/lua/*.lua"):
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
    return {
        "sdk_sha256": digest.hexdigest()[:16],
        "sdk_newest_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(newest)),
    }


async def cleanup(client: RawRedis, namespace: str) -> int:
    """UNLINK every key of `namespace` (all share the prefix exo:{ns}:)."""
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"exo:{{{namespace}}}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await client.unlink(*batch)
            batch = []
    if batch:
        deleted += await client.unlink(*batch)
    return int(deleted)


# --------------------------------------------------------------------------- workers


def _worker_argv(url: str, namespace: str, nodes: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--url",
        url,
        "--namespace",
        namespace,
        "--nodes",
        nodes,
    ]


@dataclass
class Workers:
    """W `benchmarks.worker` processes, held at the start line until `go()`."""

    ctx: Ctx
    namespace: str
    nodes: str
    count: int
    output_maxlen: int = 100_000
    label: str = "run"
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    spies: list[asyncio.subprocess.Process] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    # Worker stderr goes to files, not pipes: a chatty worker must never block on a full
    # pipe in the middle of a measurement.
    logs: list[IO[bytes]] = field(default_factory=list)

    def _log_of(self, i: int) -> str:
        log_file = self.logs[i]
        log_file.seek(0)
        return log_file.read().decode(errors="replace")

    async def start(self, timeout: float = 60.0) -> None:
        for i in range(self.count):
            self.logs.append(tempfile.TemporaryFile())  # noqa: SIM115 - closed in stop/kill
            proc = await asyncio.create_subprocess_exec(
                *_worker_argv(self.ctx.url, self.namespace, self.nodes),
                "--index",
                str(i),
                "--batch-size",
                str(self.ctx.batch_size),
                "--output-maxlen",
                str(self.output_maxlen),
                "--loop",
                self.ctx.loop,
                *(["--untuned-gc"] if self.ctx.untuned_gc else []),
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE,
                stderr=self.logs[-1],
            )
            self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while len(self.pids) < self.count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count - len(self.pids)} workers not ready")
            got = await self.ctx.client.blpop([ready_key(self.namespace)], timeout=1)
            if got:
                self.pids.append(int(json.loads(got[1])["pid"]))
        if self.ctx.py_spy is not None:
            await self._attach_py_spy(self.ctx.py_spy)

    async def _attach_py_spy(self, out_dir: Path) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        for i, pid in enumerate(self.pids):
            spy = await asyncio.create_subprocess_exec(
                str(exe),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                *([] if self.ctx.py_spy_lines else ["--function"]),
                "--rate",
                str(self.ctx.py_spy_rate),
                "-o",
                str(out_dir / f"{self.label}-w{i}.txt"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            self.spies.append(spy)
        await asyncio.sleep(1.0)  # let py-spy attach before the clock starts

    async def go(self) -> None:
        """Release every worker at once (one pipelined round trip)."""
        pipe = self.ctx.client.pipeline(transaction=False)
        for i in range(self.count):
            pipe.rpush(go_key(self.namespace, i), 1)
        await pipe.execute()

    def check_alive(self) -> None:
        dead = [p for p in self.procs if p.returncode is not None]
        if dead:
            raise RuntimeError(f"worker pid {dead[0].pid} exited with code {dead[0].returncode}")

    async def stop(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """SIGTERM every worker, wait for clean exits; returns their JSON reports."""
        # py-spy first (SIGINT makes it write its profile and detach): a signal sent to a
        # process py-spy is ptrace-sampling can be swallowed by a sampling stop.
        for spy in self.spies:
            if spy.returncode is None:
                spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                _, err = await asyncio.wait_for(spy.communicate(), timeout)
            except TimeoutError:
                spy.kill()
                _, err = await spy.communicate()
            if spy.returncode != 0:
                log(f"py-spy exited with {spy.returncode}: {err.decode()[-500:]}")
        self.spies.clear()
        for p in self.procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        reports: list[dict[str, Any]] = []
        for i, p in enumerate(self.procs):
            try:
                out, _ = await asyncio.wait_for(p.communicate(), timeout)
            except TimeoutError:
                p.kill()
                out, _ = await p.communicate()
            lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
            report = json.loads(lines[-1]) if lines else {}
            if "settled" not in report:
                raise RuntimeError(
                    f"worker pid {p.pid} exited with {p.returncode} and no report:\n"
                    f"{self._log_of(i)[-3000:]}"
                )
            report["clean_exit"] = p.returncode == 0
            if p.returncode != 0:
                log(
                    f"warning: worker pid {p.pid} did not shut down cleanly "
                    f"(exit {p.returncode}); its report was taken at SIGTERM:\n"
                    f"{self._log_of(i)[-600:]}"
                )
            reports.append(report)
        self.procs.clear()
        self._close_logs()
        return reports

    def _close_logs(self) -> None:
        for log_file in self.logs:
            log_file.close()
        self.logs.clear()

    async def kill(self) -> None:
        """Kill whatever is still running (after a failure) and show the workers' logs."""
        for p in [*self.procs, *self.spies]:
            if p.returncode is None:
                p.kill()
        for i, p in enumerate(self.procs):
            await p.communicate()
            text = self._log_of(i).strip()
            if text:
                log(f"--- worker pid {p.pid} (exit {p.returncode}) stderr:\n{text[-2000:]}")
        for p in self.spies:
            await p.wait()
        self.procs.clear()
        self.spies.clear()
        self._close_logs()


async def wait_drained(
    ctx: Ctx, keys: Sequence[tuple[str, str]], workers: Workers, timeout: float
) -> float:
    """Poll until every stream (XLEN) and delayed set (ZCARD) in `keys` is empty.

    Settling XACKs, XDELs and emits successors in one script, so an empty set of
    streams means every state was settled; returns that moment (time.monotonic).
    Polls are adaptive: every POLL_MAX_S while far from done, then at half the
    estimated time left (at least POLL_MIN_S), so the end is caught within ~1 ms while
    the poller itself costs the measured machine next to nothing."""
    deadline = time.monotonic() + timeout
    last: tuple[float, int] | None = None
    checked = time.monotonic()
    while True:
        pipe = ctx.client.pipeline(transaction=False)
        for kind, key in keys:
            if kind == "stream":
                pipe.xlen(key)
            else:
                pipe.zcard(key)
        counts = await pipe.execute()
        now = time.monotonic()
        left = sum(int(c) for c in counts)
        if not left:
            return now
        wait = POLL_MAX_S
        if last is not None and last[1] > left:
            rate = (last[1] - left) / (now - last[0])
            wait = min(POLL_MAX_S, max(POLL_MIN_S, left / rate / 2))
        last = (now, left)
        if now - checked > 0.5:
            checked = now
            workers.check_alive()
            if now > deadline:
                by_key = {key: c for (_, key), c in zip(keys, counts, strict=True)}
                raise TimeoutError(f"not drained after {timeout}s: {by_key}")
        await asyncio.sleep(wait)


def _measurement(
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
    return result


# --------------------------------------------------------------------------- workloads


async def w1_drain(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Enqueue N no-op states, release W workers, time until all are settled."""
    ns = ctx.namespace("w1")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "noop", processes, output_maxlen=max(2 * n, 100_000), label=label)
    try:
        await sm.enqueue_many("Noop", [payload(i) for i in range(n)])
        await workers.start()
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        await workers.go()
        drained = await wait_drained(ctx, [("stream", keys.queue("Noop"))], workers, ctx.timeout)
        b = replace(await snapshot(ctx.client), at=drained)
        reports = await workers.stop()
        await _verify_w1(ctx, keys, n, reports)
        return _measurement(n, a, b, reports, ctx.external)
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)


async def _verify_w1(ctx: Ctx, keys: Keys, n: int, reports: list[dict[str, Any]]) -> None:
    c = ctx.client
    out = keys.output("Noop")
    pending = (await c.xpending(keys.queue("Noop"), GROUP))["pending"]
    statuses: dict[bytes, int] = {}
    after = "-"
    while True:
        chunk = await c.xrange(out, min=after, count=5000)
        for _, f in chunk:
            statuses[f[b"status"]] = statuses.get(f[b"status"], 0) + 1
        if len(chunk) < 5000:
            break
        after = "(" + chunk[-1][0].decode()
    settled = sum(int(r["settled"]) for r in reports)
    problems = []
    if statuses != {b"SUCCEEDED": n}:
        problems.append(f"output statuses {statuses}, expected {n} SUCCEEDED")
    if pending:
        problems.append(f"{pending} states still pending")
    if settled != n:
        problems.append(f"workers report {settled} settled, expected {n}")
    if await c.xlen(keys.dead()):
        problems.append("dead letters were written")
    if problems:
        raise AssertionError("w1 check failed: " + "; ".join(problems))


def chain_graph(namespace: str) -> list[GraphNodeModel]:
    def node(name: str, ident: str, x: object, nxt: str | None) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=name,
            namespace=namespace,
            identifier=ident,
            inputs={"x": x},
            next_nodes=[nxt] if nxt else None,
        )

    return [
        node("A", "a", 0, "b"),
        node("B", "b", "${{ a.outputs.x }}", "c"),
        node("C", "c", "${{ b.outputs.x }}", None),
    ]


async def register_nodes(
    url: str, namespace: str, nodes: str = "chain", timeout: float = 30.0
) -> None:
    """Register a node set (A, B, C by default) from a short-lived Runtime process
    (`--register-only`), so the graph can be upserted and runs triggered before the
    workers are released."""
    proc = await asyncio.create_subprocess_exec(
        *_worker_argv(url, namespace, nodes),
        "--register-only",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
    if proc.returncode != 0:
        log(f"warning: registration runtime exited with {proc.returncode}: {err.decode()[-600:]}")


async def trigger_runs(
    sm: StateManager,
    n: int,
    concurrency: int = 64,
    graph: str = GRAPH,
    inputs: Callable[[int], dict[str, Any]] = lambda i: {"x": i},
) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, concurrency):
        stop = min(n, start + concurrency)
        ids += await asyncio.gather(
            *(sm.trigger(graph, inputs=inputs(i)) for i in range(start, stop))
        )
    return ids


async def w2_pipeline(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Trigger N runs of A -> B -> C, release W workers, time until every run finished."""
    ns = ctx.namespace("w2")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "chain", processes, label=label)
    try:
        await register_nodes(ctx.url, ns, "chain")
        await sm.upsert_graph(GRAPH, chain_graph(ns), secrets={}, validation_timeout=10)
        tt = time.perf_counter()
        run_ids = await trigger_runs(sm, n)
        trigger_rate = n / (time.perf_counter() - tt)
        await workers.start()
        watch: list[tuple[str, str]] = []
        for node in ("A", "B", "C"):
            watch += [("stream", keys.queue(node)), ("zset", keys.delayed(node))]
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        await workers.go()
        drained = await wait_drained(ctx, watch, workers, ctx.timeout)
        b = replace(await snapshot(ctx.client), at=drained)
        reports = await workers.stop()
        await _verify_w2(ctx, keys, run_ids, reports)
        result = _measurement(n, a, b, reports, ctx.external)
        result["states_per_s"] = round(3 * n / (b.at - a.at), 1)
        result["trigger_rate"] = round(trigger_rate, 1)
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)


async def _verify_w2(
    ctx: Ctx, keys: Keys, run_ids: list[str], reports: list[dict[str, Any]]
) -> None:
    c = ctx.client
    pipe = c.pipeline(transaction=False)
    for run in run_ids:
        pipe.hget(keys.run(run), "status")
        pipe.lrange(keys.run_results(run), 0, -1)
    replies = await pipe.execute()
    problems: list[str] = []
    statuses = list(replies[0::2])
    bad_status = sum(1 for s in statuses if s != b"SUCCEEDED")
    if bad_status:
        problems.append(f"{bad_status} runs not SUCCEEDED (e.g. {statuses[0]!r})")
    wrong = 0
    for i, results in enumerate(replies[1::2]):
        xs = [unpack(r)["outputs"]["x"] for r in results]
        if xs != [i + 3]:
            wrong += 1
    if wrong:
        problems.append(f"{wrong} runs have a wrong result (expected C.outputs.x == i + 3)")
    settled = sum(int(r["settled"]) for r in reports)
    if settled != 3 * len(run_ids):
        problems.append(f"workers report {settled} settled, expected {3 * len(run_ids)}")
    if await c.xlen(keys.dead()):
        problems.append("dead letters were written")
    if problems:
        raise AssertionError("w2 check failed: " + "; ".join(problems))


async def enqueue_rate(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Time StateManager.enqueue_many of N states (payloads built beforehand)."""
    del processes, label
    ns = ctx.namespace("enq")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    try:
        items = [payload(i) for i in range(n)]
        await sm.client.ping()  # open the connection outside the timing
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        ids = await sm.enqueue_many("Noop", items)
        b = await snapshot(ctx.client)
        length = await ctx.client.xlen(keys.queue("Noop"))
        if len(ids) != n or length != n:
            raise AssertionError(f"enqueue check failed: {len(ids)} ids, stream length {length}")
        result = _measurement(n, a, b, [], ctx.external)
        del result["worker_cpu"], result["worker_us_per_item"]
        return result
    finally:
        await sm.close()
        await cleanup(ctx.client, ns)


# --------------------------------------------------------------------------- W3


def fan_graph(namespace: str) -> list[GraphNodeModel]:
    """fan (returns n outputs) -> branch (one state per output) -> unite (fan-in on fan)."""
    return [
        GraphNodeModel(
            node_name="Fan",
            namespace=namespace,
            identifier="fan",
            inputs={"run": 0, "n": 1},
            next_nodes=["branch"],
        ),
        GraphNodeModel(
            node_name="Branch",
            namespace=namespace,
            identifier="branch",
            inputs={"x": "${{ fan.outputs.x }}"},
            next_nodes=["unite"],
        ),
        GraphNodeModel(
            node_name="Unite",
            namespace=namespace,
            identifier="unite",
            unites=UnitesModel(identifier="fan"),
            inputs={"values": "${{ branch.outputs.x }}"},
        ),
    ]


async def w3_fan(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Trigger N runs that each fan out to `ctx.branches` branches and unite; release W
    workers, time until every run finished (1 + branches + 1 states per run)."""
    ns = ctx.namespace("w3")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "fan", processes, label=label)
    branches = ctx.branches
    try:
        await register_nodes(ctx.url, ns, "fan")
        await sm.upsert_graph(FAN_GRAPH, fan_graph(ns), secrets={}, validation_timeout=10)
        run_ids = await trigger_runs(
            sm, n, graph=FAN_GRAPH, inputs=lambda i: {"run": i, "n": branches}
        )
        await workers.start()
        watch: list[tuple[str, str]] = []
        for node in ("Fan", "Branch", "Unite"):
            watch += [("stream", keys.queue(node)), ("zset", keys.delayed(node))]
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        await workers.go()
        drained = await wait_drained(ctx, watch, workers, ctx.timeout)
        b = replace(await snapshot(ctx.client), at=drained)
        reports = await workers.stop()
        states = n * (branches + 2)
        await _verify_w3(ctx, keys, run_ids, branches, reports)
        result = _measurement(n, a, b, reports, ctx.external)
        elapsed = b.at - a.at
        result["branches"] = branches
        result["states"] = states
        result["states_per_s"] = round(states / elapsed, 1)
        result["worker_us_per_state"] = round(result["worker_us_per_item"] / (branches + 2), 2)
        result["redis_us_per_state"] = round(result["redis_us_per_item"] / (branches + 2), 2)
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)


async def _verify_w3(
    ctx: Ctx, keys: Keys, run_ids: list[str], branches: int, reports: list[dict[str, Any]]
) -> None:
    """Every run SUCCEEDED with exactly one result, the unite's, holding all branch values
    in fan-out order."""
    c = ctx.client
    pipe = c.pipeline(transaction=False)
    for run in run_ids:
        pipe.hget(keys.run(run), "status")
        pipe.lrange(keys.run_results(run), 0, -1)
    replies = await pipe.execute()
    problems: list[str] = []
    statuses = list(replies[0::2])
    bad_status = sum(1 for s in statuses if s != b"SUCCEEDED")
    if bad_status:
        problems.append(f"{bad_status} runs not SUCCEEDED (e.g. {statuses[0]!r})")
    wrong: list[str] = []
    for i, raw in enumerate(replies[1::2]):
        results = [unpack(r) for r in raw]
        expected = [i * branches + j + 1 for j in range(branches)]
        if len(results) != 1:
            wrong.append(f"run {i}: {len(results)} results")
        elif results[0]["identifier"] != "unite":
            wrong.append(f"run {i}: result of {results[0]['identifier']!r}")
        elif results[0]["outputs"]["values"] != expected:
            got = results[0]["outputs"]["values"]
            order = " (same values, other order)" if sorted(got) == expected else ""
            wrong.append(f"run {i}: {len(got)} values{order}")
    if wrong:
        problems.append(f"{len(wrong)} runs have a wrong unite result: {wrong[:3]}")
    settled = sum(int(r["settled"]) for r in reports)
    want = (branches + 2) * len(run_ids)
    if settled != want:
        problems.append(f"workers report {settled} settled, expected {want}")
    if await c.xlen(keys.dead()):
        problems.append("dead letters were written")
    if problems:
        raise AssertionError("w3 check failed: " + "; ".join(problems))


# --------------------------------------------------------------------------- latency


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


class Follower:
    """A `benchmarks.follower` process: a blocking XREAD on one stream that stamps each
    entry with time.monotonic() when it becomes visible (a separate process, so the
    producer's event loop cannot delay the stamp)."""

    def __init__(self, ctx: Ctx, stream: str, ready: str, expect: int, timeout: float) -> None:
        self.ctx = ctx
        self.stream = stream
        self.ready = ready
        self.expect = expect
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.follower",
            "--url",
            self.ctx.url,
            "--stream",
            self.stream,
            "--ready-key",
            self.ready,
            "--count",
            str(self.expect),
            "--timeout",
            str(self.timeout),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        got = await self.ctx.client.blpop([self.ready], timeout=30)
        if not got:
            raise TimeoutError("latency follower not ready")

    async def result(self) -> dict[str, Any]:
        assert self.proc is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), self.timeout + 10)
        if self.proc.returncode != 0:
            raise RuntimeError(f"follower exited {self.proc.returncode}: {err.decode()[-800:]}")
        report: dict[str, Any] = json.loads(out)
        return report

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.communicate()


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
        result = _measurement(n, a, b, reports, ctx.external)
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


# --------------------------------------------------------------------------- memory


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
        result = _measurement(n, a, b, reports, ctx.external)
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


WORKLOADS: dict[str, Callable[[Ctx, int, int, str], Awaitable[dict[str, Any]]]] = {
    "w1": w1_drain,
    "w2": w2_pipeline,
    "enqueue": enqueue_rate,
    "w3": w3_fan,
    "latency": latency,
    "memory": memory,
}


# --------------------------------------------------------------------------- reporting


def machine_info(server_version: str, server_kind: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_version": server_version,
        "redis_server": server_kind,
    }


def _median_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Per-field medians of a dict-valued result field (e.g. latency_ms) over repeats."""
    fields = runs[0][key].keys()
    return {f: statistics.median(r[key][f] for r in runs) for f in fields}


def summarise(
    workload: str, processes: int, runs: list[dict[str, Any]], system: str = "exospherehost"
) -> dict[str, Any]:
    rates = [r["rate"] for r in runs]
    median = statistics.median(rates)
    row: dict[str, Any] = {
        "system": system,
        "workload": workload,
        "n": runs[0]["n"],
        "processes": processes if workload != "enqueue" else None,
        "unit": UNIT[workload],
        "median_rate": round(median, 1),
        "min_rate": min(rates),
        "max_rate": max(rates),
        "median_seconds": round(statistics.median(r["seconds"] for r in runs), 4),
    }
    for cpu in (
        "worker_cpu",
        "redis_cpu",
        "harness_cpu",
        "other_cpu",
        "steal_cpu",
        "worker_us_per_item",
        "redis_us_per_item",
        "worker_us_per_state",
        "redis_us_per_state",
    ):
        values = [r[cpu] for r in runs if cpu in r]
        if values:
            row[cpu] = statistics.median(values)
    if workload == "w2":
        row["median_states_per_s"] = round(3 * median, 1)
        if "trigger_rate" in runs[0]:
            row["median_trigger_rate"] = statistics.median(r["trigger_rate"] for r in runs)
    if workload == "w3":
        row["branches"] = runs[0]["branches"]
        row["median_states_per_s"] = round((runs[0]["branches"] + 2) * median, 1)
    if workload == "latency":
        row["offered_rate"] = runs[0]["offered_rate"]
        for key in ("latency_ms", "probe_latency_ms", "producer_late_ms"):
            row[key] = _median_of(runs, key)
        row["worst_p99_ms"] = max(r["latency_ms"]["p99"] for r in runs)
    if workload == "memory":
        for key in ("delta", "ratio", "delta_no_output", "ratio_no_output", "enqueue_s"):
            row[key] = statistics.median(r[key] for r in runs)
        for key in ("before", "peak", "after", "after_no_output"):
            row[key] = _median_of(runs, key)
        row["output_maxlen"] = runs[0]["output_maxlen"]
        row["output_stream_len"] = runs[0]["output_stream_len"]
    row["repeats"] = runs
    return row


def _other(r: dict[str, Any]) -> str:
    return f"{r['other_cpu'] + r.get('steal_cpu', 0):.2f}" if "other_cpu" in r else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    """Results tables. CPU columns are medians over the repeats: `worker CPU` / `redis CPU`
    in cores, `µs/item` CPU time per item, `other` what other processes (plus hypervisor
    steal) used meanwhile: a large value marks a disturbed measurement."""

    def num(row: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        return format(row[key], fmt) if key in row else "-"

    out: list[str] = []
    throughput = [r for r in rows if r["workload"] not in ("latency", "memory")]
    if throughput:
        out.append(
            "| system | workload | N | procs | median | min | max | unit | ÷ 1 proc | median s "
            "| worker CPU | worker µs/item | redis CPU | redis µs/item | other CPU |\n"
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        single = {(r["system"], r["workload"]): r for r in throughput if r["processes"] == 1}
        for r in throughput:
            one = single.get((r["system"], r["workload"]))
            scale = "-"
            if one is not None and r["processes"] not in (None, 1):
                scale = f"{r['median_rate'] / one['median_rate']:.2f}x"
            procs = "-" if r["processes"] is None else str(r["processes"])
            unit = r["unit"]
            if "median_states_per_s" in r:
                unit += f" (= {r['median_states_per_s']:,.0f} states/s)"
            out.append(
                f"| {r['system']} | {r['workload']} | {r['n']:,} | {procs} "
                f"| {r['median_rate']:,.0f} | {r['min_rate']:,.0f} | {r['max_rate']:,.0f} "
                f"| {unit} | {scale} | {r['median_seconds']:.3f} | {num(r, 'worker_cpu')} "
                f"| {num(r, 'worker_us_per_item', '.1f')} | {num(r, 'redis_cpu')} "
                f"| {num(r, 'redis_us_per_item', '.1f')} | {_other(r)} |"
            )
        out.append("")
    peers = [s for s in dict.fromkeys(r["system"] for r in throughput) if s != "exospherehost"]
    ours = {
        (r["workload"], r["processes"]): r for r in throughput if r["system"] == "exospherehost"
    }
    if peers:
        head = "| workload | procs | exospherehost |"
        rule = "|---|---:|---:|"
        for p in peers:
            head += f" {p} | ours ÷ {p} |"
            rule += "---:|---:|"
        out += [head, rule]
        for key, mine in ours.items():
            theirs = {
                r["system"]: r
                for r in throughput
                if (r["workload"], r["processes"]) == key and r["system"] != "exospherehost"
            }
            if not theirs:
                continue
            line = f"| {key[0]} | {key[1]} | {mine['median_rate']:,.0f} {mine['unit']} |"
            for p in peers:
                if p in theirs:
                    ratio = mine["median_rate"] / theirs[p]["median_rate"]
                    line += f" {theirs[p]['median_rate']:,.0f} | {ratio:.1f}x |"
                else:
                    line += " - | - |"
            out.append(line)
        out.append("")
    lat = [r for r in rows if r["workload"] == "latency"]
    if lat:
        out.append(
            "| latency | procs | offered /s | achieved /s | p50 ms | p90 ms | p99 ms "
            "| p99.9 ms | max ms | worst p99 ms | probe p50 / p99 ms | worker CPU | other CPU |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        )
        for r in lat:
            ms, probe = r["latency_ms"], r["probe_latency_ms"]
            out.append(
                f"| {r['n']:,} states | {r['processes']} | {r['offered_rate']:,.0f} "
                f"| {r['median_rate']:,.0f} | {ms['p50']:.2f} | {ms['p90']:.2f} "
                f"| {ms['p99']:.2f} | {ms['p999']:.2f} | {ms['max']:.2f} "
                f"| {r['worst_p99_ms']:.2f} | {probe['p50']:.2f} / {probe['p99']:.2f} "
                f"| {num(r, 'worker_cpu')} | {_other(r)} |"
            )
        out.append("")
    mem = [r for r in rows if r["workload"] == "memory"]
    if mem:
        out.append(
            "| memory | procs | output_maxlen | before | peak (backlog) | after "
            "| delta | after ÷ before | after, output stream deleted | delta | after ÷ before "
            "| drain states/s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )

        def mb(v: float) -> str:
            return f"{v / 1e6:,.2f} MB"

        for r in mem:
            out.append(
                f"| {r['n']:,} states | {r['processes']} | {r['output_maxlen']:,} "
                f"| {mb(r['before']['used_memory'])} | {mb(r['peak']['used_memory'])} "
                f"| {mb(r['after']['used_memory'])} | {mb(r['delta'])} | {r['ratio']:.3f}x "
                f"| {mb(r['after_no_output']['used_memory'])} | {mb(r['delta_no_output'])} "
                f"| {r['ratio_no_output']:.3f}x | {r['median_rate']:,.0f} |"
            )
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def _processes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--processes takes positive integers, e.g. 1 or 1,2")
    return values


def _workloads(text: str) -> list[str]:
    names: list[str] = []
    for name in (v.strip() for v in text.split(",") if v.strip()):
        if name == "all":
            names += [n for n in ALL if n not in names]
        elif name in WORKLOADS:
            if name not in names:
                names.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown workload {name!r}; choose from {', '.join([*WORKLOADS, 'all'])}"
            )
    if not names:
        raise argparse.ArgumentTypeError("--workload is empty")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--workload",
        type=_workloads,
        default=list(ALL),
        help=f"comma-separated: {', '.join(WORKLOADS)}, all (= {','.join(ALL)}; default)",
    )
    p.add_argument("--n", type=int, help=f"items per measurement (default {DEFAULT_N})")
    p.add_argument(
        "--processes", type=_processes, default=[1], help="worker processes, e.g. 1 or 1,2"
    )
    p.add_argument("--repeat", type=int, help="repeats per row (default 3; memory: 1)")
    p.add_argument("--redis-url", help="use this server instead of a private one")
    p.add_argument("--batch-size", type=int, default=100, help="Runtime(batch_size=...)")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the workers' event loop (uvloop: what Runtime.start() uses when the `fast` "
        "extra is installed)",
    )
    p.add_argument(
        "--untuned-gc",
        action="store_true",
        help="workers with Runtime(tune_gc=False): CPython's default collector settings",
    )
    p.add_argument("--timeout", type=float, default=90.0, help="per measurement, seconds")
    p.add_argument("--branches", type=int, default=100, help="w3: fan-out per run")
    p.add_argument("--rate", type=float, default=1000.0, help="latency: offered states/s")
    p.add_argument(
        "--warmup", type=float, default=0.5, help="latency: seconds of load before measuring"
    )
    p.add_argument(
        "--output-maxlen",
        type=int,
        default=100_000,
        help="memory: the workers' Runtime(output_maxlen=...) (default: the Runtime's)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run w1/w2 on taskiq-redis and dramatiq (the `peers` extra)",
    )
    p.add_argument(
        "--peer-repeat",
        type=int,
        default=1,
        help="repeats of each peer row (default 1: a peer run takes 5-20 s)",
    )
    p.add_argument(
        "--dramatiq-threads", type=int, default=8, help="peers: dramatiq --threads (default 8)"
    )
    p.add_argument("--py-spy", type=Path, help="record a py-spy raw profile per worker here")
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--py-spy-lines",
        action="store_true",
        help="keep line numbers in py-spy profiles (default: aggregate by function)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S seconds for other processes to go idle",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        p.error("--n must be positive")
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be positive")
    if args.branches < 1 or args.rate <= 0 or args.warmup < 0 or args.output_maxlen < 1:
        p.error("--branches, --rate and --output-maxlen must be positive")
    if args.peer_repeat < 1 or args.dramatiq_threads < 1:
        p.error("--peer-repeat and --dramatiq-threads must be positive")
    return args


def _log_result(label: str, name: str, result: dict[str, Any]) -> None:
    noise = ""
    if "other_cpu" in result:
        noise = f" (other CPU {result['other_cpu']:.2f}, steal {result['steal_cpu']:.2f} cores)"
    what = f"{result['rate']:,.0f} {UNIT[name]} in {result['seconds']:.3f}s"
    if name == "latency":
        ms = result["latency_ms"]
        what = f"p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms, max {ms['max']:.2f} ms"
    elif name == "memory":
        what = (
            f"used_memory {result['before']['used_memory']:,} -> "
            f"{result['after']['used_memory']:,} (x{result['ratio']:.3f}), "
            f"{result['after_no_output']['used_memory']:,} without the output stream; " + what
        )
    log(f"{label}: {what}{noise}")


async def run(args: argparse.Namespace, url: str, external: bool, kind: str) -> dict[str, Any]:
    client: RawRedis = aioredis.Redis.from_url(url, decode_responses=False)
    source_at_start = source_fingerprint()
    try:
        info = await client.info("server")
        # Cache the SDK's Lua scripts in the server as a long-running deployment has them,
        # so no measurement pays the one-off NOSCRIPT -> EVAL fallback. (Harmless on a
        # shared server: SCRIPT LOAD only adds to the script cache.)
        for script in resources.files("exospherehost.broker").joinpath("lua").iterdir():
            if script.name.endswith(".lua"):
                await client.script_load(script.read_text())
        ctx = Ctx(
            url=url,
            client=client,
            batch_size=args.batch_size,
            timeout=args.timeout,
            py_spy=args.py_spy,
            py_spy_rate=args.py_spy_rate,
            external=external,
            quiet_s=args.wait_quiet,
            py_spy_lines=args.py_spy_lines,
            branches=args.branches,
            rate=args.rate,
            warmup_s=args.warmup,
            output_maxlen=args.output_maxlen,
            dramatiq_threads=args.dramatiq_threads,
            loop=args.loop,
            untuned_gc=args.untuned_gc,
        )
        peers: list[str] = []
        unavailable: dict[str, str] = {}
        peer_run: Callable[..., Awaitable[dict[str, Any]]] | None = None
        if args.peers:
            from benchmarks import peers as peer_mod

            peer_run = peer_mod.peer_run
            for system in peer_mod.PEERS:
                why = peer_mod.available(system)
                if why is None:
                    peers.append(system)
                else:
                    unavailable[system] = why
                    log(f"peer {system} skipped: {why}")
        rows: list[dict[str, Any]] = []
        for name in args.workload:
            n = args.n or DEFAULT_N[name]
            repeat = args.repeat or (1 if name == "memory" else 3)
            systems = ["exospherehost", *(peers if name in ("w1", "w2") else [])]
            counts = [1] if name == "enqueue" else args.processes
            runs: dict[tuple[int, str], list[dict[str, Any]]] = {
                (procs, system): [] for procs in counts for system in systems
            }
            rounds = max(repeat, args.peer_repeat if peers and len(systems) > 1 else 0)
            for rep in range(rounds):
                # Interleaved (1 process: ours, taskiq, dramatiq; 2 processes: ours, ...;
                # then the next repeat): drift in the machine's speed then hits every
                # row alike, which matters for the ratios between rows.
                for procs in counts:
                    for system in systems:
                        if rep >= (repeat if system == "exospherehost" else args.peer_repeat):
                            continue
                        label = f"{name}-p{procs}-r{rep}"
                        if system == "exospherehost":
                            result = await WORKLOADS[name](ctx, n, procs, label)
                        else:
                            assert peer_run is not None
                            label = f"{system}-{label}"
                            result = await peer_run(ctx, system, name, n, procs, label)
                        _log_result(label, name, result)
                        runs[(procs, system)].append(result)
            rows += [
                summarise(name, procs, runs[(procs, s)], s) for procs in counts for s in systems
            ]
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]),
            "machine": machine_info(str(info.get("redis_version", "?")), kind),
            "source": {
                **source_at_start,
                # Others may edit the tree while this runs: then the numbers mix versions.
                "changed_during_run": source_fingerprint() != source_at_start,
            },
            "config": {
                "batch_size": args.batch_size,
                "loop": args.loop,
                "untuned_gc": args.untuned_gc,
                "repeat": args.repeat,
                "external_redis": external,
                "wait_quiet_s": args.wait_quiet,
                "branches": args.branches,
                "rate": args.rate,
                "output_maxlen": args.output_maxlen,
                "peers": peers,
                "peer_repeat": args.peer_repeat,
                "dramatiq_threads": args.dramatiq_threads,
                "peers_unavailable": unavailable,
                "peer_versions": _peer_versions(peers),
            },
            "results": rows,
        }
    finally:
        await client.aclose()


def _peer_versions(peers: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in ("taskiq", "taskiq-redis", "dramatiq") if peers else ():
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    server: PrivateServer | None = None
    if args.redis_url:
        url, kind = args.redis_url, "external"
    else:
        server = PrivateServer()
        started = server.start()
        url, kind = started.url, started.kind
        log(f"private server {kind} at {url}")
    try:
        report = asyncio.run(run(args, url, server is None, kind))
    finally:
        if server is not None:
            server.stop()
    print(markdown(report["results"]))
    if report["source"]["changed_during_run"]:
        log("warning: the SDK sources changed during the run; results mix versions")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
