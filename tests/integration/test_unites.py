"""Fan-in (unites): exactly once per group, both strategies, pruned and failed branches,
under two concurrent worker processes."""

from __future__ import annotations

import pytest

from exospherehost import (
    GraphNodeModel,
    RetryPolicyModel,
    StateManager,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from tests.integration.helpers import stop_processes, worker_processes

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too

BRANCHES = 100
S = UnitesStrategyEnum


def fan_graph(ns: str, strategy: S, prune_at: int = -1, fail_at: int = -1) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace=ns,
            identifier="work",
            next_nodes=["collect"],
            inputs={"value": "${{ fan.outputs.value }}", "prune_at": prune_at, "fail_at": fail_at},
        ),
        GraphNodeModel(
            node_name="Collect",
            namespace=ns,
            identifier="collect",
            unites=UnitesModel(identifier="fan", strategy=strategy),
            inputs={"values": "${{ work.outputs.value }}", "items": "${{ store.n }}"},
        ),
    ]


CASES = {
    # name: (strategy, prune_at, fail_at, fires, run status)
    "success-clean": (S.ALL_SUCCESS, -1, -1, True, "SUCCEEDED"),
    "success-pruned": (S.ALL_SUCCESS, 37, -1, False, "SUCCEEDED"),
    "success-failed": (S.ALL_SUCCESS, -1, 99, False, "FAILED"),
    "done-pruned": (S.ALL_DONE, 99, -1, True, "SUCCEEDED"),
    "done-failed": (S.ALL_DONE, -1, 0, True, "FAILED"),
}


@pytest.mark.slow
async def test_unites_fire_exactly_once_per_group_with_two_workers(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    runs: dict[str, list[str]] = {}
    with worker_processes(redis_url, namespace, 2) as procs:
        for name, (strategy, prune_at, fail_at, _, _) in CASES.items():
            await sm.upsert_graph(
                name,
                fan_graph(namespace, strategy, prune_at, fail_at),
                secrets={},
                retry_policy=RetryPolicyModel(max_retries=0),
                store_config=StoreConfigModel(required_keys=["n"]),
                validation_timeout=30,
            )
        for name in CASES:
            runs[name] = [await sm.trigger(name, store={"n": BRANCHES}) for _ in range(4)]
        everything = [r for rs in runs.values() for r in rs]
        statuses = await sm.wait_all(everything, timeout=120)
        outs = stop_processes(procs)
    assert all(p.returncode == 0 for p in procs), outs
    for name, (_, prune_at, fail_at, fires, run_status) in CASES.items():
        bad = {prune_at, fail_at} - {-1}
        expected_values = [v for v in range(BRANCHES) if v not in bad]
        for run in runs[name]:
            st = statuses[run]
            assert st.status == run_status, (name, st)
            collect = st.nodes.get("collect")
            results = [r for r in await sm.results(run) if r["identifier"] == "collect"]
            if fires:
                assert collect is not None and collect.succeeded == 1 and collect.pending == 0
                assert len(results) == 1, (name, results)  # fired exactly once
                out = results[0]["outputs"]
                assert out["values"] == expected_values and out["items"] == BRANCHES
            else:
                assert results == [] and (collect is None or collect.succeeded == 0), name
                assert st.nodes["collect"].skipped == 1
                assert (
                    "did not fire" in st.notes["collect"] and "ALL_SUCCESS" in st.notes["collect"]
                )
            assert st.nodes["work"].succeeded == len(expected_values)
    for node in ("Split", "Work", "Collect"):
        assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
