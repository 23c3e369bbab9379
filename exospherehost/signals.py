"""Signals a node raises to steer its state. Pure exceptions: the Runtime settles them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from exospherehost.errors import InvalidArgument

_NOTE = "NOTE: Do not catch this Exception, let it bubble up to the Runtime"


class PruneSignal(Exception):
    """End this branch: the state is recorded as pruned with `data`, no successors run."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        super().__init__(f"Prune signal received with data: {self.data}\n{_NOTE}")


class ReQueueAfterSignal(Exception):
    """Run this same state again after `delay`; it does not count as a retry."""

    def __init__(self, delay: timedelta) -> None:
        if not isinstance(delay, timedelta):
            raise TypeError(f"ReQueueAfterSignal needs a datetime.timedelta, got {delay!r}")
        if delay.total_seconds() < 0:
            raise InvalidArgument(f"ReQueueAfterSignal delay must not be negative, got {delay}")
        self.delay = delay
        super().__init__(f"ReQueueAfter signal received with timedelta: {delay}\n{_NOTE}")

    @property
    def timedelta(self) -> timedelta:
        """The original SDK's attribute name."""
        return self.delay
