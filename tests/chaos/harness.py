"""The one harness of the chaos suite: worker processes to kill, freeze and restart, bounded
waits that say what was still pending, and the end-state assertion every scenario ends with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from exospherehost import StateManager
from exospherehost.broker.keys import GROUP, Keys
from exospherehost.client.deadletters import DeadLetter
from exospherehost.client.statemanager import StateResult
from tests.chaos.apps import WorkerConfig
from tests.integration.helpers import ROOT

LONG = os.environ.get("EXO_CHAOS_LONG", "") not in ("", "0")
"""EXO_CHAOS_LONG=1 opts into the long scenarios (and the long variants of quick ones)."""

long_only = pytest.mark.skipif(not LONG, reason="long chaos scenario: set EXO_CHAOS_LONG=1")


# --------------------------------------------------------------------------- waiting


async def until(
    check: Callable[[], Awaitable[bool]],
    timeout: float,
    what: Callable[[], Awaitable[str]] | str,
    poll: float = 0.05,
) -> None:
    """Poll `check` until it is true; after `timeout` fail saying `what` (computed then, so
    the message shows the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            detail = what if isinstance(what, str) else await what()
            raise AssertionError(f"not within {timeout:.0f}s: {detail}")
        await asyncio.sleep(poll)


# --------------------------------------------------------------------------- end state


@dataclass
class NodeLeft:
    """What a node's keys still hold; all zero when the node is settled."""

    node: str
    length: int
    pending: dict[str, int]  # consumer -> unsettled entries
    delayed: int

    @property
    def settled(self) -> bool:
        return self.length == 0 and not self.pending and self.delayed == 0


async def node_left(redis: Redis, keys: Keys, node: str) -> NodeLeft:
    stream = keys.queue(node)
    length = int(await redis.xlen(stream))
    pending: dict[str, int] = {}
    if length or await redis.exists(stream):
        with contextlib.suppress(Exception):  # a stream without the group: nothing pending
            summary = await redis.xpending(stream, GROUP)
            for row in summary.get("consumers") or ():
                if int(row["pending"]):
                    pending[_text(row["name"])] = int(row["pending"])
    delayed = int(await redis.zcard(keys.delayed(node)))
    return NodeLeft(node, length, pending, delayed)


async def held_by(redis: Redis, namespace: str, nodes: Iterable[str]) -> dict[int, int]:
    """Unsettled entries per worker pid (consumer names are `name:host:pid:random`)."""
    keys = Keys(namespace)
    held: dict[int, int] = {}
    for node in nodes:
        for consumer, count in (await node_left(redis, keys, node)).pending.items():
            pid = int(consumer.split(":")[-2])
            held[pid] = held.get(pid, 0) + count
    return held


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def dead_letters(redis: Redis, keys: Keys) -> list[DeadLetter]:
    return [DeadLetter.parse(i, f) for i, f in await redis.xrange(keys.dead())]


async def assert_settled(
    redis: Redis, namespace: str, nodes: Iterable[str], timeout: float = 15.0
) -> list[DeadLetter]:
    """Wait (bounded) until every node's stream is empty, nothing is pending in its group and
    nothing is delayed; return the namespace's dead letters for the caller to check."""
    keys = Keys(namespace)
    names = list(nodes)

    async def left() -> list[NodeLeft]:
        return [n for n in [await node_left(redis, keys, name) for name in names] if not n.settled]

    async def settled() -> bool:
        return not await left()

    async def describe() -> str:
        return "still unsettled: " + "; ".join(
            f"{n.node}: length {n.length}, pending {n.pending}, delayed {n.delayed}"
            for n in await left()
        )

    await until(settled, timeout, describe)
    return await dead_letters(redis, keys)


def by_state(dead: Sequence[DeadLetter]) -> dict[str, DeadLetter]:
    """Dead letters by state id; fails if a state was dead-lettered twice."""
    out: dict[str, DeadLetter] = {}
    for d in dead:
        assert d.state_id not in out, f"state {d.state_id} dead-lettered twice: {d.error}"
        out[d.state_id] = d
    return out


async def delete_namespace(redis: Redis, namespace: str) -> int:
    """Every key of the namespace gone, as after a Redis data loss (SCAN + DEL, never
    a server-wide flush: the session server is shared). Returns how many keys were deleted."""
    deleted = 0
    # Braces are not special in SCAN's glob: the hash-tagged prefix matches literally.
    async for key in redis.scan_iter(match=Keys(namespace).base + ":*", count=1000):
        deleted += int(await redis.delete(key))
    return deleted


# --------------------------------------------------------------------------- runs


async def assert_runs_succeeded_once(
    sm: StateManager,
    runs: Sequence[str],
    expected: Callable[[int], list[Any]],
    timeout: float,
    succeeded: dict[str, int] | None = None,
) -> None:
    """Every run SUCCEEDED and its leaf results are exactly `expected(k)` for the k-th run
    (order-free: a list of comparable leaf summaries), each leaf once; with `succeeded`
    (identifier -> count), every run's per-node counters are exactly that, none failed or
    pending."""
    statuses = await sm.wait_all(runs, timeout=timeout)
    failed = {r: s.status for r, s in statuses.items() if s.status != "SUCCEEDED"}
    assert not failed, f"{len(failed)} runs did not succeed, e.g. {list(failed.items())[:3]}"
    results = await asyncio.gather(*(sm.results(r) for r in runs))
    wrong = []
    for k, (run, res) in enumerate(zip(runs, results, strict=True)):
        got = sorted(leaf_summary(x) for x in res)
        if got != sorted(expected(k)):
            wrong.append((k, run, got))
    assert not wrong, f"{len(wrong)} runs have wrong or duplicated leaf results, e.g. {wrong[:3]}"
    if succeeded is not None:
        # Each stage transition exactly once: the run's counters, not only its results.
        off = []
        for run, st in statuses.items():
            got_counts = {i: (c.succeeded, c.failed, c.pending) for i, c in st.nodes.items()}
            if got_counts != {i: (n, 0, 0) for i, n in succeeded.items()}:
                off.append((run, got_counts))
        assert not off, f"{len(off)} runs with wrong per-node counts, e.g. {off[:3]}"


def squares_leaves(base: int, items: int = 3) -> list[Any]:
    """The label results a run of tests.integration.helpers.squares_graph with inputs
    {"items": items, "base": base} must have, once each."""
    return [
        leaf_summary({"outputs": {"square": v * v, "value": v, "text": f"v={v} sq={v * v}"}})
        for v in range(base, base + items)
    ]


def leaf_summary(result: dict[str, Any]) -> Any:
    """What identifies a leaf result: its outputs without the process that ran it."""
    out = dict(result["outputs"])
    out.pop("pid", None)
    return tuple(sorted(out.items()))


async def results_of(
    sm: StateManager,
    node: str,
    state_ids: Iterable[str],
    timeout: float,
    after: str = "0",
    watch: Sequence[Worker] = (),
) -> dict[str, StateResult]:
    """Follow `node`'s output stream (from entry `after`) until every state has a result.
    Fails at once if a watched worker process exits, and at the deadline saying how many
    states are still without a result."""
    wanted = set(state_ids)
    found: dict[str, StateResult] = {}
    deadline = time.monotonic() + timeout
    while missing := wanted - found.keys():
        for w in watch:
            if w.proc.poll() is not None:
                raise AssertionError(
                    _msg(
                        f"worker {w.pid} exited with code {w.proc.returncode} while "
                        f"{len(missing)} of {len(wanted)} states of {node} had no result",
                        w,
                    )
                )
        if time.monotonic() >= deadline:
            alive = "".join(
                f"\nworker {w.pid} still running; its output ends:\n{w.tail()}" for w in watch
            )
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} states of {node} have no result after "
                f"{timeout:.0f}s, e.g. {sorted(missing)[:3]}{alive}"
            )
        for r in await sm.outputs(node, after, 1000, block_ms=200):
            after = r.entry_id
            if r.state_id in wanted:
                found[r.state_id] = r
    return found


async def all_outputs(sm: StateManager, node: str) -> list[StateResult]:
    """Every result on `node`'s output stream, oldest first."""
    out: list[StateResult] = []
    after = "0"
    while batch := await sm.outputs(node, after, 1000):
        out += batch
        after = batch[-1].entry_id
    return out


def assert_each_once(results: Sequence[StateResult], state_ids: Iterable[str]) -> None:
    """Each of `state_ids` has exactly one result on the output stream."""
    counts = Counter(r.state_id for r in results)
    wrong = {s: counts[s] for s in state_ids if counts[s] != 1}
    sample = list(wrong.items())[:3]
    assert not wrong, f"{len(wrong)} states without exactly one result, e.g. {sample}"


# --------------------------------------------------------------------------- processes


@dataclass
class Worker:
    """One worker process (tests/chaos/apps.py) and the file its output goes to (a file, not
    a pipe: a pipe nobody reads fills up and freezes a chatty worker)."""

    proc: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False  # SIGSTOPped and not yet continued

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


@dataclass
class Fleet:
    """Worker processes of one namespace, all running the same WorkerConfig."""

    url: str
    namespace: str
    cfg: WorkerConfig
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    started: int = 0

    def start(self) -> Worker:
        self.started += 1
        log = self.log_dir / f"worker-{self.started}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.apps", self.url, self.namespace],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **self.cfg.env()},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    async def ready(self, worker: Worker, redis: Redis, timeout: float = 30.0) -> None:
        """Wait until the process joined the group of every node it serves."""
        keys = Keys(self.namespace)
        tag = f":{worker.pid}:"

        async def joined() -> bool:
            assert worker.proc.poll() is None, f"worker exited early:\n{worker.tail()}"
            for node in self.cfg.nodes:
                try:
                    consumers = await redis.xinfo_consumers(keys.queue(node), GROUP)
                except Exception:
                    return False
                if not any(tag in _text(c["name"]) for c in consumers):
                    return False
            return True

        await until(joined, timeout, lambda: _msg(f"worker {worker.pid} not ready", worker))

    async def start_ready(self, redis: Redis, count: int = 1) -> list[Worker]:
        started = [self.start() for _ in range(count)]
        for w in started:
            await self.ready(w, redis)
        return started

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def kill(self, worker: Worker) -> None:
        """SIGKILL, as `kill -9`: no clean-up of any kind runs in the worker."""
        worker.proc.kill()
        worker.proc.wait()

    def freeze(self, worker: Worker) -> None:
        os.kill(worker.pid, signal.SIGSTOP)
        worker.stopped = True

    def thaw(self, worker: Worker) -> None:
        os.kill(worker.pid, signal.SIGCONT)
        worker.stopped = False

    async def stop(self, worker: Worker, timeout: float = 30.0) -> int:
        """SIGTERM (a clean stop: it settles or releases all it holds); its exit code."""
        if worker.stopped:
            self.thaw(worker)
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(worker.proc.wait), timeout)
        except TimeoutError:
            worker.proc.kill()
            worker.proc.wait()
            msg = _msg(f"worker {worker.pid} did not stop in {timeout}s", worker)
            raise AssertionError(msg) from None

    async def stop_all(self) -> dict[int, int]:
        """Stop every live worker cleanly; pid -> exit code."""
        codes = {}
        for w in self.alive():
            codes[w.pid] = await self.stop(w)
        return codes

    def destroy(self) -> None:
        """Last resort at the end of a test: nothing may outlive it."""
        for w in self.workers:
            if w.proc.poll() is None:
                if w.stopped:
                    os.kill(w.pid, signal.SIGCONT)
                w.proc.kill()
                w.proc.wait()


def _msg(text: str, worker: Worker) -> str:
    return f"{text}; its output ends:\n{worker.tail()}"


@contextlib.asynccontextmanager
async def fleet(url: str, namespace: str, cfg: WorkerConfig, log_dir: Path) -> AsyncIterator[Fleet]:
    """A Fleet whose processes are all gone after the block, whatever happened in it."""
    f = Fleet(url, namespace, cfg, log_dir)
    try:
        yield f
    finally:
        f.destroy()
