"""`sm.list_runs` across a namespace: newest first, paged, with a total, filtered by graph,
status and creation time (issue 12.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    InvalidArgument,
    RetryPolicyModel,
    Runtime,
    StateManager,
)
from tests.integration.helpers import running

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


class Maybe(BaseNode):
    class Inputs(BaseModel):
        fail: bool = False

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        if self.inputs.fail:
            raise ValueError("asked to fail")
        return self.Outputs(ok=True)


def _graph(ns: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Maybe", namespace=ns, identifier="m", inputs={})]


async def test_runs_of_a_namespace_paged_filtered_and_counted(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    no_retry = RetryPolicyModel(max_retries=0)
    rt = Runtime(namespace=namespace, name="lr", nodes=[Maybe], redis_url=redis_url)
    async with running(rt):
        for g in ("a", "b"):
            await sm.upsert_graph(g, _graph(namespace), retry_policy=no_retry)
        a_runs = await sm.trigger_many("a", [{"fail": i % 3 == 0} for i in range(9)])
        before_b = datetime.now(UTC)
        b_runs = await sm.trigger_many("b", [{"fail": False}] * 4)
        await sm.wait_all(a_runs + b_runs, timeout=20)

        everything = await sm.list_runs(count=100)
        assert everything.total == 13 and len(everything) == 13
        created = [r.created_ms for r in everything]
        assert created == sorted(created, reverse=True), "newest first"
        assert {r.run_id for r in everything} == set(a_runs + b_runs)

        first, second = await sm.list_runs(count=7), await sm.list_runs(offset=7, count=7)
        assert first.total == second.total == 13
        assert len(first) == 7 and len(second) == 6
        assert {r.run_id for r in first} | {r.run_id for r in second} == set(a_runs + b_runs)
        assert not {r.run_id for r in first} & {r.run_id for r in second}

        failed = await sm.list_runs(status="FAILED", count=2)
        assert failed.total == 3 and len(failed) == 2
        assert all(r.status == "FAILED" and r.graph == "a" for r in failed)
        rest = await sm.list_runs(status="FAILED", offset=2, count=2)
        assert len(rest) == 1 and rest[0].run_id not in {r.run_id for r in failed}

        only_b = await sm.list_runs("b")
        assert only_b.total == 4 and {r.run_id for r in only_b} == set(b_runs)
        assert (await sm.list_runs("a", status="SUCCEEDED")).total == 6

        since_b = await sm.list_runs(since=before_b - timedelta(milliseconds=1), count=100)
        assert set(b_runs) <= {r.run_id for r in since_b}
        assert (await sm.list_runs(until=before_b - timedelta(days=1))).total == 0
        future = await sm.list_runs(status="SUCCEEDED", since=datetime.now() + timedelta(days=1))
        assert future.total == 0 and list(future) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"status": "DONE"}, "status must be one of CANCELLED, FAILED, RUNNING, SUCCEEDED"),
        ({"offset": -1}, "offset must be an int >= 0"),
        ({"count": 0}, "count must be an int >= 1"),
        ({"since": 1700000000}, "since must be a datetime"),
    ],
)
async def test_bad_listing_arguments_are_named(
    sm: StateManager, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await sm.list_runs(**kwargs)  # type: ignore[arg-type]
