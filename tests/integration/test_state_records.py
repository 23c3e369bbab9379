"""Per-state records (issue 12.1): every settle of a graph state writes its record (node,
identifier, status, attempt, inputs, outputs / error / prune data, parents, times, worker)
into its run's states hash, inside the settle script; `sm.state` and `sm.run_graph` read
them. Fan-out / fan-in parents, a retried and a failed state, the truncation marker, expiry
with the run (finished and cancelled), two lanes, and Runtime(state_records="off")."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    RunNotFound,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.broker.runs import TRUNCATED
from exospherehost.errors import InvalidArgument
from exospherehost.runtime import lanes as runtime_lanes
from tests.integration.helpers import running
from tests.integration.promises_support import until

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too

BIG = 100_000  # characters of the output that must be truncated (cap: 16 KiB per field)


class Split(BaseNode):
    class Inputs(BaseModel):
        n: int
        fail_at: int = -1

    class Outputs(BaseModel):
        value: int
        fail_at: int

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(value=i, fail_at=self.inputs.fail_at) for i in range(self.inputs.n)]


class Work(BaseNode):
    """value 1 fails its first attempt (retried); value == fail_at always fails."""

    tries: ClassVar[dict[str, int]] = {}

    class Inputs(BaseModel):
        value: int
        fail_at: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        v = self.inputs.value
        key = f"{self.inputs.fail_at}:{v}"
        Work.tries[key] = Work.tries.get(key, 0) + 1
        if v == self.inputs.fail_at:
            raise RuntimeError(f"work {v} is broken")
        if v == 1 and Work.tries[key] == 1:
            raise RuntimeError("flaky first attempt")
        return self.Outputs(value=v * 10)


class Collect(BaseNode):
    class Inputs(BaseModel):
        values: list[int]

    class Outputs(BaseModel):
        total: int

    async def execute(self) -> Outputs:
        return self.Outputs(total=sum(self.inputs.values))


class Big(BaseNode):
    class Inputs(BaseModel):
        size: int

    class Outputs(BaseModel):
        blob: str

    async def execute(self) -> Outputs:
        return self.Outputs(blob="x" * self.inputs.size)


NODES = [Split, Work, Collect, Big]
RETRY = RetryPolicyModel(max_retries=1, backoff_factor=1)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    Work.tries.clear()
    monkeypatch.setattr(runtime_lanes, "LANE_CHECK_S", 0.2)


def _rt(url: str, ns: str, **kw: object) -> Runtime:
    return Runtime(
        namespace=ns,
        name="records",
        nodes=NODES,
        redis_url=url,
        run_retention=timedelta(seconds=300),
        **kw,  # type: ignore[arg-type]
    )


def _fan(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="split",
            inputs={"n": "${{ store.n }}", "fail_at": "${{ store.fail_at }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace=ns,
            identifier="work",
            inputs={
                "value": "${{ split.outputs.value }}",
                "fail_at": "${{ split.outputs.fail_at }}",
            },
            next_nodes=["collect"],
        ),
        GraphNodeModel(
            node_name="Collect",
            namespace=ns,
            identifier="collect",
            unites=UnitesModel(identifier="split", strategy=UnitesStrategyEnum.ALL_DONE),
            inputs={"values": "${{ work.outputs.value }}"},
        ),
    ]


async def _upsert_fan(sm: StateManager, ns: str) -> None:
    await sm.upsert_graph(
        "fan",
        _fan(ns),
        secrets={},
        retry_policy=RETRY,
        store_config=StoreConfigModel(required_keys=["n"], default_values={"fail_at": "-1"}),
        validation_timeout=20,
    )


async def _upsert_slow(sm: StateManager, ns: str) -> None:
    await sm.upsert_graph(
        "slow",
        _fan(ns),
        secrets={},
        retry_policy=RetryPolicyModel(max_retries=1, backoff_factor=60_000),
        store_config=StoreConfigModel(required_keys=["n"], default_values={"fail_at": "-1"}),
        validation_timeout=20,
    )


async def test_fan_out_fan_in_records_parents_times_worker_retry_and_failure(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = _rt(redis_url, namespace)
    async with running(rt):
        await _upsert_fan(sm, namespace)
        run = await sm.trigger("fan", store={"n": "4", "fail_at": "3"})
        status = await sm.wait(run, timeout=30)
        graph = await sm.run_graph(run)
    assert status.status == "FAILED", status  # work 3 failed for good
    states = graph.states
    by_ident: dict[str, list[str]] = {}
    for sid, st in states.items():
        by_ident.setdefault(st.identifier, []).append(sid)
    assert {k: len(v) for k, v in by_ident.items()} == {"split": 1, "work": 4, "collect": 1}
    [split] = by_ident["split"]
    [collect] = by_ident["collect"]
    works = {states[s].inputs["value"]: s for s in by_ident["work"]}  # type: ignore[index]

    # Parents: split -> every work; the unite's parents are the branches' last states.
    assert states[split].parents == []
    assert all(states[s].parents == [split] for s in works.values())
    assert sorted(states[collect].parents) == sorted(works.values())
    assert sorted(graph.edges) == sorted(
        [(split, w) for w in works.values()] + [(w, collect) for w in works.values()]
    )

    sp = states[split]
    assert (sp.node, sp.status, sp.attempt) == ("Split", "SUCCEEDED", 1)
    assert sp.inputs == {"n": "4", "fail_at": "3"}  # as the state received them (store strings)
    assert sp.outputs == [{"value": i, "fail_at": 3} for i in range(4)]
    assert sp.worker == rt.consumer
    # Retried: attempt 2 succeeded; failed for good after its 2 attempts.
    flaky, broken = states[works[1]], states[works[3]]
    assert (flaky.status, flaky.attempt, flaky.outputs) == ("SUCCEEDED", 2, {"value": 10})
    assert (broken.status, broken.attempt, broken.outputs) == ("FAILED", 2, None)
    assert broken.error is not None and "work 3 is broken" in broken.error
    co = states[collect]
    assert (co.status, co.outputs) == ("SUCCEEDED", {"total": 0 + 10 + 20})
    assert co.inputs is not None and sorted(co.inputs["values"]) == [0, 10, 20]

    # Times: created <= queued <= started <= finished, and a child after its parent.
    for st in states.values():
        assert st.created_ms is not None and st.queued_ms is not None, st
        assert st.started_ms is not None and st.finished_ms is not None, st
        assert st.created_ms <= st.queued_ms <= st.started_ms <= st.finished_ms, st
        for p in st.parents:
            assert states[p].finished_ms is not None
            assert states[p].finished_ms <= st.created_ms, (states[p], st)  # type: ignore[operator]
        assert st.worker == rt.consumer and st.truncated == []

    # sm.state reads one record alike (the unite's parents included).
    one = await sm.state(run, works[3])
    assert one == broken
    assert (await sm.state(run, collect)).parents == co.parents
    assert (await sm.state(run, split)).created_ms == status.created_ms


async def test_a_retrying_record_then_errors_and_bad_arguments(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """While its retry waits, the state's record says RETRYING with the error; unknown
    states and runs are refused by name."""
    async with running(_rt(redis_url, namespace)):
        await _upsert_slow(sm, namespace)
        run = await sm.trigger("slow", store={"n": "2"})

        async def one_retrying() -> bool:
            graph = await sm.run_graph(run)
            return any(s.status == "RETRYING" for s in graph.states.values())

        await until(one_retrying, "a RETRYING record of work 1")
        graph = await sm.run_graph(run)
        retrying = [s for s in graph.states.values() if s.status == "RETRYING"]
        assert len(retrying) == 1, graph.states
        assert retrying[0].error is not None and "flaky first attempt" in retrying[0].error
        assert retrying[0].attempt == 1
        with pytest.raises(RunNotFound, match="has no record"):
            await sm.state(run, "nosuchstate")
        with pytest.raises(RunNotFound, match="not found"):
            await sm.state("nosuchrun", "x")
        with pytest.raises(RunNotFound, match="not found"):
            await sm.run_graph("nosuchrun")
        with pytest.raises(InvalidArgument, match="state_id"):
            await sm.state(run, "")
        await sm.cancel(run, retention=timedelta(seconds=77))


async def test_a_huge_output_is_stored_as_a_truncation_marker(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(_rt(redis_url, namespace)):
        await sm.upsert_graph(
            "big",
            [
                GraphNodeModel(
                    node_name="Big", namespace=namespace, identifier="big", inputs={"size": BIG}
                )
            ],
            secrets={},
            validation_timeout=20,
        )
        run = await sm.trigger("big")
        assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"
        graph = await sm.run_graph(run)
    [(sid, st)] = graph.states.items()
    assert st.truncated == ["outputs"]
    assert isinstance(st.outputs, dict) and st.outputs[TRUNCATED] > BIG
    assert st.outputs["preview"].startswith("{'blob': 'xxx")
    assert st.inputs == {"size": BIG}  # small fields are kept
    key = sm.broker.keys.for_run(run).run_states(run)
    assert await redis.hstrlen(key, sid) < 2_000  # the record itself stays small
    assert (await sm.results(run))[0]["outputs"]["blob"] == "x" * BIG  # results untouched


async def test_records_expire_with_the_run_finished_or_cancelled(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(_rt(redis_url, namespace)):
        await _upsert_fan(sm, namespace)
        run = await sm.trigger("fan", store={"n": "2"})
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
    k = sm.broker.keys.for_run(run)
    states_ttl = await redis.ttl(k.run_states(run))
    assert 0 < states_ttl <= 300
    assert abs(states_ttl - await redis.ttl(k.run(run))) <= 1
    assert (
        await redis.hlen(k.run_states(run)) == 4 + 2
    )  # 4 records + 2 parent pointers (split -> work)
    # A cancelled run: cancel gives its records the run's retention too.
    async with running(_rt(redis_url, namespace)):
        await _upsert_slow(sm, namespace)  # work 1's retry waits a minute: still running
        Work.tries.clear()  # work 1 fails its first attempt again
        slow = await sm.trigger("slow", store={"n": "2"})
        ks = sm.broker.keys.for_run(slow)

        async def retry_recorded() -> bool:
            graph = await sm.run_graph(slow)
            return any(s.status == "RETRYING" for s in graph.states.values())

        await until(retry_recorded, "the retrying record of the run to cancel")
        assert await redis.ttl(ks.run_states(slow)) == -1  # running: no expiry yet
        await sm.cancel(slow, retention=timedelta(seconds=50))
    assert 0 < await redis.ttl(ks.run(slow)) <= 50
    assert 0 < await redis.ttl(ks.run_states(slow)) <= 50


async def test_records_of_runs_on_two_lanes(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    tags = await sm.set_lanes(2)
    assert len(tags) == 2
    async with running(_rt(redis_url, namespace)):
        await _upsert_fan(sm, namespace)
        runs = [await sm.trigger("fan", store={"n": "3"}) for _ in range(6)]
        await sm.wait_all(runs, timeout=60)
        graphs = [await sm.run_graph(r) for r in runs]
    lanes = {sm.broker.keys.for_run(r).lane for r in runs}
    assert len(lanes) == 2, lanes  # runs go round robin over the lanes
    for run, graph in zip(runs, graphs, strict=True):
        key = sm.broker.keys.for_run(run).run_states(run)
        assert key.startswith(sm.broker.keys.for_run(run).lane_base), key
        assert await redis.exists(key) == 1
        assert len(graph.states) == 1 + 3 + 1
        assert all(s.status == "SUCCEEDED" for s in graph.states.values())
        assert len(graph.edges) == 3 + 3


async def test_state_records_off_writes_none(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    with pytest.raises(InvalidArgument, match="state_records"):
        _rt(redis_url, namespace, state_records="some")
    async with running(_rt(redis_url, namespace, state_records="off")):
        await _upsert_fan(sm, namespace)
        run = await sm.trigger("fan", store={"n": "2"})
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
    assert await redis.exists(sm.broker.keys.for_run(run).run_states(run)) == 0
    assert (await sm.run_graph(run)).states == {}
