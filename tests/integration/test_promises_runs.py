"""Promises about graph runs on real Redis: fan-in re-opening the run, nested fan-in,
finishing exactly once, and failures that must not be retried (issue 16). Each test
fails with the one-line bug its docstring names."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import ClassVar

import pytest
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    PruneSignal,
    ReQueueAfterSignal,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
    UnitesModel,
    UnitesStrategyEnum,
)
from tests.integration.apps.nodes import Split, Square, Work
from tests.integration.helpers import running
from tests.integration.promises_support import envelope, until

pytestmark = pytest.mark.redis

QUICK_RETRIES = RetryPolicyModel(max_retries=3, strategy=RetryStrategyEnum.FIXED, backoff_factor=10)


class HeldCollect(BaseNode):
    """A uniting node that waits for the test before it finishes."""

    started: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    class Inputs(BaseModel):
        squares: list[int]

    class Outputs(BaseModel):
        total: int

    async def execute(self) -> Outputs:
        HeldCollect.started.set()
        await HeldCollect.release.wait()
        return self.Outputs(total=sum(self.inputs.squares))


class Total(BaseNode):
    """Inner fan-in: the sum of its branches' squares."""

    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        squares: list[int]

    class Outputs(BaseModel):
        total: int

    async def execute(self) -> Outputs:
        Total.runs += 1
        return self.Outputs(total=sum(self.inputs.squares))


class Totals(BaseNode):
    """Outer fan-in: every inner total, in branch order."""

    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        totals: list[int]

    class Outputs(BaseModel):
        totals: list[int]

    async def execute(self) -> Outputs:
        Totals.runs += 1
        return self.Outputs(totals=self.inputs.totals)


class FirstKeeps(BaseNode):
    """The first branch of an inner fan-out (value == first) succeeds; the second waits
    until the first has finished, then prunes: the pruned branch is the last member of
    its group to settle."""

    first_done: ClassVar[dict[int, asyncio.Event]] = {}

    class Inputs(BaseModel):
        value: int
        first: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        first = FirstKeeps.first_done.setdefault(self.inputs.first, asyncio.Event())
        if self.inputs.value == self.inputs.first:
            first.set()
            return self.Outputs(value=self.inputs.value)
        await first.wait()
        raise PruneSignal({"value": self.inputs.value})


class PruneAll(BaseNode):
    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        raise PruneSignal({"value": self.inputs.value})


class Gather(BaseNode):
    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        # Two branches' squares arrive for a list of at most one: the inputs cannot be
        # built. (A list into an `int` would be refused by upsert_graph's type check.)
        values: list[int] = Field(max_length=1)

    class Outputs(BaseModel):
        n: int

    async def execute(self) -> Outputs:
        Gather.runs += 1
        return self.Outputs(n=sum(self.inputs.values))


class UsesStore(BaseNode):
    runs: ClassVar[int] = 0

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        UsesStore.runs += 1
        await self.store.get("k")
        return self.Outputs(x=self.inputs.x)


class FailsOnceAtZero(BaseNode):
    """Value 0 fails on its first execution only; every other execution succeeds."""

    failed: ClassVar[bool] = False

    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        if self.inputs.value == 0 and not FailsOnceAtZero.failed:
            FailsOnceAtZero.failed = True
            raise RuntimeError("zero fails once")
        return self.Outputs(value=self.inputs.value)


class Timed(BaseNode):
    """Fails its first execution, requeues (1.2 s) on its second, succeeds on its third;
    records when each execution started."""

    starts: ClassVar[list[float]] = []

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        Timed.starts.append(time.monotonic())
        if len(Timed.starts) == 1:
            raise RuntimeError("first attempt fails")
        if len(Timed.starts) == 2:
            raise ReQueueAfterSignal(timedelta(milliseconds=DELAY_MS))
        return self.Outputs(x=self.inputs.x)


DELAY_MS = 1200  # well above the promoter's idle poll (0.5 s), so a lost delay shows


class LateStore(BaseNode):
    """Writes the run's store only when asked (`late`)."""

    class Inputs(BaseModel):
        late: bool

    class Outputs(BaseModel):
        late: bool

    async def execute(self) -> Outputs:
        if self.inputs.late:
            await self.store.set("late", True)
        return self.Outputs(late=self.inputs.late)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    FailsOnceAtZero.failed = False
    Timed.starts = []
    HeldCollect.started, HeldCollect.release = asyncio.Event(), asyncio.Event()
    Total.runs = Totals.runs = Gather.runs = UsesStore.runs = 0
    FirstKeeps.first_done = {}


def _node(
    ns: str, name: str, ident: str, inputs: dict[str, object], **kw: object
) -> GraphNodeModel:
    return GraphNodeModel(node_name=name, namespace=ns, identifier=ident, inputs=inputs, **kw)  # type: ignore[arg-type]


async def test_a_fired_unite_reopens_the_run_until_the_uniting_state_settles(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """The settle that closes the last branch fires the uniting state; the run must stay
    RUNNING while that state is queued or running, and finish once it settled.
    Bug: the uniting state is added without `open + 1` (the run finishes early)."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "fan", {"items": 3}, next_nodes=["square"]),
        _node(ns, "Square", "square", {"value": "${{ fan.outputs.value }}"}, next_nodes=["sum"]),
        _node(
            ns,
            "HeldCollect",
            "sum",
            {"squares": "${{ square.outputs.square }}"},
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_SUCCESS),
        ),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Split, Square, HeldCollect], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("held", nodes, secrets={})
        run = await sm.trigger("held")
        await asyncio.wait_for(HeldCollect.started.wait(), 15)
        during = await sm.status(run)
        HeldCollect.release.set()
        final = await sm.wait(run, timeout=15)
        results = await sm.results(run)
    assert during.status == "RUNNING" and during.open == 1, during
    assert during.nodes["sum"].pending == 1, during  # created when it fired, not settled
    assert final.status == "SUCCEEDED" and final.open == 0, final
    assert final.nodes["sum"].succeeded == 1 and final.nodes["sum"].pending == 0, final
    assert [r["outputs"] for r in results] == [{"total": 0 + 1 + 4}]


async def test_nested_fan_in_fires_the_outer_unite_after_every_inner_one(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """outer (2 branches) -> inner (2 branches each) -> square -> inner unite -> outer
    unite: the outer unite fires once, after both inner unites, and receives both inner
    totals in branch order. Bug: the outer groups are not re-opened when an inner unite
    fires (the outer unite then fires before the inner ones settled)."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "outer", {"items": 2}, next_nodes=["inner"]),
        _node(
            ns,
            "Split",
            "inner",
            {"items": 2, "base": "${{ outer.outputs.value }}"},
            next_nodes=["square"],
        ),
        _node(ns, "Square", "square", {"value": "${{ inner.outputs.value }}"}, next_nodes=["sum"]),
        _node(
            ns,
            "Total",
            "sum",
            {"squares": "${{ square.outputs.square }}"},
            unites=UnitesModel(identifier="inner", strategy=UnitesStrategyEnum.ALL_SUCCESS),
            next_nodes=["all"],
        ),
        _node(
            ns,
            "Totals",
            "all",
            {"totals": "${{ sum.outputs.total }}"},
            unites=UnitesModel(identifier="outer", strategy=UnitesStrategyEnum.ALL_SUCCESS),
        ),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Split, Square, Total, Totals], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("nested", nodes, secrets={})
        run = await sm.trigger("nested")
        status = await sm.wait(run, timeout=15)
        results = await sm.results(run)
        assert await sm.dead_letters() == []
        # Nothing more may arrive: everything of the run has settled.
        for node in ("Split", "Square", "Total", "Totals"):
            assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
    assert status.status == "SUCCEEDED" and status.open == 0, status
    # outer 0 -> inner 0, 1 -> squares 0, 1 -> 1; outer 1 -> inner 1, 2 -> 1, 4 -> 5
    assert [r["outputs"] for r in results] == [{"totals": [1, 5]}]
    assert Total.runs == 2 and Totals.runs == 1
    assert status.nodes["sum"].succeeded == 2 and status.nodes["all"].succeeded == 1


async def test_nested_fan_in_when_inner_groups_close_with_a_pruned_branch(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """Nested ALL_DONE fan-in where each inner group's last member to settle is a pruned
    branch: the settle that fires an inner unite must re-open the outer group for the
    uniting state, so the outer unite fires once, after both inner unites, with both
    inner totals. Bug: the outer re-open removed (the outer unite fires early and cannot
    build its inputs)."""
    ns = namespace
    done = UnitesStrategyEnum.ALL_DONE
    nodes = [
        _node(ns, "Split", "outer", {"items": 2}, next_nodes=["double"]),
        _node(
            ns, "Square", "double", {"value": "${{ outer.outputs.value }}"}, next_nodes=["inner"]
        ),
        _node(
            ns,
            "Split",
            "inner",
            {"items": 2, "base": "${{ double.outputs.square }}"},
            next_nodes=["work"],
        ),
        _node(
            ns,
            "FirstKeeps",
            "work",
            {"value": "${{ inner.outputs.value }}", "first": "${{ double.outputs.square }}"},
            next_nodes=["sum"],
        ),
        _node(
            ns,
            "Total",
            "sum",
            {"squares": "${{ work.outputs.value }}"},
            unites=UnitesModel(identifier="inner", strategy=done),
            next_nodes=["all"],
        ),
        _node(
            ns,
            "Totals",
            "all",
            {"totals": "${{ sum.outputs.total }}"},
            unites=UnitesModel(identifier="outer", strategy=done),
        ),
    ]
    rt = Runtime(
        namespace=ns,
        name="p",
        nodes=[Split, Square, FirstKeeps, Total, Totals],
        redis_url=redis_url,
    )
    async with running(rt):
        await sm.upsert_graph("nested-pruned", nodes, secrets={})
        run = await sm.trigger("nested-pruned")
        status = await sm.wait(run, timeout=15)
        results = await sm.results(run)
        assert await sm.dead_letters() == []
    assert status.status == "SUCCEEDED" and status.open == 0, status
    # outer 0 -> square 0 -> inner 0 (kept), 1 (pruned): 0; outer 1 -> 1 -> 1 (kept), 2: 1
    assert [r["outputs"] for r in results] == [{"totals": [0, 1]}]
    assert Total.runs == 2 and Totals.runs == 1
    assert status.nodes["work"].pruned == 2 and status.nodes["all"].succeeded == 1


async def test_a_run_finishes_once_even_when_a_stray_state_of_it_settles_later(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A run finishes only on the step that closes its last open state: a duplicate of its
    root state (as a client whose XADD reply was lost may add), settled after the run
    finished, opens as many states as it closes and must not finish the run again (one
    `run <id> status` event, finished_ms unchanged). Bug: the finish check drops "this
    step closed a state"."""
    ns = namespace
    nodes = [
        _node(ns, "Square", "first", {"value": 3}, next_nodes=["second"]),
        _node(ns, "Square", "second", {"value": "${{ first.outputs.square }}"}),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Square], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("line", nodes, secrets={})
        version = (await sm.get_graph("line"))["version"]
        run = await sm.trigger("line")
        done = await sm.wait(run, timeout=15)
        assert done.status == "SUCCEEDED"
        dup = envelope(
            v=1, i="duplicate-root", r=run, g="line", gv=version, n="first", **{"in": {"value": 3}}
        )
        await redis.xadd(sm.keys.queue("Square"), dup)

        async def duplicate_chain_settled() -> bool:
            return len(await sm.results(run)) == 2  # the duplicate's leaf result too

        await until(duplicate_chain_settled, "the duplicate root and its successor settle")
        after = await sm.status(run)
        events = await redis.xrange(sm.keys.events())
    finishes = [f for _, f in events if f[b"run"] == run.encode()]
    assert len(finishes) == 1, f"the run finished {len(finishes)} times: {finishes}"
    assert after.status == "SUCCEEDED" and after.finished_ms == done.finished_ms


async def test_a_uniting_node_whose_collected_inputs_are_invalid_fails_without_retries(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A fired unite's inputs (the list of its branches' squares) fail the uniting node's
    `Inputs` validation: as for any state with invalid inputs, that is a permanent
    failure: no retry spent, one dead letter, never executed."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "fan", {"items": 2}, next_nodes=["work"]),
        _node(ns, "Square", "work", {"value": "${{ fan.outputs.value }}"}, next_nodes=["gather"]),
        _node(
            ns,
            "Gather",
            "gather",
            {"values": "${{ work.outputs.square }}"},
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_DONE),
        ),
    ]
    # Gather.values takes one square: the unite's list of two fails its validation. A unite
    # that cannot be rendered at all (every branch pruned, nothing to list) is the other
    # way to get here; both are the same permanent failure.
    rt = Runtime(namespace=ns, name="p", nodes=[Split, Square, Gather], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("bad-unite", nodes, secrets={}, retry_policy=QUICK_RETRIES)
        run = await sm.trigger("bad-unite")
        status = await sm.wait(run, timeout=15)
        dead = await sm.dead_letters()
    assert status.status == "FAILED", status
    assert status.nodes["gather"].failed == 1 and status.nodes["gather"].retried == 0, status
    assert Gather.runs == 0
    [letter] = dead
    assert letter.identifier == "gather" and letter.attempts == 1, letter


async def test_a_unite_with_every_branch_pruned_and_unrenderable_inputs_fails_without_retries(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """ALL_DONE fires although every branch was pruned; its inputs reference a field no
    branch produced, so they cannot be built: a permanent failure of the uniting node,
    not retried. Bug: it is retried."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "fan", {"items": 2}, next_nodes=["work"]),
        _node(ns, "PruneAll", "work", {"value": "${{ fan.outputs.value }}"}, next_nodes=["sum"]),
        _node(
            ns,
            "Total",
            "sum",
            {"squares": "${{ work.outputs.value }}"},
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_DONE),
        ),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Split, PruneAll, Total], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("pruned-unite", nodes, secrets={}, retry_policy=QUICK_RETRIES)
        run = await sm.trigger("pruned-unite")
        status = await sm.wait(run, timeout=15)
        dead = await sm.dead_letters()
    assert status.status == "FAILED", status
    assert status.nodes["sum"].failed == 1 and status.nodes["sum"].retried == 0, status
    assert Total.runs == 0
    [letter] = dead
    assert letter.identifier == "sum" and letter.attempts == 1
    assert "cannot build the inputs" in letter.error, letter.error


async def test_store_unavailable_fails_without_retries(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """`self.store` on a state enqueued without a graph raises StoreUnavailable: retrying
    cannot help, so the state fails at once, executed once, with the retry policy unused.
    Bug: it is retried."""
    rt = Runtime(
        namespace=namespace,
        name="p",
        nodes=[UsesStore],
        redis_url=redis_url,
        default_retry_policy=QUICK_RETRIES,
    )
    async with running(rt):
        state = await sm.enqueue("UsesStore", {"x": 1})
        result = (await sm.wait_for_states("UsesStore", [state], timeout=15))[state]
        [letter] = await sm.dead_letters()
        assert rt.stats is not None
        counts = rt.stats.nodes["UsesStore"]
    assert result.status == "FAILED" and "StoreUnavailable" in (result.error or "")
    assert UsesStore.runs == 1
    assert letter.attempts == 1
    assert counts.retried == 0 and counts.dead_lettered == 1


async def test_redriving_a_member_of_a_decided_group_does_not_fire_the_unite_again(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """README (fan-in): redriving a dead-lettered state inside a group whose unite was
    already decided does not decide it again. Here the redriven branch succeeds and opens
    a successor inside the group, so the group's open count passes 0 a second time; the
    `fired` guard keeps the unite from firing twice. Bug: the HSETNX guard removed."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "fan", {"items": 2}, next_nodes=["work"]),
        _node(
            ns, "FailsOnceAtZero", "work", {"value": "${{ fan.outputs.value }}"}, next_nodes=["sq"]
        ),
        _node(ns, "Square", "sq", {"value": "${{ work.outputs.value }}"}, next_nodes=["sum"]),
        _node(
            ns,
            "Total",
            "sum",
            {"squares": "${{ sq.outputs.square }}"},
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_DONE),
        ),
    ]
    no_retries = RetryPolicyModel(max_retries=0)
    rt = Runtime(
        namespace=ns, name="p", nodes=[Split, FailsOnceAtZero, Square, Total], redis_url=redis_url
    )
    async with running(rt):
        await sm.upsert_graph("decided", nodes, secrets={}, retry_policy=no_retries)
        run = await sm.trigger("decided")
        first = await sm.wait(run, timeout=15)
        assert first.status == "FAILED" and Total.runs == 1, first
        [dead] = await sm.dead_letters()
        assert await sm.redrive(dead.id) is True

        async def finished_again() -> bool:
            return (await sm.status(run)).status != "RUNNING"

        await until(finished_again, "the redriven run finishes")
        final = await sm.status(run)
        results = await sm.results(run)
    assert Total.runs == 1, "the decided unite fired again"
    assert [r["outputs"] for r in results] == [{"total": 1}]  # decided once, with branch 1
    assert final.status == "SUCCEEDED" and final.open == 0, final


async def test_retry_backoff_and_requeue_delay_are_waited_out(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A retry runs no earlier than its backoff, a requeued state no earlier than its
    delay (both through the delayed set). Bug: the settle script files delayed states as
    due now (they then run at the promoter's next poll)."""
    policy = RetryPolicyModel(
        max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=DELAY_MS
    )
    rt = Runtime(
        namespace=namespace,
        name="p",
        nodes=[Timed],
        redis_url=redis_url,
        default_retry_policy=policy,
    )
    async with running(rt):
        state = await sm.enqueue("Timed", {"x": 1})
        result = (await sm.wait_for_states("Timed", [state], timeout=20))[state]
    assert result.status == "SUCCEEDED"
    first, second, third = Timed.starts
    assert second - first >= DELAY_MS / 1000 - 0.01, Timed.starts  # the retry's backoff
    assert third - second >= DELAY_MS / 1000 - 0.01, Timed.starts  # the requeue's delay


async def test_a_late_store_write_expires_with_its_finished_run(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A state executed again after its run finished (here a duplicate of it) may still
    write the run's store; the store it creates must expire with the run, never outlive
    it. Bug: store_set.lua's PEXPIRE removed (the late store never expires)."""
    ns = namespace
    nodes = [_node(ns, "LateStore", "only", {"late": False})]
    rt = Runtime(namespace=ns, name="p", nodes=[LateStore], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("late", nodes, secrets={})
        version = (await sm.get_graph("late"))["version"]
        run = await sm.trigger("late")
        assert (await sm.wait(run, timeout=15)).status == "SUCCEEDED"
        assert await redis.exists(sm.keys.run_store(run)) == 0  # nothing stored yet
        late = envelope(
            v=1, i="late-copy", r=run, g="late", gv=version, n="only", **{"in": {"late": True}}
        )
        await redis.xadd(sm.keys.queue("LateStore"), late)

        async def copy_settled() -> bool:
            return len(await sm.results(run)) == 2

        await until(copy_settled, "the late copy settles")
    assert await sm.run_store(run) == {"late": True}
    run_ttl = await redis.ttl(sm.keys.run(run))
    store_ttl = await redis.ttl(sm.keys.run_store(run))
    assert 0 < store_ttl <= run_ttl, (store_ttl, run_ttl)


async def test_all_success_with_a_pruned_branch_skips_the_unite_and_says_why(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """ALL_SUCCESS fires only if no branch failed for good or was pruned: one pruned branch
    means the uniting node never runs, the run still succeeds, and its status counts the
    skipped unite with a note. Bugs: a bad branch not counted (the unite fires); the
    skip not counted."""
    ns = namespace
    nodes = [
        _node(ns, "Split", "fan", {"items": 3}, next_nodes=["work"]),
        _node(
            ns,
            "Work",
            "work",
            {"value": "${{ fan.outputs.value }}", "prune_at": 1},
            next_nodes=["sum"],
        ),
        _node(
            ns,
            "Total",
            "sum",
            {"squares": "${{ work.outputs.value }}"},
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_SUCCESS),
        ),
    ]
    rt = Runtime(namespace=ns, name="p", nodes=[Split, Work, Total], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("skipped", nodes, secrets={})
        run = await sm.trigger("skipped")
        status = await sm.wait(run, timeout=15)
        results = await sm.results(run)
    assert status.status == "SUCCEEDED" and status.open == 0, status
    assert Total.runs == 0 and results == []
    assert status.nodes["work"].pruned == 1 and status.nodes["work"].succeeded == 2
    assert status.nodes["sum"].skipped == 1
    assert "did not fire" in status.notes["sum"] and "ALL_SUCCESS" in status.notes["sum"]
