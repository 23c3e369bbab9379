"""Pure planning behind the scripts' failure handling: released and redriven states keep
their ids and carry their deliveries, the poison limit applies at release, refused or
failed settles become dead letters, and the worker's fallback settles each state for
real (no Redis: the broker is a stub)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import pytest
from pydantic import BaseModel
from redis.exceptions import ResponseError

from exospherehost import BaseNode
from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD, Keys
from exospherehost.broker.plan import FAILED, REFUSED, XADD, ZADD_DELAYED, SettleFlags, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.client.deadletters import DeadLetter, redrive_fields
from exospherehost.graphstore import GraphCache
from exospherehost.runtime.execution import NodeSpec
from exospherehost.runtime.outcomes import Completed, Failed, Job, Outcome, Released, Requeued
from exospherehost.runtime.settle import (
    SettleConfig,
    as_failure,
    plan_dead_letters,
    plan_settle,
    released_envelope,
)
from exospherehost.runtime.worker import Worker

KEYS = Keys("ns")
CFG = SettleConfig(keys=KEYS, graphs={}, clock=lambda: 1.0)
Q = KEYS.queue("N")


def _plain_job(entry_id: bytes = b"5-1", deliveries: int = 1) -> Job:
    fields = {b"x": b"1", b"name": b"Al"}
    return Job("N", Q, entry_id, fields, decode(entry_id, fields), deliveries)


def _env_job(env: Envelope, entry_id: bytes = b"6-1", deliveries: int = 1) -> Job:
    fields = {ENVELOPE_FIELD.encode(): encode(env)}
    return Job("N", Q, entry_id, fields, decode(entry_id, fields), deliveries)


def _ops(plan: SettlePlan) -> list[list[Any]]:
    [item] = plan.items
    ops: list[list[Any]] = item[2]
    return ops


def _xadd_fields(plan: SettlePlan, op: list[Any]) -> tuple[str, dict[Any, Any]]:
    assert op[0] == XADD
    flat = op[3:]
    return plan.keys[op[1] - 1], dict(zip(flat[::2], flat[1::2], strict=True))


def test_a_released_plain_entry_goes_back_as_one_envelope_under_its_id() -> None:
    env = decode(b"1-1", {ENVELOPE_FIELD.encode(): released_envelope(_plain_job(deliveries=2))})
    assert env.state_id == "5-1" and env.foreign and env.deliveries == 2
    assert env.inputs == {"x": "1", "name": "Al"}


def test_released_deliveries_add_up_over_releases() -> None:
    job = _env_job(Envelope("s", {"x": 1}, deliveries=2), deliveries=3)
    env = decode(b"1-1", {ENVELOPE_FIELD.encode(): released_envelope(job)})
    assert (env.state_id, env.inputs, env.deliveries) == ("s", {"x": 1}, 5)


def test_release_is_planned_as_one_envelope_field_however_wide_the_entry() -> None:
    fields = {f"f{i}".encode(): b"v" for i in range(5000)}
    job = Job("N", Q, b"7-1", fields, decode(b"7-1", fields))
    plan = plan_settle([Released(job)], CFG)
    key, added = _xadd_fields(plan, _ops(plan)[0])
    assert key == Q and list(added) == [ENVELOPE_FIELD]
    assert decode(b"8-1", {ENVELOPE_FIELD.encode(): added[ENVELOPE_FIELD]}).state_id == "7-1"


def test_the_poison_limit_applies_at_release() -> None:
    below = _env_job(Envelope("s", {}, deliveries=1), deliveries=1)
    plan = plan_settle([Released(below)], CFG, max_deliveries=3)
    assert _xadd_fields(plan, _ops(plan)[0])[0] == Q  # released once more
    at = _env_job(Envelope("s", {}, deliveries=2), deliveries=1)
    plan = plan_settle([Released(at)], CFG, max_deliveries=3)
    key, dead = _xadd_fields(plan, _ops(plan)[0])
    assert key == KEYS.dead() and dead["deliveries"] == 3
    assert "delivered 3 times without being settled" in dead["error"]
    assert msgpack.unpackb(dead["original"]) == {ENVELOPE_FIELD.encode(): encode(at.env)}
    # No limit given (0): released whatever the count.
    plan = plan_settle([Released(at)], CFG)
    assert _xadd_fields(plan, _ops(plan)[0])[0] == Q


def test_settled_states_start_their_delivery_count_afresh() -> None:
    job = _env_job(Envelope("s", {}, deliveries=2))
    plan = plan_settle([Requeued(job, 10)], CFG)
    [op] = _ops(plan)
    assert op[0] == ZADD_DELAYED and decode(b"1-1", {b"_exo": op[3]}).deliveries == 0
    plan = plan_settle([Failed(job, "boom", "")], CFG)  # retried (default policy)
    [op] = _ops(plan)
    assert op[0] == ZADD_DELAYED and decode(b"1-1", {b"_exo": op[3]}).deliveries == 0


def test_dead_letters_of_refused_settles() -> None:
    job = _plain_job()
    failure = as_failure(Completed(job, [{}], False), "cannot settle Completed: why")
    assert failure is not None and failure.permanent and failure.error.endswith("why")
    pending = plan_dead_letters([(Completed(job, [{}], False), "why")], CFG, acked=False)
    acked = plan_dead_letters([(Completed(job, [{}], False), "why")], CFG, acked=True)
    assert pending.items[0][1] == b"5-1" and acked.items[0][1] == ""  # '' = no ack
    for plan in (pending, acked):
        key, dead = _xadd_fields(plan, _ops(plan)[0])
        assert key == KEYS.dead() and dead["state"] == "5-1" and dead["error"] == "why"


def test_settle_flags_parse_errors() -> None:
    flags = SettleFlags.parse([1, b"4 key k holds a string, not a hash", 0, b"3 ERR boom"])
    assert flags == [1, REFUSED, 0, FAILED]
    assert flags.errors == {1: "key k holds a string, not a hash", 3: "ERR boom"}


def _letter(original: dict[bytes, bytes], state: str = "9-1") -> DeadLetter:
    return DeadLetter("1-1", "N", state, None, None, 1, 1, "e", "", 0, state, original)


def test_redrive_fields_keep_the_state_id() -> None:
    [(k, raw)] = redrive_fields(_letter({b"x": b"1"})).items()
    env = decode(b"2-2", {ENVELOPE_FIELD.encode(): cast(bytes, raw)})
    assert k == ENVELOPE_FIELD and env.state_id == "9-1" and env.foreign
    spent = Envelope("s", {"x": 1}, attempt=3, deliveries=4)
    [raw] = redrive_fields(_letter({ENVELOPE_FIELD.encode(): encode(spent)})).values()
    env = decode(b"2-2", {ENVELOPE_FIELD.encode(): cast(bytes, raw)})
    assert (env.state_id, env.attempt, env.deliveries) == ("s", 0, 0)


def test_redrive_fields_of_undecodable_entries() -> None:
    assert redrive_fields(_letter({b"x": b"\xff"})) == {b"x": b"\xff"}  # back as it was
    with pytest.raises(ValueError, match="more than can be re-added"):
        redrive_fields(_letter({f"k{i}".encode(): b"\xff" for i in range(4000)}))
    with pytest.raises(ValueError, match="no original entry"):
        redrive_fields(_letter({}))


# -- the worker's fallback ------------------------------------------------------------------


class Noop(BaseNode):
    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs()


class RefusingBroker:
    """Refuses any call holding entry `bad` as a whole (as Redis does a script it cannot
    run), then answers each item as the script would."""

    def __init__(self, bad: set[bytes], refuse_dead_letters: bool) -> None:
        self.keys = KEYS
        self.client = SimpleNamespace(connection_pool=None)
        self.bad = bad
        self.refuse_dead_letters = refuse_dead_letters
        self.calls: list[list[Any]] = []

    async def settle(self, plan: SettlePlan, lane: object) -> SettleFlags:
        self.calls.append([item[1] for item in plan.items])
        for item in plan.items:
            dead_letter_only = all(plan.keys[op[1] - 1] == KEYS.dead() for op in item[2])
            if item[1] in self.bad and (self.refuse_dead_letters or not dead_letter_only):
                raise ResponseError("ERR something this state trips over")
        return SettleFlags([1] * len(plan.items), {})


def _job(i: int) -> Job:
    return Job("Noop", KEYS.queue("Noop"), f"1-{i}".encode(), {b"x": b"1"}, Envelope(f"s{i}", {}))


async def _settle(broker: RefusingBroker, outcomes: list[Outcome]) -> Worker:
    worker = Worker(cast(Broker, broker), [NodeSpec.of(Noop)], "c", cast(GraphCache, None), CFG)
    worker.inflight = len(outcomes)
    lanes = [object()]
    await worker._settle_batch(
        outcomes, cast(Any, lanes.pop()), cast(Any, lanes), asyncio.Semaphore(0)
    )
    return worker


async def test_after_a_refused_call_each_state_is_settled_for_real(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RefusingBroker({b"1-1"}, refuse_dead_letters=False)
    outcomes: list[Outcome] = [Completed(_job(i), [{}], False) for i in range(3)]
    with caplog.at_level(logging.INFO, "exospherehost.runtime.worker"):
        worker = await _settle(broker, outcomes)
    # Whole batch, then one by one; the bad one's own call and its failure plan are
    # refused, its bare dead letter goes through.
    assert broker.calls == [
        [b"1-0", b"1-1", b"1-2"],
        [b"1-0"],
        [b"1-1"],
        [b"1-1"],
        [b"1-1"],
        [b"1-2"],
    ]
    assert worker.stats.nodes["Noop"].settled == 3 and worker.inflight == 0
    assert "late settles" not in caplog.text
    assert "dead-lettered Noop state s1 (entry 1-1)" in caplog.text


async def test_a_state_that_cannot_even_be_dead_lettered_stays_pending_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RefusingBroker({b"1-1"}, refuse_dead_letters=True)
    outcomes: list[Outcome] = [Completed(_job(i), [{}], False) for i in range(2)]
    with caplog.at_level(logging.INFO, "exospherehost.runtime.worker"):
        worker = await _settle(broker, outcomes)
    assert worker.stats.nodes["Noop"].settled == 1 and worker.inflight == 0
    assert "left pending Noop state s1 (entry 1-1)" in caplog.text
    assert "something this state trips over" in caplog.text
    assert "late settles" not in caplog.text
