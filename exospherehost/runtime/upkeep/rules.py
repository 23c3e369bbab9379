"""The reclaimer's decisions, pure: which reclaimed entries are suspects, which are poison
and what a poison message's dead letter says. broker/lua/reclaim.lua claims by the same
rule."""

from __future__ import annotations

from typing import Literal

from exospherehost.broker.codec import decode
from exospherehost.broker.keys import ENVELOPE_FIELD


def suspect_threshold(max_deliveries: int) -> int:
    """Deliveries (before a claim) from which a reclaimed entry is a suspect, run alone.

    Entries delivered once run in parallel. If one of them killed the worker that
    reclaimed them, its batch-mates got one delivery more (2) and are suspects from then
    on: the rule costs an innocent one delivery at most, which must leave it below the
    limit. So with max_deliveries < 3 every reclaimed entry is a suspect."""
    return 2 if max_deliveries >= 3 else 1


def triage(
    deliveries: int, suspect_from: int, max_deliveries: int
) -> Literal["poison", "suspect", "run"]:
    """What to do with an entry reclaimed after `deliveries` deliveries: "poison"
    (dead-letter it, do not run it), "suspect" (run it alone) or "run" (with the rest)."""
    if deliveries >= max_deliveries:
        return "poison"
    if deliveries >= suspect_from:
        return "suspect"
    return "run"


_ENVELOPE_KEY = ENVELOPE_FIELD.encode()


def carried_deliveries(entry_id: bytes, fields: dict[bytes, bytes]) -> int:
    """Deliveries an envelope carries over from entries it was released from (`d`); 0 for a
    plain entry or one that does not decode (its settle says why)."""
    if _ENVELOPE_KEY not in fields:
        return 0
    try:
        return decode(entry_id, fields).deliveries
    except Exception:
        return 0


def poison_reason(deliveries: int) -> str:
    return (
        f"delivered {deliveries} times without being settled: the worker running it died "
        f"or hung each time (poison message)"
    )
