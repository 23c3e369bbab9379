"""The namespace's dead-letter stream (Keys.dead), read into frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker.client import RedisClient, StreamEntry
from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import Keys

_ORIGINAL = f.DEAD_ORIGINAL.encode()


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead letter as the settle step wrote it (missing fields read as empty)."""

    id: str  # entry id in the dead-letter stream
    node: str
    state_id: str
    run_id: str | None
    identifier: str | None
    attempts: int
    deliveries: int
    error: str
    traceback: str
    time_ms: int
    entry: str  # the id it had on its node stream
    original: dict[bytes, bytes]  # the original entry's fields, byte for byte

    @classmethod
    def parse(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadRecord:
        text = {
            k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k != _ORIGINAL
        }
        original: Any = unpack(fields[_ORIGINAL]) if _ORIGINAL in fields else {}
        return cls(
            id=entry_id.decode(),
            node=text.get(f.DEAD_NODE, ""),
            state_id=text.get(f.DEAD_STATE, ""),
            run_id=text.get(f.DEAD_RUN) or None,
            identifier=text.get(f.DEAD_IDENTIFIER) or None,
            attempts=int(text.get(f.DEAD_ATTEMPTS) or 0),
            deliveries=int(text.get(f.DEAD_DELIVERIES) or 0),
            error=text.get(f.DEAD_ERROR, ""),
            traceback=text.get(f.DEAD_TRACEBACK, ""),
            time_ms=int(text.get(f.DEAD_TIME_MS) or 0),
            entry=text.get(f.DEAD_ENTRY, ""),
            original=original if isinstance(original, dict) else {},
        )


class DeadLetterReader:
    __slots__ = ("_client", "_key")

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._key = keys.dead()

    async def range(self, start: str, count: int) -> list[DeadRecord]:
        """Up to `count` dead letters from entry id `start` (XRANGE syntax: "-", an id,
        or "(id" for after it), oldest first."""
        return _parse(await self._client.xrange(self._key, min=start, count=count))

    async def get(self, dead_id: str) -> DeadRecord | None:
        entries = await self._client.xrange(self._key, min=dead_id, max=dead_id)
        return DeadRecord.parse(*entries[0]) if entries else None

    async def last_id(self) -> str | None:
        """The newest dead letter's id (None: there is none)."""
        tail = await self._client.xrevrange(self._key, count=1)
        return tail[0][0].decode() if tail else None

    async def count(self) -> int:
        return int(await self._client.xlen(self._key))


def _parse(entries: list[StreamEntry]) -> list[DeadRecord]:
    return [DeadRecord.parse(i, fields) for i, fields in entries]
