"""The processes a measurement starts and waits on: the `benchmarks.worker` Runtime
processes (held at the start line until `go()`), the short-lived one that registers a
node set, and the latency workload's `benchmarks.follower`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.harness import ROOT, Ctx, log, next_poll
from benchmarks.worker import go_key, ready_key


def _worker_argv(url: str, namespace: str, nodes: str, cluster: bool = False) -> list[str]:
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
        *(["--cluster"] if cluster else []),
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
    concurrency: int = 32  # Runtime(workers=...)
    prefetch: int | None = None  # Runtime(prefetch=...)
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
                *_worker_argv(self.ctx.url, self.namespace, self.nodes, self.ctx.cluster),
                "--index",
                str(i),
                "--batch-size",
                str(self.ctx.batch_size),
                "--output-maxlen",
                str(self.output_maxlen),
                "--loop",
                self.ctx.loop,
                "--concurrency",
                str(self.concurrency),
                *(["--prefetch", str(self.prefetch)] if self.prefetch is not None else []),
                *(["--untuned-gc"] if self.ctx.untuned_gc else []),
                "--state-records",
                self.ctx.state_records,
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

    async def go_one(self, index: int) -> None:
        """Release worker `index` alone (W4's staggered starts)."""
        await self.ctx.client.rpush(go_key(self.namespace, index), 1)

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
    Polls are adaptive (harness.next_poll)."""
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
        wait = next_poll(last, now, left)
        last = (now, left)
        if now - checked > 0.5:
            checked = now
            workers.check_alive()
            if now > deadline:
                by_key = {key: c for (_, key), c in zip(keys, counts, strict=True)}
                raise TimeoutError(f"not drained after {timeout}s: {by_key}")
        await asyncio.sleep(wait)


async def register_nodes(
    url: str, namespace: str, nodes: str = "chain", timeout: float = 30.0, cluster: bool = False
) -> None:
    """Register a node set (A, B, C by default) from a short-lived Runtime process
    (`--register-only`), so the graph can be upserted and runs triggered before the
    workers are released."""
    proc = await asyncio.create_subprocess_exec(
        *_worker_argv(url, namespace, nodes, cluster),
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
