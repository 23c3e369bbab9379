"""Keeping the claims of long executions alive, so a healthy slow state is not reclaimed
by another worker."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import Retrier, pause
from exospherehost.runtime.upkeep.holdings import Holdings

log = logging.getLogger("exospherehost.runtime.worker")
CHUNK = 500  # entry ids per heartbeat call


async def heartbeat(
    broker: Broker,
    consumer: str,
    holdings: Holdings,
    visibility_ms: int,
    done: asyncio.Event,
    retry: Retrier,
) -> None:
    """Every third of the visibility timeout, renew our claim on entries held longer than
    that, until `done`: executions finishing in a shutdown's grace period still need
    their claims kept."""
    interval = visibility_ms / 3000
    let_go = 0  # finished states left to lapse, said once per stall
    while not await pause(interval, done):
        now = time.monotonic()
        old = now - interval
        stalled = holdings.stalled(now - visibility_ms / 1000)
        if len(stalled) > let_go:
            log.warning(
                "%d finished states could not be settled for %.0fs (Redis refuses or "
                "cannot be reached from this worker); their claims are left to lapse so "
                "another worker takes them over",
                len(stalled),
                visibility_ms / 1000,
            )
        let_go = len(stalled)
        for node, held in holdings.held.items():
            ids = [i for i, t in held.items() if t <= old and (node, i) not in stalled]
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                lost = await retry.until_ok(partial(broker.heartbeat, node, consumer, chunk))
                if lost:
                    log.warning(
                        "%d %s states were reclaimed by another worker; their "
                        "late settles will emit nothing",
                        len(lost),
                        node,
                    )
