"""Dead letters: list, inspect, redrive."""

from __future__ import annotations

from dataclasses import dataclass

from broker.codec import MalformedEntry, decode, encode, unpack
from broker.keys import ENVELOPE_FIELD, Keys, check_name
from broker.streams import Broker, RawRedis
from exospherehost.runs import RunNotFound


@dataclass
class DeadLetter:
    """A state that could not be processed, with why and what it was."""

    id: str  # entry id in the dead-letter stream
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
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in f.items() if k != b"original"}
        original = unpack(f[b"original"]) if b"original" in f else {}
        return cls(
            id=entry_id.decode(),
            node=text.get("node", ""),
            state_id=text.get("state", ""),
            run_id=text.get("run") or None,
            identifier=text.get("identifier") or None,
            attempts=int(text.get("attempts") or 0),
            deliveries=int(text.get("deliveries") or 0),
            error=text.get("error", ""),
            traceback=text.get("traceback", ""),
            time_ms=int(text.get("time_ms") or 0),
            entry=text.get("entry", ""),
            original=original if isinstance(original, dict) else {},
        )


class DeadLettersMixin:
    """StateManager methods over the dead-letter stream; needs `client`, `keys`, `broker`."""

    client: RawRedis
    keys: Keys
    broker: Broker

    async def dead_letters(self, count: int = 100, after: str = "-") -> list[DeadLetter]:
        """Dead letters oldest first, from entry id `after` (exclusive unless '-')."""
        start = after if after == "-" else f"({after}"
        entries = await self.client.xrange(self.keys.dead(), min=start, count=count)
        return [DeadLetter.parse(i, f) for i, f in entries]

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        entries = await self.client.xrange(self.keys.dead(), min=dead_id, max=dead_id)
        return DeadLetter.parse(*entries[0]) if entries else None

    async def redrive(self, dead_id: str) -> bool:
        """Put a dead letter back on its node's stream for a fresh set of attempts.
        Idempotent: returns False (and adds nothing) when it was already redriven."""
        dead = await self.dead_letter(dead_id)
        if dead is None:
            return False
        fields: dict[str, bytes | str] = {k.decode(): v for k, v in dead.original.items()}
        if set(fields) == {ENVELOPE_FIELD}:
            try:
                env = decode(b"0-0", dead.original)
            except MalformedEntry:
                pass
            else:
                env.attempt = 0  # a redrive starts the retry budget afresh
                fields = {ENVELOPE_FIELD: encode(env)}
        if not fields:
            raise ValueError(f"dead letter {dead_id} has no original entry to redrive")
        done = await self.broker.redrive(
            dead_id, check_name("node name", dead.node), dead.run_id, dead.identifier or "", fields
        )
        if done < 0:
            raise RunNotFound(f"cannot redrive {dead_id}: run {dead.run_id} expired")
        return done == 1

    async def redrive_all(self) -> int:
        """Redrive every dead letter present when called; returns how many were put back.
        Letters that die again meanwhile land after the starting tail and are left alone
        (otherwise a state that always fails would be redriven forever)."""
        tail = await self.client.xrevrange(self.keys.dead(), count=1)
        if not tail:
            return 0
        last = tail[0][0].decode()
        count = 0
        after = "-"
        while batch := await self.dead_letters(1000, after):
            for dead in batch:
                if _id_after(dead.id, last):
                    return count
                count += await self.redrive(dead.id)
            after = batch[-1].id
        return count


def _id_after(a: str, b: str) -> bool:
    """Stream id order: `a` > `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))
