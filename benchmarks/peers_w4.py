"""W4 (benchmarks/fairness.py) on the peer task queues, in the same invocation as ours.

Each worker process is its own CLI invocation (`taskiq worker ... --workers 1
--max-async-tasks C`, `dramatiq ... --processes 1 --threads C`), started up front and
held at the start line by the handshake of benchmarks.peer_common; one go token is pushed
per process, the i-th `i * stagger` seconds after the first (whichever process takes a
token joins then). The libraries' defaults otherwise: taskiq-redis reads 100 messages
per XREADGROUP (`xread_count`) with `--max-prefetch 0`; dramatiq's Redis broker
prefetches twice its threads. The clock stops when the broker says every task is acked
(as in benchmarks/peers.py); each process reports how many it ran."""

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
from pathlib import Path
from typing import IO, Any

from benchmarks import peer_common as pc
from benchmarks.fairness import Scenario, fifo_ideal_s, figures, release
from benchmarks.harness import ROOT, Ctx, log
from benchmarks.peers import TASKIQ_GROUP, _cleanup

MAX_DRAMATIQ_THREADS = 256


def cannot(system: str, sc: Scenario) -> str | None:
    """Why `system` does not run scenario `sc` (None: it does)."""
    if sc.kind == "mixed-nodes":
        return "two nodes: our reader's choice between streams (one task each on a peer)"
    if system == "dramatiq" and sc.concurrency > MAX_DRAMATIQ_THREADS:
        return f"{sc.concurrency} OS threads per process (dramatiq runs one task per thread)"
    return None


class Fleet:
    """P single-process CLIs of `system`, held at the start line until released."""

    def __init__(self, ctx: Ctx, system: str, ns: str, sc: Scenario) -> None:
        self.ctx, self.system, self.ns, self.sc = ctx, system, ns, sc
        self.procs: list[asyncio.subprocess.Process] = []
        self.logs: list[IO[bytes]] = []

    def argv(self) -> list[str]:
        exe = str(Path(sys.executable).parent / self.system)
        c = str(self.sc.concurrency)
        if self.system == "taskiq":
            return [
                exe,
                "worker",
                "benchmarks.peer_taskiq:worker_broker",
                "--workers",
                "1",
                "--max-async-tasks",
                c,
                "--log-level",
                "WARNING",
            ]
        return [exe, "benchmarks.peer_dramatiq", "--processes", "1", "--threads", c]

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), pc.URL_ENV: self.ctx.url, pc.NS_ENV: self.ns}
        for _ in range(self.sc.processes):
            self.logs.append(tempfile.TemporaryFile())  # noqa: SIM115 - closed in kill()
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    *self.argv(),
                    cwd=ROOT,
                    env=env,
                    stdout=self.logs[-1],
                    stderr=self.logs[-1],
                    start_new_session=True,
                )
            )
        ready, deadline = 0, time.monotonic() + timeout
        while ready < self.sc.processes:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system}: {self.sc.processes - ready} not ready")
            if await self.ctx.client.blpop([pc.ready_key(self.ns)], timeout=1):
                ready += 1

    async def go_one(self, index: int) -> None:
        await self.ctx.client.rpush(pc.go_key(self.ns), 1)

    def check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p.returncode is not None:
                self.logs[i].seek(0)
                out = self.logs[i].read().decode(errors="replace")
                raise RuntimeError(f"{self.system} exited with {p.returncode}:\n{out[-2000:]}")

    async def stop(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), timeout)
            except TimeoutError:
                log(f"{self.system} did not stop within {timeout}s; killing it")
        raw = await self.ctx.client.lrange(pc.reports_key(self.ns), 0, -1)
        return [json.loads(r) for r in raw]

    async def kill(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
        for f in self.logs:
            f.close()
        self.logs.clear()


async def _enqueue(ctx: Ctx, system: str, ns: str, ms: list[int]) -> Callable[[], Awaitable[int]]:
    """Put the backlog on the peer's queue; returns a `remaining()` probe."""
    n = len(ms)
    if system == "taskiq":
        from benchmarks.peer_taskiq import make_broker

        stream = pc.taskiq_stream(ns)
        await ctx.client.xgroup_create(stream, TASKIQ_GROUP, id="0", mkstream=True)
        broker = make_broker(ctx.url, ns)
        task = broker.find_task("sleep_ms")
        assert task is not None
        kicker = task.kicker()
        for start in range(0, n, 1000):  # as benchmarks/peers.py: kiq's message, pipelined
            pipe = ctx.client.pipeline(transaction=False)
            for d in ms[start : start + 1000]:
                message = broker.formatter.dumps(kicker._prepare_message(ms=d))
                pipe.xadd(stream, {b"data": message.message})
            await pipe.execute()

        async def remaining() -> int:
            for group in await ctx.client.xinfo_groups(stream):
                name = group["name"]
                if (name.decode() if isinstance(name, bytes) else name) == TASKIQ_GROUP:
                    return n - (int(group["entries-read"] or 0) - int(group["pending"]))
            raise RuntimeError("taskiq group vanished")

        return remaining

    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    dns = pc.dramatiq_namespace(ns)

    def send_all() -> None:
        broker = RedisBroker(url=ctx.url, namespace=dns)  # type: ignore[no-untyped-call]
        try:
            for d in ms:
                broker.enqueue(
                    Message(
                        queue_name="default",
                        actor_name="sleep_ms",
                        args=(d,),
                        kwargs={},
                        options={},
                    )
                )
        finally:
            broker.close()

    await asyncio.to_thread(send_all)
    msgs = f"{dns}:default.msgs"

    async def left() -> int:
        return int(await ctx.client.hlen(msgs))

    return left


async def run(ctx: Ctx, system: str, sc: Scenario, label: str) -> dict[str, Any]:
    ns = ctx.namespace(f"{system}-w4")
    fleet = Fleet(ctx, system, ns, sc)
    ms = sc.durations_ms()
    try:
        remaining = await _enqueue(ctx, system, ns, ms)
        await fleet.start()
        await ctx.settle_machine()
        t0 = time.monotonic()
        releasing = asyncio.create_task(release(sc.stagger_s, sc.processes, fleet.go_one))
        timeout = (
            ctx.timeout
            + sc.stagger_s * sc.processes
            + 3 * fifo_ideal_s(ms, sc.processes, sc.concurrency, sc.stagger_s)
        )
        while (left := await remaining()) > 0:
            fleet.check_alive()
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{label}: {left} tasks left after {timeout:.0f}s")
            await asyncio.sleep(0.005)
        done = time.monotonic()
        await releasing
        reports = await fleet.stop()
        # A process the CLI restarted (taskiq restarts a worker child that exits) reports
        # too, without a go: only released processes are workers of the table.
        joined = sorted((r for r in reports if r.get("go_at")), key=lambda r: r["go_at"])
        per_worker = [int(r["slept"]) for r in joined]
        if sum(int(r["slept"]) for r in reports) != sc.n:
            raise AssertionError(f"{label}: {per_worker} ran ({len(reports)} reports), not {sc.n}")
        result = figures(sc, done - t0, per_worker)
        if len(reports) != sc.processes:
            log(f"{label}: {len(reports)} worker reports for {sc.processes} processes")
            result["reports"] = reports
        return result
    finally:
        await fleet.kill()
        await _cleanup(ctx, ns)
