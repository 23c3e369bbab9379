"""State and run ids."""

from __future__ import annotations

import os

_PID_PREFIX = os.urandom(6).hex()
_counter = 0


def _reseed() -> None:
    global _PID_PREFIX, _counter
    _PID_PREFIX, _counter = os.urandom(6).hex(), 0


os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat our ids


def new_id() -> str:
    """Unique state/run id: a random per-process prefix and a counter (cheaper than uuid4
    on the hot path, and sortable per process)."""
    global _counter
    _counter += 1
    return f"{_PID_PREFIX}{_counter:x}"
