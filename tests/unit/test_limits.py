"""Issue 17 item 6, without Redis: each size limit refuses with the field, its size and the
limit named; a store value over the inline threshold travels by name, never copied into
each successor envelope; the settle of a state whose outputs do not fit fails it for good."""

from __future__ import annotations

import msgpack
import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime, SizeLimitExceeded, StateManager
from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import RUN_STEP, XADD, ZADD_DELAYED
from exospherehost.errors import ConfigError, InvalidArgument
from exospherehost.graph.compiled import REFS, STORE, CompiledGraph
from exospherehost.graph.runplan import plan_run
from exospherehost.graph.storevalues import encode_store
from exospherehost.limits import KIB, MIB, SizeLimits
from exospherehost.models import GraphNodeModel, StoreConfigModel, UnitesModel
from exospherehost.runtime.outcomes import Completed, Job
from exospherehost.runtime.settle import SettleConfig, plan_settle

K = Keys("ns")
SMALL = SizeLimits(
    state_bytes=64 * KIB, store_value_bytes=256 * KIB, store_inline_bytes=1 * KIB, settle_bytes=MIB
)


def graph(doc_template: str = "${{ store.doc }}") -> CompiledGraph:
    """split (fan-out) -> work (reads a store value) -> tail (reads it too)."""
    nodes = [
        GraphNodeModel(
            node_name="Split",
            namespace="ns",
            identifier="split",
            inputs={"n": 30},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace="ns",
            identifier="work",
            inputs={"i": "${{ split.outputs.i }}", "doc": doc_template, "tag": "${{ store.tag }}"},
            next_nodes=["tail"],
        ),
        GraphNodeModel(
            node_name="Tail",
            namespace="ns",
            identifier="tail",
            inputs={"size": "${{ work.outputs.size }}", "doc": "${{ store.doc }}"},
        ),
    ]
    return CompiledGraph.build(
        "g", 1, nodes, store_config=StoreConfigModel(required_keys=["doc", "tag"])
    )


def job(env: Envelope, node: str) -> Job:
    return Job(node, K.queue(node), b"1-1", {b"_exo": encode(env)}, env)


def cfg(g: CompiledGraph, limits: SizeLimits = SMALL) -> SettleConfig:
    return SettleConfig(keys=K, graphs={("g", 1): g}, clock=lambda: 1.0, limits=limits)


# -- configuration ---------------------------------------------------------------------
def test_defaults_and_env_sizes_with_units() -> None:
    d = SizeLimits()
    assert (d.state_bytes, d.store_value_bytes, d.store_inline_bytes, d.settle_bytes) == (
        4 * MIB,
        4 * MIB,
        16 * KIB,
        64 * MIB,
    )
    env = {
        "EXOSPHERE_MAX_STATE_BYTES": "8MiB",
        "EXOSPHERE_MAX_STORE_VALUE_BYTES": "32 mb",
        "EXOSPHERE_STORE_INLINE_BYTES": "1000",
        "EXOSPHERE_MAX_SETTLE_BYTES": "1G",
    }
    got = SizeLimits.from_env(env)
    assert got == SizeLimits(8 * MIB, 32 * MIB, 1000, 1024 * MIB)
    assert SizeLimits.from_env({}) == SizeLimits()


def test_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(ConfigError, match="EXOSPHERE_MAX_STATE_BYTES='lots'"):
        SizeLimits.from_env({"EXOSPHERE_MAX_STATE_BYTES": "lots"})
    with pytest.raises(InvalidArgument, match="state_bytes must be an int > 0"):
        SizeLimits(state_bytes=0)
    with pytest.raises(InvalidArgument, match="store_inline_bytes"):
        SizeLimits(state_bytes=KIB, store_inline_bytes=2 * KIB)


# -- at the caller: store values, first states -------------------------------------------
def test_a_store_value_over_its_limit_names_the_key_and_sizes() -> None:
    with pytest.raises(SizeLimitExceeded) as info:
        encode_store({"ok": 1, "doc": "x" * (300 * KIB)}, SMALL)
    err = info.value
    assert (err.what, err.name, err.limit) == ("store value", "'doc'", 256 * KIB)
    assert err.size > 300 * KIB
    assert "store value 'doc' is 300.0 KiB" in str(err)
    assert "over the limit of 256.0 KiB" in str(err)
    assert "EXOSPHERE_MAX_STORE_VALUE_BYTES" in str(err)
    encode_store({"doc": "x" * (300 * KIB)})  # no limits given: not checked (the codec)


def test_trigger_refuses_a_store_value_over_its_limit() -> None:
    with pytest.raises(SizeLimitExceeded, match="store value 'doc'"):
        plan_run(
            graph(),
            K,
            inputs={},
            store={"doc": "x" * (300 * KIB), "tag": "t"},
            start_delay_ms=0,
            now_ms=0,
            limits=SMALL,
        )


def test_trigger_refuses_a_first_state_over_its_limit_naming_the_input() -> None:
    with pytest.raises(SizeLimitExceeded) as info:
        plan_run(
            graph(),
            K,
            inputs={"n": 1, "blob": "y" * (100 * KIB)},
            store={"doc": "d", "tag": "t"},
            start_delay_ms=0,
            now_ms=0,
            limits=SMALL,
        )
    text = str(info.value)
    assert "graph 'g' (node Split, identifier split)" in text
    assert "over the limit of 64.0 KiB (SizeLimits.state_bytes" in text
    assert "biggest: inputs.blob 100.0 KiB" in text


# -- store values by reference ---------------------------------------------------------
def test_a_big_store_value_stays_in_the_run_store_and_travels_by_name() -> None:
    g = graph()
    doc = "x" * (200 * KIB)  # over store_inline_bytes, within store_value_bytes
    start = plan_run(
        g, K, inputs={}, store={"doc": doc, "tag": "t"}, start_delay_ms=0, now_ms=0, limits=SMALL
    )
    assert msgpack.unpackb(start.store["doc"]) == doc  # in the run store, once
    root = decode(b"1-1", {b"_exo": start.envelope})
    assert len(start.envelope) < KIB, "the value was copied into the first envelope"
    assert root.ctx[STORE] == {"tag": "t"} and root.ctx[REFS] == ["doc"]

    # The fan-out of 30: every successor is rendered when it runs, none carries the value.
    done = Completed(job(root, "Split"), [{"i": i} for i in range(30)], True)
    plan = plan_settle([done], cfg(g))
    queued = [op for op in plan.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    assert len(queued) == 30
    for op in queued:
        assert len(op[4]) < KIB, "a successor carries the store value"
    assert plan.size < 30 * KIB
    child = decode(b"2-1", {b"_exo": queued[7][4]})
    assert child.inputs == {}
    assert g.needs_store("work", child.ctx) == ["doc"]
    read = {"doc": doc}
    assert g.render_deferred("work", child.ctx, read, child.inputs) == {
        "i": 7,
        "doc": doc,
        "tag": "t",
    }
    # Its successor (tail) needs the value too: still by name, rendered when it runs.
    nxt = plan_settle([Completed(job(child, "Work"), [{"size": 3}], False)], cfg(g))
    [tail_op] = [op for op in nxt.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    tail = decode(b"3-1", {b"_exo": tail_op[4]})
    assert tail.inputs == {} and tail.ctx[REFS] == ["doc"]
    assert g.render_deferred("tail", tail.ctx, read, {}) == {"size": 3, "doc": doc}


def test_a_big_store_value_inside_text_is_rendered_when_the_state_runs() -> None:
    g = graph("doc: ${{ store.doc }}!")
    start = plan_run(
        g,
        K,
        inputs={},
        store={"doc": "z" * (2 * KIB), "tag": "t"},
        start_delay_ms=0,
        now_ms=0,
        limits=SMALL,
    )
    root = decode(b"1-1", {b"_exo": start.envelope})
    plan = plan_settle([Completed(job(root, "Split"), [{"i": 0}], True)], cfg(g))
    [op] = [op for op in plan.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    child = decode(b"2-1", {b"_exo": op[4]})
    inputs = g.render_deferred("work", child.ctx, {"doc": "z" * (2 * KIB)}, {})
    assert inputs["doc"] == "doc: " + "z" * (2 * KIB) + "!"


def test_small_store_values_still_travel_inline() -> None:
    g = graph()
    start = plan_run(
        g, K, inputs={}, store={"doc": "d", "tag": "t"}, start_delay_ms=0, now_ms=0, limits=SMALL
    )
    root = decode(b"1-1", {b"_exo": start.envelope})
    assert REFS not in root.ctx and root.ctx[STORE] == {"doc": "d", "tag": "t"}
    plan = plan_settle([Completed(job(root, "Split"), [{"i": 1}], True)], cfg(g))
    [op] = [op for op in plan.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    child = decode(b"2-1", {b"_exo": op[4]})
    assert child.inputs == {"i": 1, "doc": "d", "tag": "t"}
    assert g.needs_store("work", child.ctx) == []


# -- at the settle: outputs that do not fit --------------------------------------------
def _root(g: CompiledGraph) -> Envelope:
    start = plan_run(
        g, K, inputs={}, store={"doc": "d", "tag": "t"}, start_delay_ms=0, now_ms=0, limits=SMALL
    )
    return decode(b"1-1", {b"_exo": start.envelope})


def test_an_output_too_big_for_its_successor_fails_the_state_for_good() -> None:
    g = graph()
    root = _root(g)
    failed = Completed(job(root, "Split"), [{"i": "j" * (100 * KIB)}], True)
    plan = plan_settle([failed], cfg(g))
    ops = plan.items[0][2]
    assert not [op for op in ops if op[0] == XADD and op[3] == "_exo"], "a successor was queued"
    [letter] = [op for op in ops if op[0] == XADD and "error" in op]
    error = letter[letter.index("error") + 1]
    assert f"node Split (state {root.state_id}, identifier split)" in error
    assert "the state it emits for node Work (identifier work)" in error
    assert "over the limit of 64.0 KiB (SizeLimits.state_bytes" in error
    assert "biggest: inputs.i 100.0 KiB" in error


def test_a_result_too_big_fails_the_leaf_naming_the_field() -> None:
    g = graph()
    root = _root(g)
    plan = plan_settle([Completed(job(root, "Split"), [{"i": 1}], True)], cfg(g))
    [op] = [op for op in plan.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    work = decode(b"2-1", {b"_exo": op[4]})
    plan = plan_settle([Completed(job(work, "Work"), [{"size": 1}], False)], cfg(g))
    [op] = [op for op in plan.items[0][2] if op[0] == XADD and op[3] == "_exo"]
    tail = decode(b"3-1", {b"_exo": op[4]})
    outcome = Completed(job(tail, "Tail"), [{"text": "t" * (80 * KIB), "n": 1}], False)
    plan = plan_settle([outcome], cfg(g))
    [letter] = [op for op in plan.items[0][2] if op[0] == XADD and "error" in op]
    error = letter[letter.index("error") + 1]
    assert (
        "node Tail (state" in error
        and "its result is 80.1 KiB" in error
        and "biggest: outputs.text 80.0 KiB" in error
    )


def test_a_graphless_output_too_big_is_a_permanent_failure() -> None:
    env = Envelope("s", {})
    outcome = Completed(job(env, "A"), [{"blob": b"b" * (70 * KIB)}], False)
    plan = plan_settle([outcome], cfg(graph()))
    [*_, out] = plan.items[0][2]
    fields = dict(zip(out[3::2], out[4::2], strict=True))
    assert fields["status"] == "FAILED"
    assert "node A (state s): what it returned is 70.0 KiB" in fields["error"]
    assert "biggest: outputs.blob 70.0 KiB" in fields["error"]


def test_a_failure_over_the_limit_is_dead_lettered_without_retries() -> None:
    g = graph()
    root = _root(g)
    big = Completed(job(root, "Split"), [{"i": "j" * (100 * KIB)}], True)
    plan = plan_settle([big], cfg(g))
    ops = plan.items[0][2]
    assert not [op for op in ops if op[0] == ZADD_DELAYED], "it was retried"
    assert [op for op in ops if op[0] == XADD and "error" in op], "no dead letter"
    [run] = [op for op in ops if op[0] == RUN_STEP]
    assert run[4] == -1 and run[5] == 1  # closes its state, fails the run


def test_everything_one_state_emits_is_bounded_by_settle_bytes() -> None:
    g = graph()
    root = _root(g)
    # 30 successors of 40 KiB each: each fits state_bytes, all of them not settle_bytes.
    limits = SizeLimits(
        state_bytes=64 * KIB, store_value_bytes=64 * KIB, store_inline_bytes=KIB,
        settle_bytes=512 * KIB,
    )  # fmt: skip
    g2 = CompiledGraph.build(
        "g",
        1,
        [
            GraphNodeModel(
                node_name="Split", namespace="ns", identifier="split", next_nodes=["work"]
            ),
            GraphNodeModel(
                node_name="Work",
                namespace="ns",
                identifier="work",
                inputs={"t": "${{ split.outputs.t }}"},
            ),
        ],
    )
    outs = [{"t": "t" * (40 * KIB)} for _ in range(30)]
    plan = plan_settle([Completed(job(root, "Split"), outs, True)], cfg(g2, limits))
    [letter] = [op for op in plan.items[0][2] if op[0] == XADD and "error" in op]
    error = letter[letter.index("error") + 1]
    assert "everything it emits (30 states)" in error and "SizeLimits.settle_bytes" in error
    fine = plan_settle([Completed(job(root, "Split"), outs[:5], True)], cfg(g2, limits))
    assert fine.size > 5 * 40 * KIB
    del g


def test_a_uniting_node_reads_a_big_store_value_when_it_fires() -> None:
    nodes = [
        GraphNodeModel(node_name="X", namespace="ns", identifier="x", inputs={}, next_nodes=["b"]),
        GraphNodeModel(
            node_name="B",
            namespace="ns",
            identifier="b",
            inputs={"v": "${{ x.outputs.v }}"},
            next_nodes=["u"],
        ),
        GraphNodeModel(
            node_name="U",
            namespace="ns",
            identifier="u",
            inputs={"all": "${{ b.outputs.w }}", "doc": "${{ store.doc }}"},
            unites=UnitesModel(identifier="x"),
        ),
    ]
    g = CompiledGraph.build("g", 1, nodes, store_config=StoreConfigModel(required_keys=["doc"]))
    doc = "u" * (4 * KIB)
    start = plan_run(g, K, inputs={}, store={"doc": doc}, start_delay_ms=0, now_ms=0, limits=SMALL)
    root = decode(b"1-1", {b"_exo": start.envelope})
    assert root.ctx[REFS] == ["doc"] and len(start.envelope) < KIB
    completion = g.complete("x", root.state_id, root.ctx, {}, [], [{"v": 1}, {"v": 2}], True)
    [step] = completion.groups
    assert step.init is not None and step.init[REFS] == ["doc"]
    assert "doc" not in (step.init.get(STORE) or {}), "the value was copied into the unite"
    assert g.needs_store("u", step.init) == ["doc"]
    collected = [{"p": [0], "o": {"b": {"w": 10}}}, {"p": [1], "o": {"b": {"w": 20}}}]
    assert g.unite_inputs("u", step.init, collected, {"doc": doc}) == {"all": [10, 20], "doc": doc}


class Echo(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


def test_runtime_and_state_manager_take_only_size_limits() -> None:
    url = "redis://127.0.0.1:1/0"  # never connected to: construction checks arguments
    with pytest.raises(InvalidArgument, match="size_limits must be"):
        StateManager("ns", redis_url=url, size_limits={"state_bytes": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="size_limits must be"):
        Runtime("ns", "w", [Echo], redis_url=url, size_limits=4)  # type: ignore[arg-type]
    assert StateManager("ns", redis_url=url, size_limits=SMALL).size_limits is SMALL
