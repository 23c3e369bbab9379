"""The namespace's dead-letter streams (Keys.dead, one per lane): read into frozen records
(newest first, paged, filtered), counted, and purged.

A dead letter's id is its entry id on its lane's dead-letter stream, with `@n` after it on
the lane of tag number n (`1764600000000-0@301`); on lane 0 it is the bare entry id, as it
was before lanes. Over several lanes letters are ordered by (entry id, lane)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker.client import RedisClient, StreamEntry
from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import Keys

_ORIGINAL = f.DEAD_ORIGINAL.encode()
_NODE, _ERROR, _TRACEBACK = f.DEAD_NODE.encode(), f.DEAD_ERROR.encode(), f.DEAD_TRACEBACK.encode()

CHUNK = 500
"""Entries read per XRANGE while filtering, and ids per XDEL."""

SCAN_LIMIT = 20_000
"""Most entries one filtered page looks at (its cursor goes on from there)."""

COUNT_LIMIT = 200_000
"""Most entries a filtered count looks at."""


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead letter as the settle step wrote it (missing fields read as empty)."""

    id: str  # entry id in its lane's dead-letter stream (`<entry id>@n` on lane n > 0)
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


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters a listing, count, purge or redrive covers. Empty: all of them.
    `node` matches exactly, `grep` is a case-insensitive substring of the error (or of the
    traceback's last line), `since_ms` / `until_ms` bound when it was dead-lettered
    (epoch ms, inclusive): the dead stream's ids are those times, so the bounds narrow
    the range read rather than filter it."""

    node: str | None = None
    grep: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def empty(self) -> bool:
        return (
            self.node is None
            and not self.grep
            and self.since_ms is None
            and (self.until_ms is None)
        )

    @property
    def narrows(self) -> bool:
        """Whether entries in the id range must be looked at one by one."""
        return self.node is not None or bool(self.grep)

    def low(self) -> str:
        return "-" if self.since_ms is None else f"{max(0, self.since_ms)}-0"

    def high(self) -> str:
        return "+" if self.until_ms is None else f"{max(0, self.until_ms)}-{_MAX_SEQ}"

    def matches(self, record: DeadRecord) -> bool:
        if self.node is not None and record.node != self.node:
            return False
        if self.grep:
            needle = self.grep.lower()
            return needle in record.error.lower() or needle in _last_line(record.traceback)
        return True

    def matches_raw(self, fields: dict[bytes, bytes]) -> bool:
        """`matches` on the entry's fields as read, without parsing the whole record (a
        filtered scan of 100k letters would spend most of its time unpacking originals)."""
        if self.node is not None and fields.get(_NODE, b"").decode("utf-8", "replace") != (
            self.node
        ):
            return False
        if self.grep:
            needle = self.grep.lower()
            error = fields.get(_ERROR, b"").decode("utf-8", "replace").lower()
            if needle in error:
                return True
            tb = fields.get(_TRACEBACK, b"").decode("utf-8", "replace")
            return needle in _last_line(tb)
        return True


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].lower() if lines else ""


_MAX_SEQ = 18446744073709551615  # a stream id's sequence part is a 64-bit unsigned


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_before(entry_id: str) -> str:
    """The greatest id below `entry_id` (XRANGE bounds are inclusive; Redis 6.2+ has
    "(id", but this also works where that is not parsed)."""
    ms, seq = id_key(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def id_after(entry_id: str) -> str:
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}" if seq < _MAX_SEQ else f"{ms + 1}-0"


@dataclass(frozen=True, slots=True)
class DeadPage:
    """One page of dead letters, newest first. `cursor`: pass it as `before` for the next
    (older) page; None when nothing older matches. `scanned`: entries looked at."""

    letters: list[DeadRecord]
    cursor: str | None
    scanned: int


class _Lane:
    """The dead letters of one lane (entry ids in, lane-qualified ids out). Listing is
    newest first and paged by a cursor (an entry id); filters (DeadFilter) are applied
    while reading, at most `scan` entries per call, so no call reads an unbounded stream."""

    __slots__ = ("_client", "_key", "lane")

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self._client = client
        self._key = keys.dead()
        self.lane = keys.lane

    def _parse(self, entries: list[StreamEntry]) -> list[DeadRecord]:
        return _parse(entries, self.lane)

    def _record(self, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadRecord:
        record = DeadRecord.parse(entry_id, fields)
        return replace(record, id=dead_id(self.lane, record.id)) if self.lane else record

    async def range(self, start: str, count: int) -> list[DeadRecord]:
        """Up to `count` dead letters from entry id `start` (XRANGE syntax: "-", an id,
        or "(id" for after it), oldest first."""
        return self._parse(await self._client.xrange(self._key, min=start, count=count))

    async def get(self, dead_id: str) -> DeadRecord | None:
        entries = await self._client.xrange(self._key, min=dead_id, max=dead_id)
        return self._record(*entries[0]) if entries else None

    async def last_id(self) -> str | None:
        """The newest dead letter's entry id (None: there is none)."""
        tail = await self._client.xrevrange(self._key, count=1)
        return tail[0][0].decode() if tail else None

    async def count(self) -> int:
        """Every dead letter (XLEN: exact, O(1))."""
        return int(await self._client.xlen(self._key))

    async def page(
        self, flt: DeadFilter, before: str | None, count: int, scan: int = SCAN_LIMIT
    ) -> DeadPage:
        """Up to `count` dead letters matching `flt`, newest first, older than entry id
        `before` (None: from the newest). Looks at no more than `scan` entries: a page
        may then hold fewer than `count`, and its cursor says where to go on."""
        high = flt.high()
        if before is not None:
            below = id_before(before)
            high = below if high == "+" or id_key(below) < id_key(high) else high
        low = flt.low()
        letters: list[DeadRecord] = []
        scanned = 0
        last: str | None = None
        while True:
            chunk = count + 1 if not flt.narrows else min(max(count, CHUNK), scan - scanned)
            if chunk <= 0:  # scan budget spent: go on after the last entry looked at
                return DeadPage(
                    letters, None if last is None else dead_id(self.lane, last), scanned
                )
            if low != "-" and high != "+" and id_key(high) < id_key(low):
                return DeadPage(letters, None, scanned)
            entries = await self._client.xrevrange(self._key, max=high, min=low, count=chunk)
            for entry_id, fields in entries:
                scanned += 1
                if flt.matches_raw(fields):
                    if len(letters) == count:
                        return DeadPage(letters, letters[-1].id, scanned)
                    letters.append(self._record(entry_id, fields))
            if len(entries) < chunk:
                return DeadPage(letters, None, scanned)
            last = entries[-1][0].decode()
            high = id_before(last)

    async def scan(
        self, flt: DeadFilter, upto: str | None = None, chunk: int = CHUNK
    ) -> AsyncIterator[list[DeadRecord]]:
        """Every dead letter matching `flt`, oldest first, in batches; none newer than
        entry id `upto` (so letters that die again meanwhile are left alone)."""
        low, high = flt.low(), flt.high()
        if upto is not None and (high == "+" or id_key(upto) < id_key(high)):
            high = upto
        while True:
            entries = await self._client.xrange(self._key, min=low, max=high, count=chunk)
            batch = [self._record(i, e) for i, e in entries if flt.matches_raw(e)]
            if batch:
                yield batch
            if len(entries) < chunk:
                return
            low = id_after(entries[-1][0].decode())

    async def matching(self, flt: DeadFilter, limit: int = COUNT_LIMIT) -> tuple[int, bool]:
        """(how many dead letters match `flt`, exact): XLEN without a filter, else a scan
        of at most `limit` entries (exact False: there were more to look at)."""
        if flt.empty:
            return await self.count(), True
        n = seen = 0
        low, high = flt.low(), flt.high()
        while seen < limit:
            chunk = min(CHUNK * 4, limit - seen)
            entries = await self._client.xrange(self._key, min=low, max=high, count=chunk)
            seen += len(entries)
            if flt.narrows:
                n += sum(1 for _, e in entries if flt.matches_raw(e))
            else:
                n += len(entries)
            if len(entries) < chunk:
                return n, True
            low = id_after(entries[-1][0].decode())
        return n, False

    async def delete(self, ids: Sequence[str]) -> int:
        """Remove these dead letters (XDEL); returns how many there were."""
        removed = 0
        for i in range(0, len(ids), CHUNK):
            removed += int(
                await self._client.execute_command("XDEL", self._key, *ids[i : i + CHUNK])
            )
        return removed

    async def purge(self, flt: DeadFilter) -> int:
        """Remove the dead letters matching `flt` that exist now; returns how many.
        Without a filter, one XTRIM MINID past the newest: letters added meanwhile stay."""
        last = await self.last_id()
        if last is None:
            return 0
        if flt.empty:
            return int(
                await self._client.execute_command("XTRIM", self._key, "MINID", id_after(last))
            )
        removed = 0
        async for batch in self.scan(flt, upto=last):
            removed += await self.delete([split_dead_id(r.id)[1] for r in batch])
        return removed


def split_dead_id(dead: str) -> tuple[int, str]:
    """A dead letter's id -> (its lane's tag number, its entry id on that lane)."""
    entry, sep, lane = dead.rpartition("@")
    if sep and lane.isdigit():
        return int(lane), entry
    return 0, dead


def dead_id(lane: int, entry_id: str) -> str:
    """The id of a dead letter of entry `entry_id` on lane `lane` (see split_dead_id)."""
    return entry_id if lane == 0 else f"{entry_id}@{lane}"


def _order(dead: str) -> tuple[int, int, int]:
    """Where a dead letter sorts over lanes: (entry id, lane)."""
    lane, entry = split_dead_id(dead)
    ms, seq = id_key(entry)
    return ms, seq, lane


class DeadLetterReader:
    """The dead letters of `keys`' lane; with `lanes` (lane 0's reader: Broker.lane_keys),
    of every lane in use, ordered by (entry id, lane). With one lane in use every call is
    that lane's, as before lanes. Ids in and out are lane-qualified (split_dead_id)."""

    __slots__ = ("_client", "_keys", "_lanes", "_readers")

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        lanes: Callable[[], Awaitable[list[Keys]]] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._lanes = lanes
        self._readers: dict[int, _Lane] = {}

    def _lane(self, lane: int) -> _Lane:
        reader = self._readers.get(lane)
        if reader is None:
            reader = self._readers[lane] = _Lane(self._client, self._keys.on_lane(lane))
        return reader

    async def _all(self) -> list[_Lane]:
        if self._lanes is None:
            return [self._lane(self._keys.lane)]
        return [self._lane(k.lane) for k in await self._lanes()]

    async def range(self, start: str, count: int) -> list[DeadRecord]:
        """Up to `count` dead letters from id `start` (XRANGE syntax: "-", an id, or
        "(id" for after it), oldest first."""
        readers = await self._all()
        exclusive = start.startswith("(")
        lane, entry = (0, "-") if start == "-" else split_dead_id(start.lstrip("("))
        found: list[DeadRecord] = []
        for reader in readers:
            if entry == "-":
                first = "-"
            elif reader.lane > lane or (reader.lane == lane and not exclusive):
                first = entry
            else:
                first = f"({entry}"
            found += await reader.range(first, count)
        found.sort(key=lambda r: _order(r.id))
        return found[:count]

    async def get(self, dead: str) -> DeadRecord | None:
        lane, entry = split_dead_id(dead)
        return await self._lane(lane).get(entry)

    async def last_id(self) -> str | None:
        """The id of the newest dead letter of `keys`' lane (None: there is none)."""
        reader = self._lane(self._keys.lane)
        last = await reader.last_id()
        return None if last is None else dead_id(reader.lane, last)

    async def last_ids(self) -> dict[int, str]:
        """Lane tag number -> the entry id of its newest dead letter, for lanes with one."""
        out: dict[int, str] = {}
        for reader in await self._all():
            if (last := await reader.last_id()) is not None:
                out[reader.lane] = last
        return out

    async def count(self) -> int:
        """Every dead letter (XLEN per lane: exact, O(1))."""
        return sum([await reader.count() for reader in await self._all()])

    async def page(
        self, flt: DeadFilter, before: str | None, count: int, scan: int = SCAN_LIMIT
    ) -> DeadPage:
        """Up to `count` dead letters matching `flt`, newest first, older than id
        `before` (None: from the newest). Each lane looks at no more than `scan` entries;
        over lanes, the page holds only letters newer than where any lane stopped, so the
        next page (from the cursor) neither skips nor repeats one."""
        readers = await self._all()
        if len(readers) == 1:
            if before is not None:
                before = split_dead_id(before)[1]
            return await readers[0].page(flt, before, count, scan)
        pages: list[DeadPage] = []
        for reader in readers:
            mine = None
            if before is not None:
                lane, entry = split_dead_id(before)
                # Older than (entry, lane): on a lower lane the same entry id is older.
                mine = id_after(entry) if reader.lane < lane else entry
            pages.append(await reader.page(flt, mine, count, scan))
        stops = [_order(p.cursor) for p in pages if p.cursor is not None]
        bound = max(stops) if stops else None
        letters = sorted(
            (r for p in pages for r in p.letters), key=lambda r: _order(r.id), reverse=True
        )
        if bound is not None:
            letters = [r for r in letters if _order(r.id) >= bound]
        scanned = sum(p.scanned for p in pages)
        if len(letters) > count:
            return DeadPage(letters[:count], letters[count - 1].id, scanned)
        cursor = None
        if bound is not None:
            cursor = dead_id(bound[2], f"{bound[0]}-{bound[1]}")
        return DeadPage(letters, cursor, scanned)

    async def scan(
        self, flt: DeadFilter, upto: Mapping[int, str] | None = None, chunk: int = CHUNK
    ) -> AsyncIterator[list[DeadRecord]]:
        """Every dead letter matching `flt` in batches, lane by lane, oldest first within a
        lane; with `upto` (lane -> entry id, see last_ids) only lanes in it and none newer
        there (so letters that die again meanwhile are left alone)."""
        for reader in await self._all():
            if upto is not None and reader.lane not in upto:
                continue
            async for batch in reader.scan(flt, None if upto is None else upto[reader.lane], chunk):
                yield batch

    async def matching(self, flt: DeadFilter, limit: int = COUNT_LIMIT) -> tuple[int, bool]:
        """(how many dead letters match `flt`, exact): XLEN without a filter, else a scan
        of at most `limit` entries per lane (exact False: there were more to look at)."""
        total, exact = 0, True
        for reader in await self._all():
            n, done = await reader.matching(flt, limit)
            total, exact = total + n, exact and done
        return total, exact

    async def delete(self, ids: Sequence[str]) -> int:
        """Remove these dead letters (XDEL on each one's lane); returns how many there were."""
        by_lane: dict[int, list[str]] = {}
        for dead in ids:
            lane, entry = split_dead_id(dead)
            by_lane.setdefault(lane, []).append(entry)
        return sum([await self._lane(lane).delete(entries) for lane, entries in by_lane.items()])

    async def purge(self, flt: DeadFilter) -> int:
        """Remove the dead letters matching `flt` that exist now, on every lane."""
        return sum([await reader.purge(flt) for reader in await self._all()])


def _parse(entries: list[StreamEntry], lane: int = 0) -> list[DeadRecord]:
    records = [DeadRecord.parse(i, fields) for i, fields in entries]
    if lane:
        records = [replace(r, id=dead_id(lane, r.id)) for r in records]
    return records
