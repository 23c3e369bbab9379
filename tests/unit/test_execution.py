"""execute(): every execution ends in an Outcome whatever node code, input decoding,
validation or output serialisation raise (BaseException included), except the worker's
own shutdown cancellation; per-node / per-job timeouts; and the worker's executor loop
surviving bugs in its own bookkeeping (a stub broker stands in for Redis)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
from pydantic import BaseModel, field_serializer, field_validator

from exospherehost import BaseNode
from exospherehost.broker.codec import Envelope
from exospherehost.broker.keys import Keys
from exospherehost.broker.streams import Broker
from exospherehost.graphstore import GraphCache
from exospherehost.node import node_problems
from exospherehost.runtime.execution import NodeSpec, execute
from exospherehost.runtime.outcomes import Completed, Failed, Job, Outcome, Released
from exospherehost.runtime.settle import SettleConfig
from exospherehost.runtime.worker import Worker


class Boom(BaseException):
    """A custom BaseException subclass: not an Exception."""


RAISES: dict[str, BaseException] = {
    "value": ValueError("bad value"),
    "cancelled": asyncio.CancelledError("node cancelled itself"),
    "generator_exit": GeneratorExit("gen"),
    "keyboard": KeyboardInterrupt("ctrl-c in node"),
    "system_exit": SystemExit(3),
    "custom": Boom("custom base exception"),
    "recursion": RecursionError("maximum recursion depth exceeded"),
    "memory": MemoryError("out of memory"),
}


class Raiser(BaseNode):
    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        await asyncio.sleep(0)  # raise after a suspension, as real node code would
        raise RAISES[self.inputs.mode]


class Deep(BaseNode):
    class Inputs(BaseModel):
        data: dict[str, Any]

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        return self.Outputs(ok=True)


class BadValidator(BaseNode):
    class Inputs(BaseModel):
        x: int

        @field_validator("x")
        @classmethod
        def lookup(cls, v: int) -> int:
            if v == 1:
                raise KeyError("no such x")
            if v == 2:
                raise Boom("validator boom")
            return v

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


class BadSerializer(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

        @field_serializer("x")
        def ser(self, v: int) -> int:
            raise RuntimeError(f"cannot serialise {v}")

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


class Sleepy(BaseNode):
    timeout: ClassVar[float | None] = 0.05

    class Inputs(BaseModel):
        seconds: float
        own_timeout: bool = False

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        if self.inputs.own_timeout:
            raise TimeoutError("the node's own timeout")
        await asyncio.sleep(self.inputs.seconds)
        return self.Outputs(ok=True)


class Unbounded(Sleepy):
    timeout: ClassVar[float | None] = None


def job_of(node: type[BaseNode], inputs: dict[str, Any], *, foreign: bool = False) -> Job:
    env = Envelope("s1", inputs, foreign=foreign)
    return Job(node.__name__, f"q:{node.__name__}", b"1-1", {}, env)


async def run(node: type[BaseNode], inputs: dict[str, Any], **kw: Any) -> Outcome:
    job = job_of(node, inputs, foreign=kw.pop("foreign", False))
    for k, v in kw.items():
        setattr(job, k, v)
    return await execute(NodeSpec.of(node), job, None, {})


@pytest.mark.parametrize("mode", list(RAISES))
async def test_whatever_node_code_raises_is_a_retryable_failure_naming_the_class(
    mode: str,
) -> None:
    outcome = await run(Raiser, {"mode": mode})
    assert isinstance(outcome, Failed), outcome
    name = type(RAISES[mode]).__name__
    assert outcome.error.startswith(name), outcome.error
    assert not outcome.permanent  # node code: retried per policy
    assert outcome.traceback.startswith("Traceback") and name in outcome.traceback


async def test_the_workers_own_shutdown_cancellation_propagates() -> None:
    started = asyncio.Event()

    class Hang(BaseNode):
        class Outputs(BaseModel):
            ok: bool

        async def execute(self) -> Outputs:
            started.set()
            await asyncio.Event().wait()
            return self.Outputs(ok=True)

    task = asyncio.create_task(execute(NodeSpec.of(Hang), job_of(Hang, {}), None, {}))
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_json_nested_too_deeply_is_a_permanent_input_error_naming_the_field() -> None:
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    outcome = await run(Deep, {"data": deep}, foreign=True)
    assert isinstance(outcome, Failed) and outcome.permanent, outcome
    assert outcome.error.startswith("invalid inputs for Deep: data:"), outcome.error
    assert "RecursionError" in outcome.error
    # A shallow JSON value of the same field still decodes.
    ok = await run(Deep, {"data": json.dumps({"a": {"b": 1}})}, foreign=True)
    assert isinstance(ok, Completed), ok


@pytest.mark.parametrize(("x", "name"), [(1, "KeyError"), (2, "Boom")])
async def test_an_inputs_validator_raising_anything_is_a_permanent_input_error(
    x: int, name: str
) -> None:
    outcome = await run(BadValidator, {"x": x})
    assert isinstance(outcome, Failed) and outcome.permanent, outcome
    assert outcome.error.startswith(f"invalid inputs for BadValidator: {name}"), outcome.error
    assert "lookup" in outcome.traceback  # where it was raised


async def test_an_outputs_serializer_raising_is_a_failure_naming_the_error() -> None:
    outcome = await run(BadSerializer, {"x": 4})
    assert isinstance(outcome, Failed), outcome
    assert "BadSerializer.Outputs" in outcome.error and "cannot serialise 4" in outcome.error
    assert "RuntimeError" in outcome.error and "ser" in outcome.traceback


async def test_a_node_timeout_cancels_the_execution_and_fails_it_retryably() -> None:
    outcome = await run(Sleepy, {"seconds": 30})
    assert isinstance(outcome, Failed) and not outcome.permanent, outcome
    assert outcome.error == "Sleepy.execute timed out after 0.05 s"
    assert "sleep" in outcome.traceback  # where it was when cancelled
    assert isinstance(await run(Sleepy, {"seconds": 0}), Completed)


async def test_a_nodes_own_timeout_error_is_not_reported_as_a_timeout() -> None:
    outcome = await run(Sleepy, {"seconds": 0, "own_timeout": True})
    assert isinstance(outcome, Failed)
    assert outcome.error == "TimeoutError: the node's own timeout"


async def test_the_job_timeout_and_the_node_timeout_the_smaller_wins() -> None:
    shorter = await run(Sleepy, {"seconds": 30}, timeout=0.02)
    assert isinstance(shorter, Failed) and shorter.error.endswith("after 0.02 s"), shorter
    longer = await run(Sleepy, {"seconds": 30}, timeout=60.0)  # the node's 0.05 s wins
    assert isinstance(longer, Failed) and longer.error.endswith("after 0.05 s"), longer
    only_job = await run(Unbounded, {"seconds": 30}, timeout=0.03)
    assert isinstance(only_job, Failed) and only_job.error.endswith("after 0.03 s"), only_job
    assert isinstance(await run(Unbounded, {"seconds": 0.01}), Completed)


def test_node_spec_carries_the_timeout() -> None:
    assert NodeSpec.of(Sleepy).timeout == 0.05
    assert NodeSpec.of(Unbounded).timeout is None


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan"), float("inf")])
def test_node_timeout_must_be_a_positive_number_or_none(bad: object) -> None:
    cls = type("T", (Unbounded,), {"timeout": bad})
    [problem] = node_problems(cls)
    assert "T.timeout" in problem and repr(bad) in problem


@pytest.mark.parametrize("good", [None, 2, 0.5])
def test_node_timeouts_that_are_accepted(good: object) -> None:
    assert node_problems(type("T", (Unbounded,), {"timeout": good})) == []


# -- the worker's executor loop -----------------------------------------------------------
KEYS = Keys("ns")


class Ok(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


def make_worker() -> Worker:
    broker = SimpleNamespace(keys=KEYS, client=SimpleNamespace(connection_pool=None))
    cfg = SettleConfig(keys=KEYS, graphs={})
    specs = [NodeSpec.of(Ok), NodeSpec.of(Raiser)]
    return Worker(cast(Broker, broker), specs, "c", cast(GraphCache, None), cfg)


def ok_job(i: int) -> Job:
    return Job("Ok", KEYS.queue("Ok"), f"1-{i}".encode(), {}, Envelope(f"s{i}", {"x": i}))


async def outcomes_of(worker: Worker, executor: asyncio.Task[None], n: int) -> list[Outcome]:
    """The first `n` outcomes; fails at once if the executor died on the way."""
    async with asyncio.timeout(5):
        while len(worker._outcomes) < n:
            worker._has_outcomes.clear()
            woke = asyncio.ensure_future(worker._has_outcomes.wait())
            await asyncio.wait([woke, executor], return_when=asyncio.FIRST_COMPLETED)
            woke.cancel()
            if executor.done():
                raise AssertionError(f"the executor died: {executor.exception()!r}")
    return worker._outcomes


async def test_the_executor_survives_a_bug_in_the_stats(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker()

    def broken(*_: object) -> None:
        raise ZeroDivisionError("stats bug")

    monkeypatch.setattr(worker.stats, "executed", broken)
    executor = asyncio.create_task(worker._executor())
    for i in range(3):
        worker._queue.put(ok_job(i))
    outcomes = await outcomes_of(worker, executor, 3)
    # The stats are bookkeeping: the outcome itself still goes to its settle.
    assert [type(o) for o in outcomes] == [Completed] * 3
    assert not executor.done()
    [logged] = [r for r in caplog.records if r.exc_info]  # once, not once per state
    assert logged.levelname == "ERROR" and "ZeroDivisionError" in (logged.exc_text or "")
    worker._queue.close()
    async with asyncio.timeout(5):
        await executor  # ends normally once the queue is closed


async def test_the_executor_survives_a_bug_in_the_workers_execute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker()
    real = worker._execute

    async def buggy(job: Job) -> Outcome:
        if job.env.state_id == "s1":
            raise AttributeError("bug in the unite inputs")
        if job.env.state_id == "s2":
            raise asyncio.CancelledError  # not a shutdown: nobody cancelled the executor
        return await real(job)

    monkeypatch.setattr(worker, "_execute", buggy)
    executor = asyncio.create_task(worker._executor())
    for i in range(4):
        worker._queue.put(ok_job(i))
    outcomes = await outcomes_of(worker, executor, 4)
    by_state = {o.job.env.state_id: o for o in outcomes if not isinstance(o, Released)}
    assert isinstance(by_state["s0"], Completed) and isinstance(by_state["s3"], Completed)
    for sid, cls in (("s1", "AttributeError"), ("s2", "CancelledError")):
        bug = by_state[sid]
        assert isinstance(bug, Failed) and bug.permanent, bug
        assert cls in bug.error and bug.traceback, bug
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)
    assert not executor.done()
    worker._queue.close()
    async with asyncio.timeout(5):
        await executor


async def test_shutdown_cancellation_releases_the_job_and_ends_the_executor() -> None:
    worker = make_worker()
    started = asyncio.Event()

    async def hang(job: Job) -> Outcome:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    worker._execute = hang  # type: ignore[method-assign]
    executor = asyncio.create_task(worker._executor())
    worker._queue.put(ok_job(0))
    async with asyncio.timeout(5):
        await started.wait()
    executor.cancel()
    with pytest.raises(asyncio.CancelledError):
        await executor
    [released] = worker._outcomes
    assert isinstance(released, Released) and released.job.env.state_id == "s0"
