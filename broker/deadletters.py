"""The namespace's dead-letter streams (Keys.dead, one per lane), read into frozen records.

A dead letter's id is its entry id on its lane's dead-letter stream, with `@n` after it on
the lane of tag number n (`1764600000000-0@301`); on lane 0 it is the bare entry id, as it
was before lanes. Listings over several lanes are ordered by (entry id, lane)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
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


def split_dead_id(dead_id: str) -> tuple[int, str]:
    """A dead letter's id -> (its lane's tag number, its entry id on that lane)."""
    entry, sep, lane = dead_id.rpartition("@")
    if sep and lane.isdigit():
        return int(lane), entry
    return 0, dead_id


def dead_id(lane: int, entry_id: str) -> str:
    """The id of a dead letter of entry `entry_id` on lane `lane` (see split_dead_id)."""
    return entry_id if lane == 0 else f"{entry_id}@{lane}"


def _order(dead: str) -> tuple[int, int, int]:
    lane, entry = split_dead_id(dead)
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0), lane


class DeadLetterReader:
    """The dead letters of `keys`' lane; with `lanes` (lane 0's reader), of every lane."""

    __slots__ = ("_client", "_keys", "_lanes")

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        lanes: Callable[[], Awaitable[list[Keys]]] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._lanes = lanes

    async def _lane_keys(self) -> list[Keys]:
        return [self._keys] if self._lanes is None else await self._lanes()

    async def range(self, start: str, count: int) -> list[DeadRecord]:
        """Up to `count` dead letters from id `start` (XRANGE syntax: "-", an id, or
        "(id" for after it), oldest first: ordered by (entry id, lane) over the lanes."""
        lanes = await self._lane_keys()
        exclusive = start.startswith("(")
        lane, entry = (0, "-") if start == "-" else split_dead_id(start.lstrip("("))
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            if entry == "-":
                first = "-"
            elif keys.lane > lane or (keys.lane == lane and not exclusive):
                first = entry
            else:
                first = f"({entry}"
            pipe.xrange(keys.dead(), min=first, count=count)
        found: list[DeadRecord] = []
        for keys, entries in zip(lanes, await pipe.execute(), strict=True):
            found += _parse(entries, keys.lane)
        found.sort(key=lambda r: _order(r.id))
        return found[:count]

    async def get(self, dead: str) -> DeadRecord | None:
        lane, entry = split_dead_id(dead)
        key = self._keys.on_lane(lane).dead()
        entries = await self._client.xrange(key, min=entry, max=entry)
        return _parse(entries, lane)[0] if entries else None

    async def last_id(self) -> str | None:
        """The newest dead letter's id on `keys`' lane (None: there is none)."""
        tail = await self._client.xrevrange(self._keys.dead(), count=1)
        return dead_id(self._keys.lane, tail[0][0].decode()) if tail else None

    async def last_ids(self) -> dict[int, str]:
        """Lane tag number -> the id of its newest dead letter, for lanes that have one."""
        lanes = await self._lane_keys()
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            pipe.xrevrange(keys.dead(), count=1)
        return {
            keys.lane: dead_id(keys.lane, tail[0][0].decode())
            for keys, tail in zip(lanes, await pipe.execute(), strict=True)
            if tail
        }

    async def count(self) -> int:
        lanes = await self._lane_keys()
        if len(lanes) == 1:
            return int(await self._client.xlen(lanes[0].dead()))
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            pipe.xlen(keys.dead())
        return sum(int(n) for n in await pipe.execute())


def _parse(entries: list[StreamEntry], lane: int = 0) -> list[DeadRecord]:
    records = [DeadRecord.parse(i, fields) for i, fields in entries]
    if lane:
        records = [replace(r, id=dead_id(lane, r.id)) for r in records]
    return records
