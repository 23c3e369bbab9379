"""The example pipeline the deployment runs: split -> square -> label, with fan-out.

`Split` turns one run into `items` states of `Square` (one per output), and each `Label`
combines an output of its parent (`square`) with one of its grandparent (`split`).
"""

from __future__ import annotations

from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel

GRAPH_NAME = "squares"
SPLIT_ITEMS = 3
"""How many values the graph's `split` fans out to per run."""


class Split(BaseNode):
    """Fans out: one output (hence one successor state) per item."""

    class Inputs(BaseModel):
        items: int
        base: int = 0

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(value=self.inputs.base + k) for k in range(self.inputs.items)]


class Square(BaseNode):
    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        square: int

    async def execute(self) -> Outputs:
        return self.Outputs(square=self.inputs.value**2)


class Label(BaseNode):
    """Uses an output of its parent and of its grandparent."""

    class Inputs(BaseModel):
        square: int
        value: int
        text: str

    class Outputs(BaseModel):
        square: int
        value: int
        text: str

    async def execute(self) -> Outputs:
        i = self.inputs
        return self.Outputs(square=i.square, value=i.value, text=i.text)


ALL: list[type[BaseNode]] = [Split, Square, Label]


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    """The graph template of GRAPH_NAME in `namespace`: split -> square -> label."""
    return [
        GraphNodeModel(
            node_name=Split.__name__,
            namespace=namespace,
            identifier="split",
            inputs={"items": SPLIT_ITEMS, "base": 0},
            next_nodes=["square"],
        ),
        GraphNodeModel(
            node_name=Square.__name__,
            namespace=namespace,
            identifier="square",
            inputs={"value": "${{ split.outputs.value }}"},
            next_nodes=["label"],
        ),
        GraphNodeModel(
            node_name=Label.__name__,
            namespace=namespace,
            identifier="label",
            inputs={
                "square": "${{ square.outputs.square }}",
                "value": "${{ split.outputs.value }}",
                "text": "v=${{ split.outputs.value }} sq=${{ square.outputs.square }}",
            },
        ),
    ]
