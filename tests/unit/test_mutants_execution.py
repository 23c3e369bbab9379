"""exospherehost/runtime/execution.py behaviour the mutmut survivors showed unpinned (issue 16):
the readable reasons of failed states, plain-XADD JSON decoding (README "Enqueue from any
client"), and the rate limit of internal-error logging (InternalErrors' docstring)."""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydantic import BaseModel, field_serializer, field_validator, model_validator

from exospherehost import BaseNode
from exospherehost.broker.codec import Envelope
from exospherehost.broker.streams import Broker
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.runtime import execution as execution_module
from exospherehost.runtime.execution import (
    _MAX_MESSAGE,
    _MAX_TRACEBACK,
    InternalErrors,
    NodeSpec,
    execute,
)
from exospherehost.runtime.outcomes import Completed, Failed, Job, Outcome, Pruned, Requeued
from exospherehost.secrets import SecretsError
from exospherehost.signals import PruneSignal, ReQueueAfterSignal


async def run(node: type[BaseNode], inputs: dict[str, Any], *, foreign: bool = False) -> Outcome:
    job = Job(
        node.__name__, f"q:{node.__name__}", b"1-1", {}, Envelope("s1", inputs, foreign=foreign)
    )
    return await execute(NodeSpec.of(node), job, None, {})


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class RaisesBrokenStr(BaseNode):
    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        raise BrokenStr


async def test_an_exception_whose_str_fails_is_still_named() -> None:
    outcome = await run(RaisesBrokenStr, {})
    assert isinstance(outcome, Failed) and not outcome.permanent, outcome
    assert outcome.error == "BrokenStr: <str() failed>"


class Raises(BaseNode):
    """Raises `to_raise` (kept, to compare with what the Failed outcome says)."""

    to_raise: BaseException = ValueError()

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        raise Raises.to_raise


async def failed_with(exc: BaseException) -> Failed:
    Raises.to_raise = exc
    outcome = await run(Raises, {})
    assert isinstance(outcome, Failed) and not outcome.permanent, outcome
    return outcome


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (ValueError(), "ValueError"),  # no message: the class alone
        (ValueError("m" * _MAX_MESSAGE), "ValueError: " + "m" * _MAX_MESSAGE),  # at the bound
        (
            ValueError("m" * (_MAX_MESSAGE + 500)),
            f"ValueError: {'m' * _MAX_MESSAGE}... ({_MAX_MESSAGE + 500} chars)",
        ),
    ],
)
async def test_the_error_is_class_and_message_bounded_in_length(
    exc: BaseException, error: str
) -> None:
    assert (await failed_with(exc)).error == error


async def test_the_traceback_is_the_exceptions_whole_traceback_with_its_chain() -> None:
    try:
        raise KeyError("cause")
    except KeyError as cause:
        exc = RuntimeError("effect")
        exc.__cause__ = cause
    outcome = await failed_with(exc)
    assert outcome.traceback == "".join(traceback.format_exception(exc))
    assert "KeyError: 'cause'" in outcome.traceback


async def test_a_traceback_up_to_the_bound_is_kept_whole() -> None:
    probe = await failed_with(ValueError("x"))
    frame_chars = len(probe.traceback) - 1  # all but the message
    outcome = await failed_with(ValueError("x" * (_MAX_TRACEBACK - frame_chars)))
    assert len(outcome.traceback) == _MAX_TRACEBACK and "left out" not in outcome.traceback


async def test_a_longer_traceback_keeps_its_head_and_tail_and_says_how_much_is_left_out() -> None:
    exc = ValueError("y" * (3 * _MAX_TRACEBACK))
    outcome = await failed_with(exc)
    full = "".join(traceback.format_exception(exc))
    cut = re.fullmatch(
        r"(.*)\n\.\.\. \((\d+) chars left out\) \.\.\.\n(.*)", outcome.traceback, re.S
    )
    assert cut, outcome.traceback[:200]
    head, left_out, tail = cut[1], int(cut[2]), cut[3]
    assert full.startswith(head) and head.startswith("Traceback (most recent call last)")
    assert full.endswith(tail) and tail.endswith("yyy\n")
    assert len(head) + len(tail) == _MAX_TRACEBACK and left_out == len(full) - _MAX_TRACEBACK


class UnformattableNotes(Exception):
    @property
    def __notes__(self) -> list[str]:  # traceback.format_exception reads it, and fails
        raise RuntimeError("notes unreadable")


async def test_an_exception_whose_traceback_cannot_be_formatted_is_described_instead() -> None:
    outcome = await failed_with(UnformattableNotes("odd"))
    assert outcome.error == outcome.traceback == "UnformattableNotes: odd"


class Strict(BaseNode):
    class Inputs(BaseModel):
        x: int
        y: dict[str, int] = {}

        @model_validator(mode="after")
        def not_seven(self) -> Strict.Inputs:
            if self.x == 7:
                raise ValueError("seven is not allowed")
            return self

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def test_invalid_inputs_name_every_bad_field_by_its_path() -> None:
    outcome = await run(Strict, {"x": "a", "y": {"k": "b"}})
    assert isinstance(outcome, Failed) and outcome.permanent, outcome
    bad_int = "Input should be a valid integer, unable to parse string as an integer"
    assert outcome.error == f"invalid inputs for Strict: x: {bad_int}; y.k: {bad_int}"


async def test_a_whole_model_validation_error_is_named_root() -> None:
    outcome = await run(Strict, {"x": 7})
    assert isinstance(outcome, Failed) and outcome.permanent, outcome
    assert outcome.error == "invalid inputs for Strict: <root>: Value error, seven is not allowed"


class Loose(BaseNode):
    class Inputs(BaseModel):
        maybe: int | None = 0
        flag: bool | str = ""
        anything: Any = None

    class Outputs(BaseModel):
        got: list[Any]

    async def execute(self) -> Outputs:
        return self.Outputs(got=[self.inputs.maybe, self.inputs.flag, self.inputs.anything])


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ({"maybe": "null", "flag": "true", "anything": "false"}, [None, True, False]),
        ({"maybe": "3", "flag": "false", "anything": '{"k":[1,2]}'}, [3, False, {"k": [1, 2]}]),
        ({"flag": "True", "anything": "nope"}, [0, "True", "nope"]),  # not JSON: verbatim
    ],
)
async def test_plain_xadd_values_are_json_decoded_where_the_field_is_not_a_str(
    raw: dict[str, str], want: list[Any]
) -> None:
    outcome = await run(Loose, raw, foreign=True)
    assert isinstance(outcome, Completed), outcome
    assert outcome.outputs == [{"got": want}]


async def test_a_retried_plain_entrys_non_string_inputs_are_taken_as_they_are() -> None:
    """An envelope flagged `f` carries the plain entry's inputs; one of another msgpack
    type (the envelope "carries inputs of any msgpack type") is validated as it is."""
    outcome = await run(Loose, {"maybe": 5, "flag": True, "anything": None}, foreign=True)
    assert isinstance(outcome, Completed), outcome
    assert outcome.outputs == [{"got": [5, True, None]}]


# -- InternalErrors: first time with the traceback, then once per `every` with a count ---
def _errors(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    out = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    caplog.clear()
    return out


def test_internal_errors_are_logged_once_then_at_most_once_per_period_with_a_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(execution_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    log = logging.getLogger("test.internal_errors")
    bugs = InternalErrors(log, every=60.0)
    first = "internal error while settling (a bug: the state fails, the worker goes on)"
    with caplog.at_level(logging.ERROR, logger=log.name):
        bugs.report("settling", ValueError("a"))
        assert _errors(caplog) == [(first, True)]
        for t in (1010.0, 1030.0):
            clock[0] = t
            bugs.report("settling", ValueError("b"))
        assert _errors(caplog) == []  # within the period: counted, not logged
        # Another place, or another class, is its own first time.
        bugs.report("reading", ValueError("c"))
        bugs.report("settling", KeyError("d"))
        assert [traced for _, traced in _errors(caplog)] == [True, True]
        clock[0] = 1060.0  # exactly one period after the first log
        bugs.report("settling", ValueError("e"))
        again = "internal error while settling again, %d times since logged: ValueError: %s"
        assert _errors(caplog) == [(again % (3, "e"), False)]
        clock[0] = 1070.0
        bugs.report("settling", ValueError("f"))
        assert _errors(caplog) == []  # the period starts again at the last log
        clock[0] = 1120.0
        bugs.report("settling", ValueError("g"))
        assert _errors(caplog) == [(again % (2, "g"), False)]


class Returns(BaseNode):
    """README: `execute` returns `Outputs`, a list of them (fan-out), or None (empty
    outputs; the next nodes run, as in the original SDK)."""

    class Inputs(BaseModel):
        n: int  # -1: None, 0..: a list of n, else one Outputs

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs | list[Outputs] | None:
        if self.inputs.n == -1:
            return None
        if self.inputs.n >= 0:
            return [self.Outputs(i=i) for i in range(self.inputs.n)]
        return self.Outputs(i=99)


@pytest.mark.parametrize(
    ("n", "outputs", "fanout"),
    [(-1, [{}], False), (0, [], True), (1, [{"i": 0}], True), (2, [{"i": 0}, {"i": 1}], True)],
)
async def test_a_list_of_outputs_is_a_fanout_and_none_one_empty_output(
    n: int, outputs: list[dict[str, int]], fanout: bool
) -> None:
    job = Job("Returns", "q:Returns", b"1-1", {}, Envelope("s1", {"n": n}))
    outcome = await execute(NodeSpec.of(Returns), job, None, {})
    assert outcome == Completed(job, outputs, fanout)
    assert outcome.job is job


async def test_one_outputs_is_one_result_not_a_fanout() -> None:
    outcome = await run(Returns, {"n": -2})
    assert isinstance(outcome, Completed) and outcome.outputs == [{"i": 99}], outcome
    assert not outcome.fanout


# -- graph runs, secrets, signals, the store: each outcome compared whole ---------------
GRAPH = cast(CompiledGraph, SimpleNamespace(nodes={"a": None}))


def graph_job(node: type[BaseNode], inputs: dict[str, Any], ident: str = "a") -> Job:
    env = Envelope("s1", inputs, "run1", "g", 3, ident)
    return Job(node.__name__, f"q:{node.__name__}", b"1-1", {}, env)


class Echo(BaseNode):
    """Reports what the Runtime set on it; `mode` makes it signal or use its store."""

    class Inputs(BaseModel):
        mode: str = ""

    class Outputs(BaseModel):
        state_id: str
        run_id: str | None
        secrets_is_model: bool

    async def execute(self) -> Outputs:
        if self.inputs.mode == "prune":
            raise PruneSignal({"why": "done"})
        if self.inputs.mode == "requeue":
            raise ReQueueAfterSignal(timedelta(seconds=1.5))
        if self.inputs.mode == "store":
            assert self.store is not None  # raises StoreUnavailable without a run / broker
        if self.inputs.mode == "sleep":
            await asyncio.sleep(0.5)
        if self.inputs.mode == "list":
            return [self.Outputs(state_id="x", run_id=None, secrets_is_model=True), 5]  # type: ignore[return-value]
        if self.inputs.mode == "tuple":
            return (self.Outputs(state_id="x", run_id=None, secrets_is_model=True),)  # type: ignore[return-value]
        return self.Outputs(
            state_id=self.state_id,
            run_id=self.run_id,
            secrets_is_model=isinstance(self.secrets, self.Secrets),
        )


async def test_a_graph_state_whose_graph_version_is_unknown_fails_permanently() -> None:
    job = graph_job(Echo, {})
    outcome = await execute(NodeSpec.of(Echo), job, None, {})
    assert outcome == Failed(job, "graph 'g' version 3 not found", "", permanent=True)


async def test_a_graph_state_naming_a_node_its_graph_lacks_fails_permanently() -> None:
    job = graph_job(Echo, {}, ident="zz")
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, {})
    assert outcome == Failed(job, "graph 'g' has no node 'zz'", "", permanent=True)


async def test_the_node_sees_its_state_run_secrets_and_store() -> None:
    job = graph_job(Echo, {})
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, {"unrelated": "v"})
    want = {"state_id": "s1", "run_id": "run1", "secrets_is_model": True}
    assert outcome == Completed(job, [want], False)
    # The store needs the Runtime's broker: given one, a graph state can use it.
    job = graph_job(Echo, {"mode": "store"})
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, {}, cast(Broker, object()))
    assert isinstance(outcome, Completed), outcome


async def test_the_store_outside_a_graph_run_fails_permanently() -> None:
    job = Job("Echo", "q:Echo", b"1-1", {}, Envelope("s1", {"mode": "store"}))
    outcome = await execute(NodeSpec.of(Echo), job, None, {})
    assert isinstance(outcome, Failed) and outcome.job is job and outcome.permanent is True
    assert outcome.error.startswith("StoreUnavailable: Echo.store is only available"), outcome
    assert "self.store" in outcome.traceback


async def test_signals_are_their_outcomes() -> None:
    job = graph_job(Echo, {"mode": "prune"})
    assert await execute(NodeSpec.of(Echo), job, GRAPH, {}) == Pruned(job, {"why": "done"})
    job = graph_job(Echo, {"mode": "requeue"})
    assert await execute(NodeSpec.of(Echo), job, GRAPH, {}) == Requeued(job, 1500)


@pytest.mark.parametrize("mode", ["list", "tuple"])
async def test_anything_but_outputs_a_list_of_them_or_none_fails_permanently(mode: str) -> None:
    job = graph_job(Echo, {"mode": mode})
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, {})
    got = "list" if mode == "list" else "tuple"
    reason = f"Echo.execute returned {got}; expected Echo.Outputs, a list of them, or None"
    assert outcome == Failed(job, reason, "", permanent=True)


async def test_a_timeout_bounds_the_execution() -> None:
    job = graph_job(Echo, {"mode": "sleep"})
    job.timeout = 0.05
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, {})
    assert isinstance(outcome, Failed) and outcome.job is job and not outcome.permanent
    assert outcome.error == "Echo.execute timed out after 0.05 s"


async def test_failures_of_node_code_carry_their_job() -> None:
    job = graph_job(Raises, {})
    Raises.to_raise = ValueError("v")
    outcome = await execute(NodeSpec.of(Raises), job, GRAPH, {})
    assert isinstance(outcome, Failed) and outcome.job is job, outcome
    job = graph_job(Strict, {"x": "a"})
    outcome = await execute(NodeSpec.of(Strict), job, GRAPH, {})
    bad_int = "Input should be a valid integer, unable to parse string as an integer"
    assert outcome == Failed(job, f"invalid inputs for Strict: x: {bad_int}", "", permanent=True)


class Secretive(BaseNode):
    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        token: str

    class Secrets(BaseModel):
        token: str

        @field_validator("token")
        @classmethod
        def known(cls, v: str) -> str:
            if v == "boom":
                raise KeyError("no such token")
            return v

    async def execute(self) -> Outputs:
        return self.Outputs(token=self.secrets.token)


async def test_a_node_gets_its_validated_secrets() -> None:
    job = graph_job(Secretive, {})
    outcome = await execute(NodeSpec.of(Secretive), job, GRAPH, {"token": "t", "other": "o"})
    assert outcome == Completed(job, [{"token": "t"}], False)


async def test_secrets_that_cannot_be_had_fail_only_nodes_that_declare_secrets() -> None:
    job = graph_job(Secretive, {})
    why = SecretsError("cannot decrypt")
    outcome = await execute(NodeSpec.of(Secretive), job, GRAPH, why)
    assert outcome == Failed(job, "secrets for Secretive: cannot decrypt", "", permanent=True)
    job = graph_job(Echo, {})
    outcome = await execute(NodeSpec.of(Echo), job, GRAPH, why)
    want = {"state_id": "s1", "run_id": "run1", "secrets_is_model": True}
    assert outcome == Completed(job, [want], False)


async def test_a_missing_secret_fails_permanently_naming_it() -> None:
    job = graph_job(Secretive, {})
    outcome = await execute(NodeSpec.of(Secretive), job, GRAPH, {})
    reason = "missing secrets for Secretive: token: Field required"
    assert outcome == Failed(job, reason, "", permanent=True)


async def test_a_secrets_validator_raising_anything_fails_permanently() -> None:
    job = graph_job(Secretive, {})
    outcome = await execute(NodeSpec.of(Secretive), job, GRAPH, {"token": "boom"})
    assert isinstance(outcome, Failed) and outcome.job is job and outcome.permanent is True
    assert outcome.error == "invalid secrets for Secretive: KeyError: 'no such token'"
    assert "known" in outcome.traceback


class Named(BaseNode):
    class Inputs(BaseModel):
        name: str
        n: int

    class Outputs(BaseModel):
        name: str
        n: int

    async def execute(self) -> Outputs:
        return self.Outputs(name=self.inputs.name, n=self.inputs.n)


async def test_a_plain_xadd_str_field_is_taken_verbatim_and_the_rest_decoded() -> None:
    outcome = await run(Named, {"name": "007", "n": "7"}, foreign=True)
    assert isinstance(outcome, Completed) and outcome.outputs == [{"name": "007", "n": 7}]


class Picky(BaseNode):
    class Inputs(BaseModel):
        data: dict[str, Any] = {}
        x: int = 0

        @field_validator("x")
        @classmethod
        def lookup(cls, v: int) -> int:
            if v == 1:
                raise KeyError("no such x")
            return v

    class Outputs(BaseModel):
        x: int

        @field_serializer("x")
        def ser(self, v: int) -> int:
            if v == 2:
                raise RuntimeError("cannot serialise 2")
            return v

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def test_input_decoding_validating_and_serialising_failures_carry_their_job() -> None:
    job = graph_job(Picky, {"data": '{"a":' * 100_000 + "1" + "}" * 100_000})
    job.env.foreign = True
    outcome = await execute(NodeSpec.of(Picky), job, GRAPH, {})
    assert isinstance(outcome, Failed) and outcome.job is job and outcome.permanent, outcome
    assert outcome.error.startswith("invalid inputs for Picky: data: RecursionError")
    assert outcome.traceback == ""  # the field names it: no traceback of our decoder
    job = graph_job(Picky, {"x": 1})
    outcome = await execute(NodeSpec.of(Picky), job, GRAPH, {})
    assert isinstance(outcome, Failed) and outcome.job is job and outcome.permanent, outcome
    assert outcome.error == "invalid inputs for Picky: KeyError: 'no such x'"
    job = graph_job(Picky, {"x": 2})
    outcome = await execute(NodeSpec.of(Picky), job, GRAPH, {})
    assert isinstance(outcome, Failed) and outcome.job is job and not outcome.permanent, outcome
    assert outcome.error.startswith("Picky.Outputs cannot be serialised: ")
    assert outcome.error.endswith("RuntimeError: cannot serialise 2")
