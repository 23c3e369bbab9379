"""Shared bits of the promise tests (tests/integration/test_promises_*.py): bounded waits
and the wire-protocol pieces the tests build by hand (README "Wire protocol")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from redis.asyncio import Redis

GROUP = "exo"  # README: every state stream has the one consumer group `exo`


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 15.0
) -> None:
    """Poll `check` (sync or async) until true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for: {what}"
        await asyncio.sleep(0.02)


def envelope(**fields: Any) -> dict[str, bytes]:
    """A stream entry holding a msgpack envelope (the `_exo` field), byte for byte as
    any client may write it."""
    return {"_exo": msgpack.packb(fields, use_bin_type=True)}


async def pending_entries(redis: Redis, stream: str) -> list[dict[str, Any]]:
    """XPENDING's extended form: id, consumer, idle ms and delivery count per entry."""
    rows = await redis.xpending_range(stream, GROUP, min="-", max="+", count=1000)
    return [
        {
            "id": r["message_id"],
            "consumer": r["consumer"].decode(),
            "idle": int(r["time_since_delivered"]),
            "deliveries": int(r["times_delivered"]),
        }
        for r in rows
    ]
