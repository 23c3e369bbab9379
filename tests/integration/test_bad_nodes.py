"""Every execution ends in an outcome, whatever node code or (de)serialisation raises
(invariant 7), on real Runtimes against the real redis-server: a bad state among many
good ones is dead-lettered (after its retries, where retrying can help) with a reason
naming the error, every good state finishes, nothing stays pending, and the worker goes
on serving. Also: node timeouts, and stop() while Redis is unreachable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, field_serializer, field_validator

from exospherehost import (
    BaseNode,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
)
from exospherehost.client.deadletters import DeadLetter
from exospherehost.runtime.resilience import OutageLog
from exospherehost.testing.server import PrivateServer
from tests.integration.helpers import running, start_worker

RETRY_ONCE = RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)


class Boom(BaseException):
    """A custom BaseException subclass, not an Exception."""


def _dive(n: int) -> int:
    return _dive(n + 1) + 1


class Picky(BaseNode):
    """Succeeds for mode "ok"; every other mode fails in its own way."""

    runs: ClassVar[Counter[str]] = Counter()

    class Inputs(BaseModel):
        i: int
        mode: str = "ok"

        @field_validator("mode")
        @classmethod
        def lookup(cls, mode: str) -> str:
            if mode == "validator":
                raise KeyError("no such mode")  # not a ValueError: pydantic lets it through
            return mode

    class Outputs(BaseModel):
        i: int
        mode: str
        blob: Any = None

        @field_serializer("mode")
        def ser(self, mode: str) -> str:
            if mode == "serializer":
                raise RuntimeError("serializer broke")
            return mode

    async def execute(self) -> Outputs:
        mode = self.inputs.mode
        Picky.runs[mode] += 1
        await asyncio.sleep(0)  # fail after a suspension, as real node code would
        if mode in RAISED:
            raise RAISED[mode]()
        if mode == "recursion":
            _dive(0)
        blob = object() if mode == "unpackable" else None  # msgpack cannot carry it
        return self.Outputs(i=self.inputs.i, mode=mode, blob=blob)


RAISED: dict[str, type[BaseException]] = {
    "value": ValueError,
    "cancelled": asyncio.CancelledError,
    "generator_exit": GeneratorExit,
    "keyboard": KeyboardInterrupt,
    "system_exit": SystemExit,
    "custom": Boom,
    "memory": MemoryError,
}
# mode -> (what the dead letter's error starts with or contains, executions, attempts)
BAD: dict[str, tuple[str, int, int]] = {
    **{mode: (cls.__name__, 2, 2) for mode, cls in RAISED.items()},
    "recursion": ("RecursionError: maximum recursion depth exceeded", 2, 2),
    "serializer": ("Picky.Outputs cannot be serialised", 2, 2),
    "validator": ("invalid inputs for Picky: KeyError: 'no such mode'", 0, 1),
    "unpackable": ("cannot settle Completed: value is not msgpack-serialisable", 1, 1),
}


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    Picky.runs = Counter()


async def _dead_letters(sm: StateManager, n: int) -> list[DeadLetter]:
    """All of the namespace's dead letters, once there are `n` (they are written in the
    same settle as the FAILED result, so this is a formality)."""
    dead = await sm.dead_letters(count=1000)
    assert len(dead) == n, [d.error for d in dead]
    return dead


async def _nothing_pending(sm: StateManager, node: str) -> None:
    assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}


async def test_a_bad_state_of_each_kind_among_good_ones_is_dead_lettered_and_the_rest_done(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    # Fewer executors than kinds of bad states: had any of them killed its executor,
    # the good states behind it would never run.
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Picky],
        redis_url=redis_url,
        workers=4,
        default_retry_policy=RETRY_ONCE,
    )
    inputs: list[dict[str, Any]] = [{"i": i} for i in range(300)]
    for k, mode in enumerate(BAD):
        inputs.insert(20 * k + 10, {"i": -1, "mode": mode})
    async with running(rt):
        ids = await sm.enqueue_many("Picky", inputs)
        results = await sm.wait_for_states("Picky", ids, timeout=60)
        # The worker still serves.
        more = await sm.enqueue_many("Picky", [{"i": i} for i in range(50)])
        later = await sm.wait_for_states("Picky", more, timeout=30)
    mode_of = {sid: item.get("mode", "ok") for sid, item in zip(ids, inputs, strict=True)}
    good = [r for sid, r in results.items() if mode_of[sid] == "ok"] + list(later.values())
    assert len(good) == 350 and {r.status for r in good} == {"SUCCEEDED"}
    assert Picky.runs["ok"] == 350
    dead = {d.state_id: d for d in await _dead_letters(sm, len(BAD))}
    for sid, mode in mode_of.items():
        if mode == "ok":
            continue
        expected, executions, attempts = BAD[mode]
        assert results[sid].status == "FAILED", (mode, results[sid])
        letter = dead[sid]
        assert expected in letter.error, (mode, letter.error)
        assert letter.attempts == attempts, (mode, letter.attempts)
        assert Picky.runs[mode] == executions, (mode, Picky.runs)
        if mode != "validator":  # a validation error needs no traceback; the rest keep one
            assert letter.traceback.startswith("Traceback"), (mode, letter.traceback)
    await _nothing_pending(sm, "Picky")


class Doc(BaseNode):
    class Inputs(BaseModel):
        name: str
        data: dict[str, Any]

    class Outputs(BaseModel):
        name: str

    async def execute(self) -> Outputs:
        return self.Outputs(name=self.inputs.name)


async def test_deeply_nested_json_from_plain_xadds_does_not_stall_the_workers(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    q = sm.keys.queue("Doc")
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000  # RecursionError in json decoding
    bad = [(await sm.client.xadd(q, {"name": "deep", "data": deep})).decode() for _ in range(40)]
    good = [
        (await sm.client.xadd(q, {"name": f"g{i}", "data": '{"k": 1}'})).decode()
        for i in range(200)
    ]
    rt = Runtime(namespace=namespace, name="t", nodes=[Doc], redis_url=redis_url, workers=32)
    async with running(rt):
        results = await sm.wait_for_states("Doc", bad + good, timeout=60)
        more = await sm.enqueue_many("Doc", [{"name": "after", "data": {}}] * 10)
        assert {r.status for r in (await sm.wait_for_states("Doc", more)).values()} == {"SUCCEEDED"}
    assert {results[s].status for s in good} == {"SUCCEEDED"}
    assert {results[s].status for s in bad} == {"FAILED"}
    dead = await _dead_letters(sm, 40)
    assert sorted(d.state_id for d in dead) == sorted(bad)
    for d in dead:
        assert d.error.startswith("invalid inputs for Doc: data: RecursionError"), d.error
        assert d.attempts == 1  # bad inputs: permanent, no retries
        assert d.original[b"data"] == deep.encode()  # the entry kept byte for byte
    await _nothing_pending(sm, "Doc")


class SelfCancel(BaseNode):
    """Raises CancelledError from node code (an inner task cancelled, say) for i < 0."""

    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        if self.inputs.i < 0:
            SelfCancel.runs += 1
            inner = asyncio.ensure_future(asyncio.sleep(30))
            inner.cancel()
            await inner  # raises CancelledError here; nobody cancelled the executor
        return self.Outputs(i=self.inputs.i)


async def test_a_cancelled_error_from_node_code_is_a_failure_not_a_release(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    SelfCancel.runs = 0
    policy = RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)

    def runtime(name: str) -> Runtime:
        return Runtime(
            namespace=namespace,
            name=name,
            nodes=[SelfCancel],
            redis_url=redis_url,
            workers=32,
            default_retry_policy=policy,
        )

    async with running(runtime("a")), running(runtime("b")):
        inputs = [{"i": i} for i in range(300)]
        inputs.insert(5, {"i": -1})
        ids = await sm.enqueue_many("SelfCancel", inputs)
        results = await sm.wait_for_states("SelfCancel", ids, timeout=60)
    bad = ids[5]
    assert results[bad].status == "FAILED"
    assert results[bad].error is not None and results[bad].error.startswith("CancelledError")
    assert {r.status for s, r in results.items() if s != bad} == {"SUCCEEDED"}
    # Retried per policy, then dead-lettered: not handed back as a fresh entry forever.
    assert SelfCancel.runs == 3
    [dead] = await _dead_letters(sm, 1)
    assert dead.state_id == bad and dead.attempts == 3 and dead.deliveries == 1
    assert "CancelledError" in dead.traceback
    await _nothing_pending(sm, "SelfCancel")


class Sleeper(BaseNode):
    timeout: ClassVar[float | None] = 0.3
    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        seconds: float

    class Outputs(BaseModel):
        slept: float

    async def execute(self) -> Outputs:
        if self.inputs.seconds > 1:
            Sleeper.runs += 1
        await asyncio.sleep(self.inputs.seconds)
        return self.Outputs(slept=self.inputs.seconds)


async def test_an_execution_past_the_node_timeout_is_cancelled_and_retried_per_policy(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    Sleeper.runs = 0
    rt = Runtime(
        namespace=namespace,
        name="t",
        nodes=[Sleeper],
        redis_url=redis_url,
        workers=2,
        default_retry_policy=RETRY_ONCE,
    )
    started = time.monotonic()
    async with running(rt):
        inputs = [{"seconds": 0.0}] * 100
        inputs.insert(3, {"seconds": 60.0})
        ids = await sm.enqueue_many("Sleeper", inputs)
        results = await sm.wait_for_states("Sleeper", ids, timeout=30)
    assert time.monotonic() - started < 20  # not the 2 x 60 s the node asked for
    slow = ids[3]
    assert results[slow].status == "FAILED"
    assert results[slow].error == "Sleeper.execute timed out after 0.3 s"
    assert {r.status for s, r in results.items() if s != slow} == {"SUCCEEDED"}
    assert Sleeper.runs == 2
    [dead] = await _dead_letters(sm, 1)
    assert dead.attempts == 2 and "sleep" in dead.traceback  # where it was cancelled
    await _nothing_pending(sm, "Sleeper")


class Gated(BaseNode):
    gate: ClassVar[asyncio.Event]
    started: ClassVar[asyncio.Queue[str]]
    runs: ClassVar[Counter[str]]

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        Gated.runs[self.state_id] += 1
        Gated.started.put_nowait(self.state_id)
        await Gated.gate.wait()
        return self.Outputs(i=self.inputs.i)


async def test_stop_while_redis_is_unreachable_returns_in_bound_and_loses_nothing(
    namespace: str,
) -> None:
    Gated.gate, Gated.started, Gated.runs = asyncio.Event(), asyncio.Queue(), Counter()
    server = PrivateServer(appendonly=True, appendfsync="always")
    info = server.start()
    sm = StateManager(namespace, redis_url=info.url)
    grace = 1.0
    try:
        ids = await sm.enqueue_many("Gated", [{"i": i} for i in range(20)])
        rt = Runtime(
            namespace=namespace,
            name="a",
            nodes=[Gated],
            redis_url=info.url,
            workers=5,
            grace_period=grace,
            visibility_timeout=1.0,
        )
        task = rt.start()
        assert task is not None
        for _ in range(5):  # five executing, the rest read and queued behind them
            await asyncio.wait_for(Gated.started.get(), 10)
        server.kill()
        rt.stop()
        Gated.gate.set()  # they finish within the grace period, but cannot be settled
        stopped = time.monotonic()
        await asyncio.wait_for(task, grace + 15)  # bounded, not forever
        took = time.monotonic() - stopped
        assert took < grace + 8, f"stop() with Redis down took {took:.1f} s"
        # Nothing lost: the unsettled states stayed pending and another worker takes them.
        server.restart()
        rt2 = Runtime(
            namespace=namespace,
            name="b",
            nodes=[Gated],
            redis_url=info.url,
            visibility_timeout=1.0,
        )
        async with running(rt2):
            results = await sm.wait_for_states("Gated", ids, timeout=30)
        assert {r.status for r in results.values()} == {"SUCCEEDED"}
        assert len(await sm.outputs("Gated")) == 20  # each settled once
        assert await sm.pending("Gated") == {"length": 0, "pending": 0, "delayed": 0}
        assert sum(Gated.runs.values()) >= 20 and set(Gated.runs) == set(ids)
    finally:
        await sm.close()
        server.stop()


async def test_sigterm_while_redis_is_down_exits_cleanly_within_the_grace_period(
    namespace: str,
) -> None:
    server = PrivateServer()
    info = server.start()
    sm = StateManager(namespace, redis_url=info.url)
    grace = 3.0
    proc = start_worker(info.url, namespace, EXO_TEST_NODES="SampleNode", EXO_TEST_GRACE="3")
    try:
        ids = await sm.enqueue_many("SampleNode", [{"name": "x", "data": {}}] * 20)
        await sm.wait_for_states("SampleNode", ids, timeout=30)  # it serves
        await sm.close()
        server.kill()
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=grace + 20)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM with Redis down: the process did not exit")
        took = time.monotonic() - stopped
        assert proc.returncode == 0, out
        assert "runtime stopped cleanly" in out
        assert took < grace + 8, f"SIGTERM with Redis down took {took:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        await sm.close()
        server.stop()


async def test_a_runtime_stopped_before_redis_was_ever_reachable_ends_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Runtime whose Redis never answered (its start-up checks retrying through the
    outage) and that is then stopped ends without an error: it read nothing, so nothing
    is left anywhere. It used to raise the stop's ShutdownAbandoned out of start()."""
    server = PrivateServer()
    url = server.start().url
    server.stop()  # a port that answered once and now refuses: an outage from the start
    seen = asyncio.Event()
    down = OutageLog.down

    def noted(log: OutageLog, exc: BaseException) -> None:
        down(log, exc)
        seen.set()

    monkeypatch.setattr(OutageLog, "down", noted)
    rt = Runtime(namespace="nowhere", name="t", nodes=[Gated], redis_url=url, grace_period=0.5)
    task = rt.start()
    assert task is not None
    await asyncio.wait_for(seen.wait(), 10)
    began = time.monotonic()
    rt.stop()
    await asyncio.wait_for(task, 15)  # returns, raising nothing
    assert time.monotonic() - began < 10
