"""Metrics, second round (issue 13 item 14): gauges of live consumers, oldest pending age,
dead letters and runs running, scraped over HTTP from a Runtime on the session's real
redis-server; the execution histogram leaves out states refused before execute() ran."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from tests.integration.helpers import running
from tests.integration.test_metrics import Gate, free_port, scrape, until

pytestmark = pytest.mark.redis


class Picky(BaseNode):
    """Takes ints only: a state with x="abc" fails validation, execute() never runs."""

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def test_gauges_of_consumers_pending_age_dead_letters_and_runs(
    redis_url: str, namespace: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("exospherehost.runtime.metrics.GAUGE_REFRESH_S", 0.1)
    Gate.opened = asyncio.Event()
    port = free_port()
    # Two executors held by the gate, two free for Picky's states.
    rt = Runtime(
        namespace, "gauges", [Gate, Picky], redis_url=redis_url, metrics_port=port, workers=4
    )
    ns = namespace
    gate = frozenset({"namespace": ns, "node": "Gate"}.items())
    async with running(rt), StateManager(ns, redis_url) as sm:
        await sm.upsert_graph(
            "gated",
            [GraphNodeModel(node_name="Gate", namespace=ns, identifier="g", inputs={"i": 1})],
        )
        runs = [await sm.trigger("gated") for _ in range(2)]
        await sm.enqueue_many("Picky", [{"x": "abc"}, {"x": "def"}])  # dead-lettered
        await sm.enqueue_many("Picky", [{"x": 1}])

        async def shown() -> bool:
            s = await scrape(port)
            return (
                s.get(("exosphere_node_pending", gate)) == 2
                and s.get(("exosphere_node_consumers", gate)) == 1
                and (s.get(("exosphere_node_oldest_pending_seconds", gate)) or 0) > 0.05
                and s.get(("exosphere_dead_letters", frozenset({"namespace": ns}.items()))) == 2
                and s.get(
                    (
                        "exosphere_runs_running",
                        frozenset({"namespace": ns, "graph": "gated"}.items()),
                    )
                )
                == 2
            )

        await until(shown)
        Gate.opened.set()
        for run in runs:
            assert (await sm.wait(run, timeout=15)).status == "SUCCEEDED"

        async def settled() -> bool:
            s = await scrape(port)
            return (
                s.get(
                    (
                        "exosphere_runs_running",
                        frozenset({"namespace": ns, "graph": "gated"}.items()),
                    )
                )
                == 0
                and s.get(("exosphere_node_oldest_pending_seconds", gate)) == 0
            )

        await until(settled)
        samples = await scrape(port)
    picky = {"namespace": ns, "node": "Picky"}
    key = frozenset({**picky, "outcome": "failed"}.items())
    assert samples[("exosphere_node_executions_total", key)] == 2  # failures, counted
    # ... but not executions: only the one valid state has an execution time.
    assert samples[("exosphere_node_execution_seconds_count", frozenset(picky.items()))] == 1
