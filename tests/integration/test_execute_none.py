"""`execute` returning None: the state succeeds with empty outputs and its next nodes run,
as in the original SDK (README: Migrating); `[]` is a fan-out into no branches."""

from __future__ import annotations

from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager, StoreConfigModel
from tests.integration.helpers import running


class Notify(BaseNode):
    """Returns None (a side effect only) or [] (nothing to fan out to)."""

    class Inputs(BaseModel):
        to: str
        empty_list: bool = False

    class Outputs(BaseModel):
        sent: str

    async def execute(self) -> list[Outputs] | None:
        return [] if self.inputs.empty_list else None


class After(BaseNode):
    class Inputs(BaseModel):
        to: str

    class Outputs(BaseModel):
        done: str

    async def execute(self) -> Outputs:
        return self.Outputs(done=f"after {self.inputs.to}")


def _graph(ns: str, after_input: str, empty_list: bool = False) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Notify",
            namespace=ns,
            identifier="notify",
            inputs={"to": "${{ store.to }}", "empty_list": empty_list},
            next_nodes=["after"],
        ),
        GraphNodeModel(
            node_name="After", namespace=ns, identifier="after", inputs={"to": after_input}
        ),
    ]


STORE = StoreConfigModel(required_keys=["to"])


def _rt(url: str, ns: str) -> Runtime:
    return Runtime(namespace=ns, name="none", nodes=[Notify, After], redis_url=url)


async def test_none_runs_the_next_nodes_with_empty_outputs(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(_rt(redis_url, namespace)):
        await sm.upsert_graph(
            "g", _graph(namespace, "${{ store.to }}"), secrets={}, store_config=STORE
        )
        run = await sm.trigger("g", store={"to": "ops"})
        status = await sm.wait(run, timeout=10)
        results = await sm.results(run)
        graphless = await sm.enqueue("Notify", {"to": "x"})
        out = (await sm.wait_for_states("Notify", [graphless], timeout=10))[graphless]
    assert status.status == "SUCCEEDED", status
    assert {k: c.succeeded for k, c in status.nodes.items()} == {"notify": 1, "after": 1}
    assert [r["outputs"] for r in results] == [{"done": "after ops"}]
    assert out.outputs == {}


async def test_a_next_node_reading_outputs_of_none_fails_naming_the_field(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(_rt(redis_url, namespace)):
        await sm.upsert_graph(
            "g", _graph(namespace, "${{ notify.outputs.sent }}"), secrets={}, store_config=STORE
        )
        run = await sm.trigger("g", store={"to": "ops"})
        status = await sm.wait(run, timeout=10)
        history = await sm.run_history(run)
    assert status.status == "FAILED", status
    errors = " ".join(r.error or "" for r in history)
    assert (
        "${{ notify.outputs.sent }} but notify has no outputs (its execute returned None)" in errors
    ), history


async def test_an_empty_list_ends_the_branch(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(_rt(redis_url, namespace)):
        await sm.upsert_graph(
            "g",
            _graph(namespace, "${{ store.to }}", empty_list=True),
            secrets={},
            store_config=STORE,
        )
        run = await sm.trigger("g", store={"to": "ops"})
        status = await sm.wait(run, timeout=10)
    assert status.status == "SUCCEEDED", status
    assert status.nodes["notify"].succeeded == 1
    assert "after" not in status.nodes or status.nodes["after"].succeeded == 0
