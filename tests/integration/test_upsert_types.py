"""On a real server: a graph mapping a fan-out's list into a `str` of a uniting node is
refused by upsert_graph against the schemas the Runtime registered (before: accepted,
then every run FAILED at the unite with "Input should be a valid string")."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager, UnitesModel
from exospherehost.errors import GraphValidationError
from tests.integration.helpers import running


class Fan(BaseNode):
    class Inputs(BaseModel):
        n: int

    class Outputs(BaseModel):
        tag: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(tag=f"t{i}") for i in range(self.inputs.n)]


class Join(BaseNode):
    class Inputs(BaseModel):
        tag: str = ""
        tags: list[str] = []

    class Outputs(BaseModel):
        joined: str

    async def execute(self) -> Outputs:
        return self.Outputs(joined=",".join(self.inputs.tags) or self.inputs.tag)


def _graph(ns: str, field: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Fan", namespace=ns, identifier="fan", inputs={"n": 3}, next_nodes=["join"]
        ),
        GraphNodeModel(
            node_name="Join",
            namespace=ns,
            identifier="join",
            inputs={field: "${{ fan.outputs.tag }}"},
            unites=UnitesModel(identifier="fan"),
        ),
    ]


async def test_a_list_into_a_str_is_refused_and_into_a_list_runs(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = Runtime(namespace=namespace, name="types", nodes=[Fan, Join], redis_url=redis_url)
    async with running(rt):
        with pytest.raises(GraphValidationError) as info:
            await sm.upsert_graph("bad", _graph(namespace, "tag"), validation_timeout=5)
        await sm.upsert_graph("good", _graph(namespace, "tags"), validation_timeout=5)
        run = await sm.trigger("good")
        results = await sm.results(run, timeout=10)
    [error] = info.value.errors
    assert "node 'join' (Join) input 'tag' expects str but gets list" in error, error
    assert [r["outputs"] for r in results] == [{"joined": "t0,t1,t2"}]
    with pytest.raises(KeyError):
        await sm.get_graph("bad")
