"""Due retries and delayed states, moved to their streams (every Runtime does it: the
script is atomic, so many promoters never duplicate a state)."""

from __future__ import annotations

import time

from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import Retrier, pause

IDLE_WAKE_S = 0.5  # the longest wait between rounds, also when nothing is delayed


async def promote(broker: Broker, nodes: list[str], retry: Retrier) -> None:
    """Promote until stopping: at once again after a round that moved some, else when the
    next one is due (it may come sooner: another Runtime may delay a state meanwhile)."""
    stopping = retry.stopping
    while not stopping.is_set():
        moved, next_due = await retry.until_ok(lambda: broker.promote(nodes))
        if moved:
            continue
        if next_due < 0:
            wait = IDLE_WAKE_S
        else:
            wait = max(0.002, min(IDLE_WAKE_S, next_due / 1000 - time.time()))
        await pause(wait, stopping)
