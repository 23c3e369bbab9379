"""Pure settle planning: outcomes -> script ops, without Redis."""

from __future__ import annotations

import msgpack

from exospherehost.broker.codec import Envelope, encode
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import (
    GROUP_INIT,
    GROUP_STEP,
    HSET,
    RUN_OPEN,
    RUN_STEP,
    XADD,
    ZADD_DELAYED,
    SettlePlan,
)
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import GraphNodeModel, RetryPolicyModel, RetryStrategyEnum
from exospherehost.runtime.outcomes import (
    Completed,
    DeadLettered,
    Failed,
    Job,
    Malformed,
    Pruned,
    Released,
    Requeued,
    Retry,
)
from exospherehost.runtime.settle import SettleConfig, plan_settle

K = Keys("ns")


def job(env: Envelope, node: str = "A") -> Job:
    return Job(node, K.queue(node), b"1-1", {b"_exo": encode(env)}, env)


def ops(plan: SettlePlan, i: int = 0) -> list[list[object]]:
    return plan.items[i][2]  # type: ignore[no-any-return]


def key(plan: SettlePlan, op: list[object], pos: int = 1) -> str:
    return plan.keys[int(op[pos]) - 1]  # type: ignore[call-overload]


def cfg(**kw: object) -> SettleConfig:
    g = CompiledGraph.build(
        "g",
        1,
        [
            GraphNodeModel(
                node_name="A", namespace="ns", identifier="a", inputs={}, next_nodes=["b"]
            ),
            GraphNodeModel(
                node_name="B", namespace="ns", identifier="b", inputs={"x": "${{ a.outputs.x }}"}
            ),
        ],
        RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=500),
    )
    return SettleConfig(keys=K, graphs={("g", 1): g}, clock=lambda: 1.0, **kw)  # type: ignore[arg-type]


def test_graphless_success_goes_to_the_output_stream() -> None:
    plan = plan_settle([Completed(job(Envelope("s", {})), [{"ok": True}], False)], cfg())
    [op] = ops(plan)
    assert op[0] == XADD and key(plan, op) == K.output("A")
    fields = dict(zip(op[3::2], op[4::2], strict=True))
    assert fields["state"] == "s" and msgpack.unpackb(fields["outputs"]) == {"ok": True}


def test_graph_success_emits_successors_then_run_step() -> None:
    env = Envelope("s", {}, "r", "g", 1, "a")
    plan = plan_settle([Completed(job(env), [{"x": 1}, {"x": 2}], True)], cfg())
    codes = [op[0] for op in ops(plan)]
    # The run's open count changes first (it also checks the run exists), then the rest.
    assert codes == [RUN_OPEN, XADD, XADD, HSET, RUN_STEP]
    opened, run = ops(plan)[0], ops(plan)[-1]
    assert opened[2] == run[4] == 1  # open: +2 successors -1 itself
    assert dict(zip(run[-4::2], run[-3::2], strict=True)) == {"s:a": 1, "c:b": 2}


def test_failure_is_retried_per_policy_then_dead_lettered() -> None:
    env = Envelope("s", {}, "r", "g", 1, "a", attempt=0)
    plan = plan_settle([Failed(job(env), "boom", "tb")], cfg())
    opened, delay, record, run = ops(plan)
    assert opened == [RUN_OPEN, run[1], 0] and record[0] == HSET
    assert delay[0] == ZADD_DELAYED and delay[2] == 500 and key(plan, delay) == K.delayed("A")
    assert msgpack.unpackb(delay[3])["a"] == 1  # next attempt
    assert run[0] == RUN_STEP and run[4] == 0  # the run stays open
    last = Envelope("s", {}, "r", "g", 1, "a", attempt=2)
    plan = plan_settle([Failed(job(last), "boom", "tb")], cfg())
    # The dead letter comes before the run's ops: it is written even if the run is gone.
    dead, opened, record, run = ops(plan)
    assert opened[0] == RUN_OPEN and key(plan, dead) == K.dead() and record[0] == HSET
    assert opened[2] == run[4] == -1 and run[5] == 1


def test_permanent_failure_skips_retries() -> None:
    plan = plan_settle([Failed(job(Envelope("s", {})), "bad inputs", "", permanent=True)], cfg())
    assert [key(plan, op) for op in ops(plan)] == [K.dead(), K.output("A")]


def test_requeue_release_and_malformed() -> None:
    env = Envelope("s", {"k": 1})
    plan = plan_settle(
        [
            Requeued(job(env), 250),
            Released(job(env)),
            Malformed("A", K.queue("A"), b"2-2", {b"x": b"\xff"}, "not text"),
        ],
        cfg(),
    )
    [requeue], [release], [dead] = ops(plan, 0), ops(plan, 1), ops(plan, 2)
    assert requeue[0] == ZADD_DELAYED and requeue[2] == 250
    assert "a" not in msgpack.unpackb(requeue[3])  # not a retry: the attempt stays 0
    assert release[0] == XADD and key(plan, release) == K.queue("A")
    assert key(plan, dead) == K.dead()


def test_an_unsettleable_output_becomes_a_permanent_failure_of_that_state_only() -> None:
    good = Completed(job(Envelope("g", {})), [{"ok": 1}], False)
    bad = Completed(job(Envelope("b", {})), [{"x": object()}], False)
    plan = plan_settle([good, bad], cfg())
    assert len(plan.items) == 2
    bad_ops = ops(plan, 1)
    assert [key(plan, op) for op in bad_ops] == [K.dead(), K.output("A")]
    fields = dict(zip(bad_ops[0][3::2], bad_ops[0][4::2], strict=True))
    assert "cannot settle Completed" in fields["error"]


def test_group_ops_come_before_the_run_step() -> None:
    from exospherehost.models import UnitesModel

    g = CompiledGraph.build(
        "u",
        1,
        [
            GraphNodeModel(
                node_name="A", namespace="ns", identifier="a", inputs={}, next_nodes=["u"]
            ),
            GraphNodeModel(
                node_name="U",
                namespace="ns",
                identifier="u",
                inputs={},
                unites=UnitesModel(identifier="a"),
            ),
        ],
    )
    c = SettleConfig(keys=K, graphs={("u", 1): g})
    env = Envelope("s", {}, "r", "u", 1, "a")
    plan = plan_settle([Completed(job(env), [{}, {}], True)], c)
    assert [op[0] for op in ops(plan)] == [RUN_OPEN, GROUP_INIT, GROUP_STEP, HSET, RUN_STEP]


def test_output_maxlen_zero_keeps_no_results() -> None:
    plan = plan_settle(
        [Completed(job(Envelope("s", {})), [{"ok": True}], False)], cfg(output_maxlen=0)
    )
    assert ops(plan) == []  # acked and deleted, nothing written


def test_the_plan_records_its_decision_on_each_failure() -> None:
    """Retry or dead letter is decided once, here: the stats and the failure log read it."""
    first = Failed(job(Envelope("s", {}, "r", "g", 1, "a", attempt=0)), "boom", "tb")
    spent = Failed(job(Envelope("s", {}, "r", "g", 1, "a", attempt=2)), "boom", "tb")
    bad = Failed(job(Envelope("s", {})), "bad inputs", "", permanent=True)
    plan_settle([first, spent, bad], cfg())
    assert first.fate == Retry(attempt=2, attempts=3, delay_ms=500)  # the graph's policy
    assert spent.fate is DeadLettered.RETRIES_SPENT
    assert bad.fate is DeadLettered.PERMANENT


def test_a_failure_that_cannot_be_planned_is_recorded_as_dead_lettered() -> None:
    unpackable = Failed(job(Envelope("s", {}, "r", "g", 1, "a")), "boom", "tb")
    unpackable.job.env.inputs["x"] = object()  # the retry's envelope cannot be encoded
    plan = plan_settle([unpackable], cfg())
    assert next(key(plan, op) for op in ops(plan) if op[0] == XADD) == K.dead()
    assert unpackable.fate is DeadLettered.PERMANENT  # not the Retry first planned


def test_a_graph_state_settle_writes_its_record_and_its_successors_parent_pointers() -> None:
    env = Envelope("s", {"in": 1}, "r", "g", 1, "a")
    j = job(env)
    j.started = 0.5
    plan = plan_settle([Completed(j, [{"x": 1}, {"x": 2}], True)], cfg(worker="w1"))
    [record] = [op for op in ops(plan) if op[0] == HSET]
    assert key(plan, record) == K.run_states("r")
    state, packed, *pointers = record[2:]
    assert state == "s"
    assert msgpack.unpackb(packed) == {
        "n": "A", "id": "a", "s": "SUCCEEDED", "a": 1, "in": {"in": 1}, "q": 1,
        "st": 500, "fin": 1000, "w": "w1", "out": [{"x": 1}, {"x": 2}],
    }  # fmt: skip
    children = [
        msgpack.unpackb(op[4])["i"] for op in ops(plan) if op[0] == XADD
    ]  # the successors' envelopes
    assert pointers[0::2] == ["^" + c for c in children]
    assert [msgpack.unpackb(p) for p in pointers[1::2]] == [["s", 1000]] * 2
    # The run's end expires the records with it.
    [run] = [op for op in ops(plan) if op[0] == RUN_STEP]
    assert K.run_states("r") not in [plan.keys[k - 1] for k in run[10:] if isinstance(k, int)]
    last = plan_settle([Completed(job(Envelope("t", {}, "r", "g", 1, "b")), [{}], False)], cfg())
    [run] = [op for op in ops(last) if op[0] == RUN_STEP]
    n = run[9]
    assert K.run_states("r") in [last.keys[k - 1] for k in run[10 : 10 + n]]


def test_a_field_over_the_cap_or_not_packable_becomes_a_marker_and_off_writes_none() -> None:
    env = Envelope("s", {"big": "y" * 5000}, "r", "g", 1, "b")
    plan = plan_settle([Failed(job(env), "e" * 10, "", permanent=True)], cfg(record_field_max=1000))
    [record] = [op for op in ops(plan) if op[0] == HSET]
    got = msgpack.unpackb(record[3])
    assert got["in"]["__truncated__"] > 5000 and got["in"]["preview"].startswith("{'big': 'yyy")
    assert got["err"] == "e" * 10 and got["s"] == "FAILED"
    unpackable = job(Envelope("u", {}, "r", "g", 1, "b"))
    unpackable.env.inputs["x"] = object()  # as the test above: not msgpack-able
    plan = plan_settle([Completed(unpackable, [{}], False)], cfg())
    got = msgpack.unpackb(next(op for op in ops(plan) if op[0] == HSET)[3])
    assert got["in"]["__truncated__"] == 0
    plan = plan_settle([Completed(job(env), [{}], False)], cfg(state_records="off"))
    assert HSET not in [op[0] for op in ops(plan)]


def test_a_pruned_state_records_its_prune_data() -> None:
    env = Envelope("s", {"x": 1}, "r", "g", 1, "b", groups={"u": "t"})
    plan = plan_settle([Pruned(job(env), {"why": "small"})], cfg())
    [record] = [op for op in ops(plan) if op[0] == HSET]
    got = msgpack.unpackb(record[3])
    assert (got["s"], got["pr"], got["gr"]) == ("PRUNED", {"why": "small"}, {"u": "t"})
    assert "out" not in got and "err" not in got and record[4:] == []  # no successors
