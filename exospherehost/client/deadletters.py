"""Dead letters: list (newest first, paged, filtered), count, inspect, delete / purge,
redrive (filtered)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from redis.exceptions import ResponseError

from exospherehost.broker.codec import MalformedEntry, decode, encode
from exospherehost.broker.deadletters import (
    DeadFilter,
    DeadLetterReader,
    DeadRecord,
    id_key,
    split_dead_id,
)
from exospherehost.broker.keys import ENVELOPE_FIELD, check_name
from exospherehost.broker.plan import MAX_XADD_FIELDS
from exospherehost.broker.streams import REDRIVE_REFUSED, Broker
from exospherehost.client.runs import RunNotFound
from exospherehost.errors import InvalidArgument
from exospherehost.errors import RedriveRefused as RedriveRefused  # old import path

log = logging.getLogger("exospherehost.client.deadletters")


@dataclass
class RedriveReport:
    """What `redrive_all` did: how many dead letters went back, and which could not (they
    stay in the dead-letter stream), each with why."""

    redriven: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # dead-letter id -> reason


@dataclass
class DeadLetter:
    """A state that could not be processed, with why and what it was."""

    id: str  # entry id in its lane's dead-letter stream (`<entry id>@n` on lane n > 0)
    node: str
    state_id: str
    run_id: str | None
    identifier: str | None
    attempts: int  # executions (first try + retries)
    deliveries: int  # times Redis handed its last entry to a worker
    error: str
    traceback: str
    time_ms: int
    entry: str  # the id it had on its node stream
    original: dict[bytes, bytes]  # the original entry's fields, byte for byte

    @classmethod
    def parse(cls, entry_id: bytes, f: dict[bytes, bytes]) -> DeadLetter:
        """A dead-letter stream entry as XRANGE returns it."""
        return cls.of(DeadRecord.parse(entry_id, f))

    @classmethod
    def of(cls, record: DeadRecord) -> DeadLetter:
        return cls(**{fl.name: getattr(record, fl.name) for fl in dataclasses.fields(record)})


@dataclass
class DeadLetterPage:
    """One page of `dead_letter_page`, newest first. `cursor`: pass it as `before` for
    the next (older) page; None when nothing older matches. A filtered page looks at a
    bounded number of entries (`scanned`): it may hold fewer letters than asked for while
    older ones still match; go on while `cursor` is not None."""

    letters: list[DeadLetter]
    cursor: str | None
    scanned: int


@dataclass
class DeadLetterCount:
    """How many dead letters match a filter. `exact` is False when a filtered count
    stopped at its scan limit (then `count` is a lower bound)."""

    count: int
    exact: bool


Moment = int | datetime
"""A time bound of a dead-letter filter: epoch milliseconds, or a datetime (naive = local)."""


def _ms(name: str, value: Moment | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"{name} must be a datetime or epoch milliseconds (int >= 0), got {value!r}"
        )
    return value


def dead_filter(
    node: str | None = None,
    grep: str | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
) -> DeadFilter:
    """A checked dead-letter filter: `node` (exact class name), `grep` (case-insensitive
    text of the error), `since` / `until` (when it was dead-lettered, inclusive)."""
    if node is not None:
        check_name("node name", node)
    if grep is not None and not isinstance(grep, str):
        raise InvalidArgument(f"grep must be a string, got {type(grep).__name__}")
    lo, hi = _ms("since", since), _ms("until", until)
    if lo is not None and hi is not None and hi < lo:
        raise InvalidArgument(f"until ({hi}) is before since ({lo})")
    return DeadFilter(node, grep or None, lo, hi)


def _check_count(name: str, value: object, high: int = 100_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidArgument(f"{name} must be an int from 1 to {high}, got {value!r}")
    return value


def _check_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"a dead-letter id must be a string, got {type(value).__name__}")
    try:
        id_key(split_dead_id(value)[1])  # `<entry id>` or, on lane n > 0, `<entry id>@n`
    except ValueError:
        raise InvalidArgument(f"{value!r} is not a dead-letter id like 1718000000000-0") from None
    return value


class DeadLettersMixin:
    """StateManager methods over the dead-letter stream; needs `broker`."""

    broker: Broker

    @property
    def _dead(self) -> DeadLetterReader:
        return self.broker.dead_letters

    async def dead_letters(self, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Dead letters oldest first, from id `after` (exclusive unless '-'); over every
        lane of the namespace, ordered by (entry id, lane)."""
        start = after if after == "-" else f"({after}"
        return [DeadLetter.of(r) for r in await self._dead.range(start, count)]

    async def dead_letter_page(
        self,
        count: int = 50,
        before: str | None = None,
        *,
        node: str | None = None,
        grep: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> DeadLetterPage:
        """Dead letters newest first, `count` at most, older than `before` (a page's
        cursor; None: from the newest), matching the filter (see `dead_filter`)."""
        flt = dead_filter(node, grep, since, until)
        page = await self._dead.page(
            flt, None if before is None else _check_id(before), _check_count("count", count)
        )
        return DeadLetterPage([DeadLetter.of(r) for r in page.letters], page.cursor, page.scanned)

    async def dead_letter_count(
        self,
        *,
        node: str | None = None,
        grep: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> DeadLetterCount:
        """How many dead letters there are (XLEN, exact) or match the filter (a scan of at
        most broker.deadletters.COUNT_LIMIT entries)."""
        n, exact = await self._dead.matching(dead_filter(node, grep, since, until))
        return DeadLetterCount(n, exact)

    async def delete_dead_letters(self, dead_ids: Sequence[str]) -> int:
        """Remove these dead letters for good; returns how many were there."""
        if isinstance(dead_ids, str):
            dead_ids = [dead_ids]
        return await self._dead.delete([_check_id(i) for i in dead_ids])

    async def purge_dead_letters(
        self,
        *,
        node: str | None = None,
        grep: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> int:
        """Remove, for good, every dead letter matching the filter (all of them without
        one) that exists when called; returns how many. Letters added meanwhile stay."""
        return await self._dead.purge(dead_filter(node, grep, since, until))

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        record = await self._dead.get(dead_id)
        return None if record is None else DeadLetter.of(record)

    async def redrive(self, dead_id: str) -> bool:
        """Put a dead letter back on its node's stream for a fresh set of attempts, under
        its state id. Idempotent: returns False (and adds nothing) when it was already
        redriven. Raises RunNotFound (its run expired), KeyNameError (a bad node name) or
        RedriveRefused / ValueError (it cannot be re-added; it stays a dead letter)."""
        dead = await self.dead_letter(dead_id)
        if dead is None:
            return False
        return await self._redrive_record(dead)

    async def _redrive_record(self, dead: DeadLetter) -> bool:
        dead_id = dead.id
        fields = redrive_fields(dead)
        lane, entry_id = split_dead_id(dead_id)  # back onto the lane it died on (its run's)
        done, problem = await self.broker.on_lane(lane).redrive(
            entry_id,
            check_name("node name", dead.node),
            dead.run_id,
            dead.identifier or "",
            fields,
            dead.state_id,
        )
        if done == REDRIVE_REFUSED:
            raise RedriveRefused(f"cannot redrive {dead_id}: {problem}")
        if done < 0:
            raise RunNotFound(f"cannot redrive {dead_id}: run {dead.run_id} expired")
        if problem:
            log.warning(
                "redrove %s, but re-opening run %s failed: %s", dead_id, dead.run_id, problem
            )
        return done == 1

    async def redrive_all(
        self,
        *,
        node: str | None = None,
        grep: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> RedriveReport:
        """Redrive every dead letter present when called that matches the filter (all of
        them without one), oldest first. A letter that cannot be redriven (its run
        expired, a bad node name, refused by the script) is skipped and reported; the
        others go on. Letters that die again meanwhile land after the starting tail and
        are left alone (otherwise a state that always fails would be redriven forever)."""
        flt = dead_filter(node, grep, since, until)
        report = RedriveReport()
        lasts = await self._dead.last_ids()  # per lane
        if not lasts:
            return report
        async for batch in self._dead.scan(flt, upto=lasts):
            for record in batch:
                try:
                    report.redriven += await self._redrive_record(DeadLetter.of(record))
                except (RunNotFound, ValueError, ResponseError) as exc:
                    report.skipped[record.id] = str(exc).strip("'\"")
        return report


def redrive_fields(dead: DeadLetter) -> dict[bytes | str, bytes | str]:
    """The entry a dead letter goes back as: one envelope keeping its state id (a plain
    entry's id was its state id; the `f` flag keeps its string inputs coerced), with a
    fresh retry budget and delivery count. An original that does not decode (it will be
    dead-lettered again, with the reason) goes back byte for byte."""
    original = dead.original
    if not original:
        raise RedriveRefused(f"dead letter {dead.id} has no original entry to redrive")
    try:
        env = decode((dead.state_id or dead.entry).encode(), original)
    except MalformedEntry:
        if len(original) > MAX_XADD_FIELDS:
            raise RedriveRefused(
                f"dead letter {dead.id} holds an undecodable entry of {len(original)} fields, "
                f"more than can be re-added ({MAX_XADD_FIELDS})"
            ) from None
        return {k: v for k, v in original.items()}
    env.attempt = 0  # a redrive starts the retry budget afresh
    env.deliveries = 0
    return {ENVELOPE_FIELD: encode(env)}
