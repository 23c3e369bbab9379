"""Issue 14: the SDK on a real 3-master Redis Cluster, through the URL of one node: in a
namespace on each master, the README quick start (a graph with fan-out and fan-in),
retries, a dead letter and its redrive, a cron trigger firing, the StateManager's reads;
`exosphere status` through any node lists the namespaces of every master."""

from __future__ import annotations

import asyncio
import json
import time
from typing import ClassVar

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from exospherehost import (
    BaseNode,
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.broker.connection import ClusterAwareRedis
from exospherehost.cli import cli
from exospherehost.testing.cluster import PrivateCluster
from tests.cluster.conftest import MASTERS, namespace_on
from tests.integration.apps.nodes import Collect, Label, SampleNode, Split, Square, Work
from tests.integration.helpers import running, squares_graph

pytestmark = [pytest.mark.redis]


class FailsFirst(BaseNode):
    """Fails the first execution of each state (in this process), succeeds afterwards."""

    failed: ClassVar[set[str]] = set()

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        if self.state_id not in FailsFirst.failed:
            FailsFirst.failed.add(self.state_id)
            raise RuntimeError(f"first attempt of {self.state_id} fails")
        return self.Outputs(x=self.inputs.x)


NODES = [Split, Square, Label, Work, Collect, FailsFirst, SampleNode]


def fan_in(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Split", namespace=ns, identifier="fan",
            inputs={"items": "${{ store.n }}"}, next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work", namespace=ns, identifier="work",
            inputs={"value": "${{ fan.outputs.value }}"}, next_nodes=["collect"],
        ),
        GraphNodeModel(
            node_name="Collect", namespace=ns, identifier="collect",
            unites=UnitesModel(identifier="fan", strategy=UnitesStrategyEnum.ALL_SUCCESS),
            inputs={"values": "${{ work.outputs.value }}", "items": "${{ store.n }}"},
        ),
    ]  # fmt: skip


def flaky(ns: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="FailsFirst", namespace=ns, identifier="f", inputs={"x": 7})]


@pytest.mark.parametrize("master", range(MASTERS))
async def test_the_quick_start_runs_in_a_namespace_on_each_master(
    cluster: PrivateCluster, master: int
) -> None:
    ns = namespace_on(master)
    # Through another master's URL than the one serving the namespace.
    url = cluster.infos[(master + 1) % MASTERS].url
    rt = Runtime(namespace=ns, name="quick", nodes=NODES, redis_url=url)
    async with running(rt), StateManager(ns, redis_url=url) as sm:
        assert isinstance(sm.client, ClusterAwareRedis)
        assert await sm.client.decide() is not None, "the cluster was not detected"
        # The README's graphless state.
        state = await sm.enqueue("SampleNode", {"name": "Alice", "data": {"k": 1}})
        out = (await sm.wait_for_states("SampleNode", [state], timeout=10))[state]
        assert out.outputs == {"message": "success", "processed_data": {"input": {"k": 1}}}

        # Fan-out and templates of ancestors.
        await sm.upsert_graph("squares", squares_graph(ns, items=4), secrets={})
        run = await sm.trigger("squares", inputs={"base": 10})
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
        assert sorted(r["outputs"]["square"] for r in await sm.results(run)) == [
            100, 121, 144, 169,
        ]  # fmt: skip
        assert len(await sm.run_history(run)) == 9

        # Fan-in: the uniting node fires once with every branch's value.
        await sm.upsert_graph(
            "fan", fan_in(ns), secrets={}, store_config=StoreConfigModel(required_keys=["n"])
        )
        run = await sm.trigger("fan", store={"n": 5})
        status = await sm.wait(run, timeout=10)
        assert status.status == "SUCCEEDED" and status.nodes["collect"].succeeded == 1
        (collected,) = await sm.results(run)
        assert sorted(collected["outputs"]["values"]) == [0, 1, 2, 3, 4]

        # Retries: the first attempt fails, the retry succeeds.
        policy = RetryPolicyModel(
            max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=10
        )
        await sm.upsert_graph("retry", flaky(ns), secrets={}, retry_policy=policy)
        run = await sm.trigger("retry")
        status = await sm.wait(run, timeout=10)
        assert status.status == "SUCCEEDED" and status.nodes["f"].retried == 1

        # No retries: a dead letter, redriven once, then the run succeeds.
        await sm.upsert_graph(
            "doomed", flaky(ns), secrets={}, retry_policy=RetryPolicyModel(max_retries=0)
        )
        run = await sm.trigger("doomed")
        assert (await sm.wait(run, timeout=10)).status == "FAILED"
        (dead,) = [d for d in await sm.dead_letters() if d.run_id == run]
        assert "first attempt" in dead.error
        assert await sm.redrive(dead.id) is True
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
        assert [d for d in await sm.dead_letters() if d.run_id == run] == []

        # Cron: a trigger every second fires (once per second, whoever schedules it).
        await sm.upsert_graph(
            "tick",
            flaky(ns)[:1],
            secrets={},
            triggers=[CronTrigger(expression="* * * * * *")],
            retry_policy=policy,
        )
        deadline = time.monotonic() + 10
        while not (runs := await sm.list_runs("tick")):
            assert time.monotonic() < deadline, "the cron trigger did not fire in 10s"
            await asyncio.sleep(0.1)
        assert (await sm.wait(runs[-1].run_id, timeout=10)).status == "SUCCEEDED"


async def test_status_through_any_node_lists_the_namespaces_of_every_master(
    cluster: PrivateCluster,
) -> None:
    spread = [namespace_on(m) for m in range(MASTERS)]
    for ns in spread:
        async with StateManager(ns, redis_url=cluster.url) as sm:
            await sm.broker.registry.register({"Square": "{}"})
    for info in cluster.infos:
        assert set(spread) <= set(await StateManager.namespaces(info.url))
        env = {"EXOSPHERE_REDIS_URL": info.url, "EXOSPHERE_NAMESPACE": None}
        args = ["status", "--interval", "0.1", "--json"]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout.strip().splitlines()[-1])["namespaces"]
        assert set(spread) <= set(shown), (info.port, sorted(shown))
        for ns in spread:
            pinned = await asyncio.to_thread(CliRunner().invoke, cli, ["-n", ns, *args], env=env)
            assert pinned.exit_code == 0, pinned.output
            assert (
                "Square"
                in json.loads(pinned.stdout.strip().splitlines()[-1])["namespaces"][ns]["nodes"]
            )
