"""A node that blocks the event loop is reported while it blocks: node, state, the line it
is stuck on, and how long it held the loop (issue 12.5, runtime/loopwatch.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime, StateManager
from exospherehost.runtime.loopwatch import Culprit, Episodes, culprit
from tests.integration.helpers import running


class Blocker(BaseNode):
    class Inputs(BaseModel):
        seconds: float

    class Outputs(BaseModel):
        ok: bool

    async def execute(self) -> Outputs:
        time.sleep(self.inputs.seconds)  # noqa: ASYNC251 - the mistake being reported
        return self.Outputs(ok=True)


async def test_a_node_blocking_the_loop_is_named_with_its_state_and_duration(
    redis_url: str, namespace: str, sm: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    rt = Runtime(namespace=namespace, name="block", nodes=[Blocker], redis_url=redis_url)
    rt.loop_block_warn_s = 0.3
    caplog.set_level(logging.WARNING, logger="exospherehost.runtime.loopwatch")
    freed = threading.Event()

    class Freed(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "free again" in record.getMessage():
                freed.set()

    handler = Freed()
    logging.getLogger("exospherehost.runtime.loopwatch").addHandler(handler)
    async with running(rt):
        fine = await sm.enqueue("Blocker", {"seconds": 0.0})
        await sm.wait_for_states("Blocker", [fine], timeout=10)
        state = await sm.enqueue("Blocker", {"seconds": 1.2})
        await sm.wait_for_states("Blocker", [state], timeout=10)
        # The watch thread says "free again" within its interval of the loop's return.
        assert await asyncio.to_thread(freed.wait, 5), caplog.text
    logging.getLogger("exospherehost.runtime.loopwatch").removeHandler(handler)
    # Only the blocker's episode: on an overloaded machine another may be seen.
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.endswith("loopwatch") and "node Blocker" in r.getMessage()
    ]
    assert len(lines) == 2, lines
    blocked, free = lines
    assert f"node Blocker (state {state}) at " in blocked, blocked
    assert "test_loop_block.py" in blocked and "has blocked the event loop for" in blocked
    assert "asyncio.to_thread" in blocked
    assert free.startswith("the event loop is free again: node Blocker"), free
    held = float(free.rsplit("for ", 1)[1].split(" s")[0])
    assert 0.9 <= held <= 3.0, free


def test_culprit_outside_node_code_names_the_line() -> None:
    import sys

    got = culprit(sys._getframe())
    assert got is not None and got.node is None
    assert "test_culprit_outside_node_code_names_the_line" in got.where
    assert got.describe().startswith("code outside node execution at ")


def test_episodes_are_rate_limited_per_culprit_and_count_what_was_held() -> None:
    now = [0.0]
    eps = Episodes(30.0, clock=lambda: now[0])
    assert eps.admit("A") == 0
    assert eps.admit("A") is None
    assert eps.admit("B") == 0
    now[0] = 31.0
    assert eps.admit("A") == 1
    assert Culprit("N", "s1", "f.py:1 (execute)").key == "N"


def test_an_idle_loop_is_no_culprit() -> None:
    """A loop waiting in its selector holds nothing (a stale stamp there means the process
    was not scheduled)."""
    import sys

    started = threading.Event()
    idents: list[int] = []

    async def idle() -> None:
        idents.append(threading.get_ident())
        started.set()
        await asyncio.sleep(0.5)

    thread = threading.Thread(target=asyncio.run, args=(idle(),))
    thread.start()
    assert started.wait(5)
    time.sleep(0.2)  # the loop thread is now inside select(); nothing to await from here
    frame = sys._current_frames().get(idents[0])
    thread.join()
    assert frame is not None
    assert culprit(frame) is None, frame
