"""Node classes of the throughput benchmarks (served by `benchmarks.worker`).

`Noop` does nothing, so a drain of its stream measures the SDK's per-state overhead:
read, decode, validate inputs, call `execute`, dump outputs, plan and run the settle
script. `A` -> `B` -> `C` is a three-stage chain: each adds one to `x`, so a run started
with `x = i` ends with `C.outputs.x == i + 3` (checked by the benchmark).

`Fan` -> `Branch` -> `Unite` is the fan-out/fan-in graph of W3: `Fan` returns `n` outputs
`x = run * n + j` (j = 0..n-1), each `Branch` adds one, and `Unite` (a uniting node on
`Fan`) receives the list of every branch's `x` and returns it, so run `i` ends with one
result `values == [i * n + j + 1 for j in range(n)]` (checked by the benchmark).

`Sleep` awaits its input `ms` (W4: slow nodes, benchmarks/fairness.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from exospherehost import BaseNode


class Noop(BaseNode):
    class Inputs(BaseModel):
        name: str
        data: dict[str, Any]

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        return self.Outputs(ok=True)


class A(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x + 1)


class B(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x + 1)


class C(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x + 1)


class Fan(BaseNode):
    class Inputs(BaseModel):
        run: int
        n: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> list[Outputs]:
        base = self.inputs.run * self.inputs.n
        return [self.Outputs(x=base + j) for j in range(self.inputs.n)]


class Branch(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x + 1)


class Unite(BaseNode):
    class Inputs(BaseModel):
        values: list[int]

    class Outputs(BaseModel):
        values: list[int]

    async def execute(self) -> Outputs:
        return self.Outputs(values=self.inputs.values)


class Sleep(BaseNode):
    """W4's slow node: an AI/API call stand-in that awaits `ms` milliseconds."""

    class Inputs(BaseModel):
        ms: int

    class Outputs(BaseModel):
        ms: int

    async def execute(self) -> Outputs:
        await asyncio.sleep(self.inputs.ms / 1000)
        return self.Outputs(ms=self.inputs.ms)


class SleepLong(Sleep):
    """W4's `mixed-nodes`: the same body as Sleep, a node of its own for the long states
    (one Runtime serving a fast node and a slow one)."""


NODE_SETS: dict[str, list[type[BaseNode]]] = {
    "noop": [Noop],
    "sleep": [Sleep],
    "sleep2": [Sleep, SleepLong],
    "chain": [A, B, C],
    "fan": [Fan, Branch, Unite],
}
"""What a benchmark worker serves, by the name passed on its command line."""
