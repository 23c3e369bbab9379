"""Cancel tasks so that they end, although one `Task.cancel()` can be lost.

On Python 3.11, `asyncio.wait_for` returns the inner result instead of raising when the
cancel arrives in the loop iteration in which the inner awaitable finished (CPython
gh-86296; 3.12 rewrote wait_for on `asyncio.timeout`). redis-py sends every command
through `wait_for` when the client has a `socket_timeout` (ours has one, to detect a hung
server), so a loop making Redis calls loses about one cancel in eight (measured against
a local redis-server with redis-py 8.1: 12 of 100 cancels of a task looping on SMEMBERS)
and goes on running; `task.cancel(); await task` then waits for ever. A stopping
Runtime hung that way (the metrics exporter's refresh loop kept running, and its
`suppress(CancelledError)` then swallowed the caller's own cancellation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# Long enough not to interrupt a cancelled task's clean-up (a disconnect, a release),
# short enough that a stop is not held up noticeably.
RECANCEL_S = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], recancel_s: float = RECANCEL_S
) -> list[BaseException | None]:
    """Cancel every task and wait until each has ended, cancelling again every
    `recancel_s` those that go on; returns each task's exception (None when it ended
    cancelled or with a result), so none is left unretrieved. A cancellation of the
    caller propagates (the tasks then keep their cancel requests)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
    return [None if t.cancelled() else t.exception() for t in tasks]
