"""Node classes shared by in-process tests and the worker subprocesses of e2e tests."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from examples.nodes import Split, Square  # the example graph's nodes, shared
from exospherehost import BaseNode, PruneSignal


class SampleNode(BaseNode):
    """The README's seed example, unchanged."""

    class Inputs(BaseModel):
        name: str
        data: dict

    class Outputs(BaseModel):
        message: str
        processed_data: dict

    async def execute(self) -> Outputs:
        return self.Outputs(message="success", processed_data={"input": self.inputs.data})


class Inner(BaseModel):
    label: str
    weights: list[float]


class Typed(BaseNode):
    """Fields of every msgpack-able kind, not only str."""

    class Inputs(BaseModel):
        count: int
        ratio: float
        flag: bool
        tags: list[str]
        meta: dict[str, int]
        maybe: str | None = None
        inner: Inner

    class Outputs(BaseModel):
        doubled: int
        inner: Inner
        echo: dict

    async def execute(self) -> Outputs:
        i = self.inputs
        return self.Outputs(
            doubled=i.count * 2,
            inner=i.inner,
            echo={
                "ratio": i.ratio,
                "flag": i.flag,
                "tags": i.tags,
                "meta": i.meta,
                "maybe": i.maybe,
            },
        )


class Label(BaseNode):
    """Uses an output of its parent and of its grandparent, and records which process ran it."""

    class Inputs(BaseModel):
        square: int
        value: int
        text: str

    class Outputs(BaseModel):
        square: int
        value: int
        text: str
        pid: int

    async def execute(self) -> Outputs:
        i = self.inputs
        return self.Outputs(square=i.square, value=i.value, text=i.text, pid=os.getpid())


ALL = [SampleNode, Typed, Split, Square, Label]


class Step1(BaseNode):
    """First stage of crash tests. With EXO_TEST_CRASH_AFTER=n the process kills itself
    (SIGKILL, as `kill -9`) at its n-th execution: mid-batch, with states in flight."""

    executed = 0

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int

    async def execute(self) -> Outputs:
        Step1.executed += 1
        if Step1.executed == int(os.environ.get("EXO_TEST_CRASH_AFTER", "0")):
            os.kill(os.getpid(), 9)
        return self.Outputs(i=self.inputs.i)


class Step2(BaseNode):
    """Second stage: records the process that ran it."""

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int
        pid: int

    async def execute(self) -> Outputs:
        return self.Outputs(i=self.inputs.i, pid=os.getpid())


class Hang(BaseNode):
    """With EXO_TEST_HANG_S=s, blocks the whole process (event loop included, as a hung
    process or a long GC pause would) for s seconds on every execution."""

    class Inputs(BaseModel):
        i: int

    class Outputs(BaseModel):
        i: int
        pid: int

    async def execute(self) -> Outputs:
        time.sleep(float(os.environ.get("EXO_TEST_HANG_S", "0")))  # noqa: ASYNC251 - on purpose
        return self.Outputs(i=self.inputs.i, pid=os.getpid())


class Poison(BaseNode):
    """Kills its process (SIGKILL) when asked to; otherwise succeeds."""

    class Inputs(BaseModel):
        kill: bool

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        if self.inputs.kill:
            os.kill(os.getpid(), 9)
        return self.Outputs(ok=True)


ALL += [Step1, Step2, Hang, Poison]


class Work(BaseNode):
    """A branch of a fan-out: prunes or fails permanently at chosen values."""

    class Inputs(BaseModel):
        value: int
        prune_at: int = -1
        fail_at: int = -1

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        if self.inputs.value == self.inputs.prune_at:
            raise PruneSignal({"value": self.inputs.value})
        if self.inputs.value == self.inputs.fail_at:
            raise RuntimeError(f"branch {self.inputs.value} fails for good")
        return self.Outputs(value=self.inputs.value)


class Collect(BaseNode):
    """The uniting node: receives every branch's value as a list."""

    class Inputs(BaseModel):
        values: list[int]
        items: int

    class Outputs(BaseModel):
        values: list[int]
        items: int
        pid: int

    async def execute(self) -> Outputs:
        return self.Outputs(values=self.inputs.values, items=self.inputs.items, pid=os.getpid())


ALL += [Work, Collect]


class Flaky(BaseNode):
    """A branch whose value `fail_at` fails on its first execution only (across processes:
    the first to create the marker file fails), then succeeds; every execution appends
    its value to `log` (one short O_APPEND write: lines never interleave)."""

    class Inputs(BaseModel):
        value: int
        fail_at: int = -1
        marker: str = ""
        log: str = ""

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        v = self.inputs.value
        if self.inputs.log:
            fd = os.open(self.inputs.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.write(fd, f"{v}\n".encode())
            os.close(fd)
        if v == self.inputs.fail_at and self.inputs.marker:
            try:
                os.close(os.open(f"{self.inputs.marker}.{v}", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                raise RuntimeError(f"branch {v} fails on its first execution")
        return self.Outputs(value=v)


ALL += [Flaky]
