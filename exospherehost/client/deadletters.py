"""Dead letters: list, inspect, redrive."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from exospherehost.broker.codec import MalformedEntry, decode, encode
from exospherehost.broker.deadletters import DeadLetterReader, DeadRecord, split_dead_id
from exospherehost.broker.keys import ENVELOPE_FIELD, check_name
from exospherehost.broker.plan import MAX_XADD_FIELDS
from exospherehost.broker.streams import REDRIVE_REFUSED, Broker
from exospherehost.client.runs import RunNotFound
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
        fields = redrive_fields(dead)
        lane, entry_id = split_dead_id(dead_id)  # back onto the lane it died on (its run's)
        done, problem = await self.broker.on_lane(lane).redrive(
            entry_id, check_name("node name", dead.node), dead.run_id, dead.identifier or "", fields
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

    async def redrive_all(self) -> RedriveReport:
        """Redrive every dead letter present when called. A letter that cannot be redriven
        (its run expired, a bad node name, refused by the script) is skipped and reported;
        the others go on. Letters that die again meanwhile land after the starting tail and
        are left alone (otherwise a state that always fails would be redriven forever)."""
        report = RedriveReport()
        lasts = await self._dead.last_ids()  # per lane
        if not lasts:
            return report
        after = "-"
        while batch := await self.dead_letters(1000, after):
            for dead in batch:
                lane, entry_id = split_dead_id(dead.id)
                last = lasts.get(lane)
                if last is None or _id_after(entry_id, split_dead_id(last)[1]):
                    continue
                try:
                    report.redriven += await self.redrive(dead.id)
                except (RunNotFound, ValueError, ResponseError) as exc:
                    report.skipped[dead.id] = str(exc).strip("'\"")
            after = batch[-1].id
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


def _id_after(a: str, b: str) -> bool:
    """Stream id order: `a` > `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))
