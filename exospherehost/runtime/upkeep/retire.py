"""Leaving the consumer groups at a clean stop."""

from __future__ import annotations

import logging

from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import is_outage

log = logging.getLogger("exospherehost.runtime.worker")


async def retire(broker: Broker, consumer: str, nodes: list[str]) -> None:
    """Leave the groups of `nodes`, so stopped workers do not pile up as consumers; a
    consumer still holding pending entries stays (they get reclaimed). One attempt: this
    is the last thing a stopping worker does."""
    try:
        kept = await broker.retire(consumer, nodes)
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("could not leave the consumer groups (%s)", exc)
        return
    if kept:
        log.warning("%d stream(s) still hold unsettled entries of %s", kept, consumer)
