"""Reports node code that blocks the event loop (issue 12.5).

One Runtime process runs all its executions, its reads, settles and heartbeats on one event
loop: a node that calls blocking code (`time.sleep`, a synchronous HTTP client, a long CPU
loop) in `execute` stalls every other execution and the claim refreshes with it, and from
outside the worker just looks slow. A coroutine on the loop stamps the time every
`interval`; a daemon thread checks the stamp, and when it is older than `threshold` it
looks at the loop thread's stack *while the loop is still blocked*, so it can name the node
(and state) whose `execute` is on it and the line it is stuck on. One WARNING per blocking
episode, one more when the loop is free again with how long it was held; per culprit at
most one episode line per `quiet_s`, the next one saying how many were held back.

The decision (`culprit`, `Episodes`) is pure; the thread and the coroutine are the I/O."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from exospherehost.node import BaseNode

log = logging.getLogger("exospherehost.runtime.loopwatch")


@dataclass(frozen=True)
class Culprit:
    """What held the loop: a node's execution (node and state named) or other code."""

    node: str | None
    state_id: str | None
    where: str  # file:line (function) of the innermost frame

    @property
    def key(self) -> str:
        return self.node or self.where

    def describe(self) -> str:
        if self.node is not None:
            return f"node {self.node} (state {self.state_id}) at {self.where}"
        return f"code outside node execution at {self.where}"


def culprit(frame: FrameType | None) -> Culprit | None:
    """Who is running in `frame` (the innermost frame of the loop's thread): the nearest
    `execute` of a BaseNode on the stack, else the innermost frame itself."""
    if frame is None or _idle(frame):
        return None
    code = frame.f_code
    where = f"{code.co_filename}:{frame.f_lineno} ({code.co_name})"
    f: FrameType | None = frame
    while f is not None:
        if f.f_code.co_name == "execute":
            node = f.f_locals.get("self")
            if isinstance(node, BaseNode):
                return Culprit(type(node).__name__, getattr(node, "state_id", None), where)
        f = f.f_back
    return Culprit(None, None, where)


def _idle(frame: FrameType) -> bool:
    """The loop waits for I/O (asyncio's selector, or uvloop, whose loop has no Python
    frame of its own): a stale stamp then means this process was not scheduled (an
    overloaded machine), not that code held the loop."""
    code = frame.f_code
    name, path = code.co_name, code.co_filename.replace("\\", "/")
    if name == "select" and path.endswith("/selectors.py"):
        return True
    return name in ("run_forever", "run_until_complete", "run") and "/asyncio/" in path


class Episodes:
    """Rate limit of the episode lines: per culprit key, one line per `quiet_s`."""

    def __init__(self, quiet_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_s = quiet_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None when this episode is not to be logged; else how many were held back."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.quiet_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class LoopWatch:
    """Start with `await watch.run()` as a task on the loop to watch; `stop()` ends both."""

    def __init__(
        self, threshold_s: float = 1.0, interval_s: float = 0.1, quiet_s: float = 30.0
    ) -> None:
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.episodes = Episodes(quiet_s)
        self._stamp = time.monotonic()
        self._loop_thread: int | None = None
        self._stopped = threading.Event()

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self._stamp = time.monotonic()
        thread = threading.Thread(target=self._watch, name="exo-loopwatch", daemon=True)
        thread.start()
        try:
            while True:
                self._stamp = time.monotonic()
                await asyncio.sleep(self.interval_s)
        finally:
            self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        blocked: Culprit | None = None
        logged = False
        since = 0.0
        while not self._stopped.wait(self.interval_s):
            stamp = self._stamp
            lag = time.monotonic() - stamp
            if lag <= self.threshold_s:
                if blocked is not None and logged:
                    log.warning(
                        "the event loop is free again: %s held it for %.1f s",
                        blocked.describe(),
                        time.monotonic() - since,
                    )
                blocked = None
                continue
            if blocked is not None:
                continue  # the same episode, already judged
            assert self._loop_thread is not None
            blocked = culprit(sys._current_frames().get(self._loop_thread))
            if blocked is None:
                continue
            since = stamp
            held = self.episodes.admit(blocked.key)
            logged = held is not None
            if logged:
                more = f" ({held} more such episodes not logged)" if held else ""
                log.warning(
                    "%s has blocked the event loop for %.1f s: every other execution, "
                    "read, settle and heartbeat of this worker waits; run blocking work "
                    "with `await asyncio.to_thread(...)` or an async client%s",
                    blocked.describe(),
                    lag,
                    more,
                )
