"""W1 and W2 on peer task queues, for `python -m benchmarks.bench --peers`.

- taskiq 0.13 + taskiq-redis: `RedisStreamBroker` (a stream with a consumer group; XACK
  after each task), workers started with `taskiq worker ... --workers W`;
- dramatiq 2.x: `RedisBroker` (a list + a hash of messages, moved and acked by its Lua
  dispatch script), workers started with `dramatiq ... --processes W --threads 8`.

Install them with `.venv/bin/pip install -e '.[peers]'` (the `peers` extra; `./dev bench` does).

Each measurement mirrors ours (see benchmarks/README.md): the backlog is enqueued first
through the library's own client API; the workers are started with the library's CLI and
held at the start line by the same handshake as `benchmarks.worker` (ready -> go, inside
a worker-startup hook, so interpreter start-up and imports are outside the timing); the
clock runs from "go" until the broker's own bookkeeping says every task was acked:

- taskiq: the group's `entries-read` minus `pending` (XINFO GROUPS) reaches the number of
  tasks (N for W1, 3N for W2; a task kicks its successor before it is acked);
- dramatiq: its message hash `<ns>:default.msgs` is empty (a message leaves it when
  acked; a task enqueues its successor before it is acked).

So no task does any extra Redis work for the benchmark. Each worker process counts what it
ran in memory and reports it on shutdown; the harness checks W1's count is N and that W2's
chain produced exactly `i + 3` for every i. Worker CPU is read from /proc/<pid>/stat of
the CLI's main process and its worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from benchmarks import peer_common as pc
from benchmarks.harness import ROOT, Ctx, log, measurement, next_poll, payload, snapshot

PEERS = ("taskiq", "dramatiq")
TASKIQ_GROUP = "taskiq"  # RedisStreamBroker's default consumer_group_name


def available(system: str) -> str | None:
    """None if `system` can run here, else why not."""
    module = {"taskiq": "taskiq_redis", "dramatiq": "dramatiq"}[system]
    try:
        __import__(module)
    except ImportError as exc:
        return f"{exc} (pip install -e '.[peers]')"
    exe = Path(sys.executable).parent / system
    if not exe.exists():
        return f"{exe} not found"
    return None


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class PeerWorkers:
    """The peer's CLI (one main process and W worker processes), held until `go()`."""

    ctx: Ctx
    system: str
    ns: str
    count: int
    proc: asyncio.subprocess.Process | None = None
    pids: list[int] = field(default_factory=list)
    log_file: IO[bytes] = field(default_factory=tempfile.TemporaryFile)

    def argv(self) -> list[str]:
        exe = str(Path(sys.executable).parent / self.system)
        if self.system == "taskiq":
            return [
                exe,
                "worker",
                "benchmarks.peer_taskiq:worker_broker",
                "--workers",
                str(self.count),
                "--log-level",
                "WARNING",
            ]
        return [
            exe,
            "benchmarks.peer_dramatiq",
            "--processes",
            str(self.count),
            "--threads",
            str(self.ctx.dramatiq_threads),
            "--worker-shutdown-timeout",
            "10000",
        ]

    async def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            pc.URL_ENV: self.ctx.url,
            pc.NS_ENV: self.ns,
        }
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            cwd=ROOT,
            env=env,
            stdout=self.log_file,
            stderr=self.log_file,
            start_new_session=True,  # its own process group: killed as one on failure
        )
        deadline = time.monotonic() + timeout
        while len(self.pids) < self.count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system}: {self.count - len(self.pids)} not ready")
            got = await self.ctx.client.blpop([pc.ready_key(self.ns)], timeout=1)
            if got:
                self.pids.append(int(json.loads(got[1])["pid"]))

    def cpu_s(self) -> float:
        assert self.proc is not None
        return sum(_proc_cpu_s(p) for p in [self.proc.pid, *self.pids])

    async def go(self) -> None:
        await self.ctx.client.rpush(pc.go_key(self.ns), *([1] * self.count))

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise RuntimeError(
                f"{self.system} exited with {self.proc.returncode}:\n{self.output()[-2000:]}"
            )

    def output(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    async def stop(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        """SIGTERM the main process (it stops its workers), collect their reports."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            log(f"{self.system} did not stop within {timeout}s; killing it")
            await self.kill()
        raw = await self.ctx.client.lrange(pc.reports_key(self.ns), 0, -1)
        return [json.loads(r) for r in raw]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self.log_file.close()


# --------------------------------------------------------------------------- per library


async def _taskiq_enqueue(ctx: Ctx, ns: str, workload: str, n: int) -> Callable[[], Awaitable[int]]:
    """Create the group (from id 0), kiq the backlog; returns a `remaining()` probe."""
    from benchmarks.peer_taskiq import make_broker

    stream = pc.taskiq_stream(ns)
    await ctx.client.xgroup_create(stream, TASKIQ_GROUP, id="0", mkstream=True)
    broker = make_broker(ctx.url, ns)
    task = broker.find_task("noop" if workload == "w1" else "a")
    assert task is not None
    kicker = task.kicker()
    # taskiq has no bulk kick: build each message as `kiq` does (its _prepare_message and
    # formatter) and send the XADD its `kick` sends, pipelined 1,000 at a time. Outside
    # the timing; kiq one by one would take ~7 s for 20,000 tasks.
    for start in range(0, n, 1000):
        pipe = ctx.client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            kwargs = payload(i) if workload == "w1" else {"x": i}
            message = broker.formatter.dumps(kicker._prepare_message(**kwargs))
            pipe.xadd(stream, {b"data": message.message})
        await pipe.execute()
    total = n if workload == "w1" else 3 * n

    async def remaining() -> int:
        for group in await ctx.client.xinfo_groups(stream):
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) == TASKIQ_GROUP:
                return total - (int(group["entries-read"] or 0) - int(group["pending"]))
        raise RuntimeError("taskiq group vanished")

    return remaining


async def _dramatiq_enqueue(
    ctx: Ctx, ns: str, workload: str, n: int
) -> Callable[[], Awaitable[int]]:
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    dns = pc.dramatiq_namespace(ns)

    def send_all() -> None:
        broker = RedisBroker(url=ctx.url, namespace=dns)  # type: ignore[no-untyped-call]
        try:
            for i in range(n):
                msg: Message[Any]
                if workload == "w1":
                    msg = Message(
                        queue_name="default",
                        actor_name="noop",
                        args=(),
                        kwargs=payload(i),
                        options={},
                    )
                else:
                    msg = Message(
                        queue_name="default", actor_name="a", args=(i,), kwargs={}, options={}
                    )
                broker.enqueue(msg)
        finally:
            broker.close()

    await asyncio.to_thread(send_all)
    msgs = f"{dns}:default.msgs"

    async def remaining() -> int:
        return int(await ctx.client.hlen(msgs))

    return remaining


async def _wait_done(
    remaining: Callable[[], Awaitable[int]], workers: PeerWorkers, timeout: float
) -> float:
    """Poll `remaining()` until 0, adaptively as processes.wait_drained does
    (harness.next_poll); returns that moment (time.monotonic)."""
    deadline = time.monotonic() + timeout
    last: tuple[float, int] | None = None
    while True:
        left = await remaining()
        now = time.monotonic()
        if left <= 0:
            return now
        wait = next_poll(last, now, left)
        last = (now, left)
        workers.check_alive()
        if now > deadline:
            raise TimeoutError(f"{workers.system}: {left} tasks left after {timeout}s")
        await asyncio.sleep(wait)


def _verify(system: str, workload: str, n: int, count: int, reports: list[dict[str, Any]]) -> None:
    problems: list[str] = []
    if len(reports) != count:
        problems.append(f"{len(reports)} worker reports, expected {count}")
    if workload == "w1":
        ran = sum(int(r["noop"]) for r in reports)
        if ran != n:
            problems.append(f"{ran} noop tasks ran, expected {n}")
    else:
        final = sorted(v for r in reports for v in r["final"])
        if final != [i + 3 for i in range(n)]:
            problems.append(f"{len(final)} chain results, not exactly i + 3 for each i < {n}")
    if problems:
        raise AssertionError(f"{system} {workload} check failed: " + "; ".join(problems))


async def peer_run(
    ctx: Ctx, system: str, workload: str, n: int, processes: int, label: str
) -> dict[str, Any]:
    """One timed W1 or W2 measurement on `system`."""
    ns = ctx.namespace(f"{system}-{workload}")
    workers = PeerWorkers(ctx, system, ns, processes)
    try:
        enqueue = _taskiq_enqueue if system == "taskiq" else _dramatiq_enqueue
        t = time.perf_counter()
        remaining = await enqueue(ctx, ns, workload, n)
        enqueue_s = time.perf_counter() - t
        await workers.start()
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        cpu0 = workers.cpu_s()
        await workers.go()
        done = await _wait_done(remaining, workers, ctx.timeout)
        b = replace(await snapshot(ctx.client), at=done)
        cpu = workers.cpu_s() - cpu0
        reports = await workers.stop()
        _verify(system, workload, n, processes, reports)
        result = measurement(n, a, b, [], ctx.external, worker_cpu_s=cpu)
        result["enqueue_rate"] = round(n / enqueue_s, 1)
        if workload == "w2":
            result["states_per_s"] = round(3 * n / (b.at - a.at), 1)
        return result
    finally:
        await workers.kill()
        await _cleanup(ctx, ns)


async def _cleanup(ctx: Ctx, ns: str) -> None:
    for pattern in (f"{pc.prefix(ns)}*", f"autoclaim:*{ns}*"):
        batch = [k async for k in ctx.client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(batch), 1000):
            await ctx.client.unlink(*batch[start : start + 1000])
