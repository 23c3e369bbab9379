"""Nodes and helpers the script-failure tests share (test_script_failures.py,
test_mutants_worker.py): a node that fails on demand, a plain one, and a way to use up a
stream's entry ids as a foreign client could."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode

MAX_ID = "18446744073709551615-18446744073709551615"


class Echo(BaseNode):
    """Fails (permanently, with no retries configured) while `failing` holds its x."""

    failing: ClassVar[set[int]] = set()

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        if self.inputs.x in Echo.failing:
            raise ValueError(f"x={self.inputs.x} refused")
        return self.Outputs(x=self.inputs.x)


class Other(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def exhaust(redis: Redis, key: str) -> None:
    """Use up a stream's id space as a foreign client could; the entry itself goes again
    (the last-generated id stays)."""
    await redis.xadd(key, {"f": "v"}, id=MAX_ID)
    await redis.xdel(key, MAX_ID)
