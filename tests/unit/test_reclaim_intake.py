"""The reclaimer's intake, without Redis: what one claim returned goes into the pipeline
each kind its way (poison straight to its dead letter, a suspect alone with an execution
bound, the rest in batches), its room reserved during the claim, and the next suspect
claimed only once the last one settled."""

from __future__ import annotations

from typing import Any, cast

from exospherehost.broker.codec import Envelope, encode
from exospherehost.broker.keys import ENVELOPE_FIELD
from exospherehost.broker.streams import Broker
from exospherehost.runtime.resilience import Retrier
from exospherehost.runtime.upkeep.holdings import Holdings
from exospherehost.runtime.upkeep.prune import Pruner
from exospherehost.runtime.upkeep.reclaim import Entries, Reclaimer
from exospherehost.runtime.upkeep.rules import poison_reason

PLAIN = {b"name": b"x"}
CARRIES_4 = {ENVELOPE_FIELD.encode(): encode(Envelope("s", {}, deliveries=4))}


class StubBroker:
    def __init__(self, holdings: Holdings, claimed: list[tuple[bytes, int, dict[bytes, bytes]]]):
        self.holdings = holdings
        self.claimed = claimed
        self.calls: list[dict[str, Any]] = []

    async def reclaim(self, node: str, consumer: str, idle_ms: int, count: int, **kw: Any) -> Any:
        self.calls.append({"count": count, "held_during": self.holdings.count, **kw})
        return self.claimed


def make(claimed: list[tuple[bytes, int, dict[bytes, bytes]]]) -> tuple[Reclaimer, list[Any]]:
    holdings = Holdings(["N"], limit=100)
    broker = cast(Broker, StubBroker(holdings, claimed))
    accepted: list[Any] = []

    def accept(
        node: str, entries: Entries, poison: str | None, deliveries: int, timeout: float | None
    ) -> None:
        accepted.append((node, [e for e, _ in entries], poison, deliveries, timeout))

    retry = Retrier()
    reclaimer = Reclaimer(
        broker,
        "me",
        ["N"],
        holdings,
        accept,
        retry,
        Pruner(broker, "me", 60_000, retry),
        visibility_ms=1000,
        max_deliveries=5,
        suspect_timeout_s=7.0,
    )
    return reclaimer, accepted


async def test_each_kind_is_accepted_its_way() -> None:
    claimed = [
        (b"1-0", 1, PLAIN),
        (b"1-1", 1, PLAIN),
        (b"2-0", 2, PLAIN),  # a suspect
        (b"3-0", 5, PLAIN),  # delivered to the limit: poison
        (b"4-0", 1, CARRIES_4),  # 1 + 4 carried over from its releases: poison too
        (b"9-0", 1, PLAIN),  # already ours: no second copy
    ]
    reclaimer, accepted = make(claimed)
    reclaimer.holdings.held["N"][b"9-0"] = 0.0
    reclaimer.holdings.count = 10
    taken, filled = await reclaimer._reclaim("N", 6)
    assert (taken, filled) == (5, True)
    # XCLAIM counted one more delivery each.
    assert accepted == [
        ("N", [b"2-0"], None, 3, 7.0),
        ("N", [b"3-0"], poison_reason(5), 6, None),
        ("N", [b"4-0"], poison_reason(5), 2, None),
        ("N", [b"1-0", b"1-1"], None, 2, None),
    ]
    [call] = cast(StubBroker, reclaimer.broker).calls
    assert call["count"] == 6 and call["held_during"] == 16  # the room was reserved
    assert call["suspects"] == 1 and call["suspect_from"] == 2 and call["poison_at"] == 5
    assert reclaimer.holdings.count == 10 and reclaimer.holdings.room.is_set()


async def test_the_next_suspect_waits_for_the_last_one_to_settle() -> None:
    reclaimer, _ = make([(b"2-0", 2, PLAIN)])
    await reclaimer._reclaim("N", 10)
    await reclaimer._reclaim("N", 10)
    calls = cast(StubBroker, reclaimer.broker).calls
    assert [c["suspects"] for c in calls] == [1, 0]  # the first suspect still runs
    reclaimer.holdings.watch.pop(("N", b"2-0")).set()  # what a settle does
    await reclaimer._reclaim("N", 10)
    assert calls[-1]["suspects"] == 1


async def test_claims_while_stopping_are_left_for_other_workers() -> None:
    reclaimer, accepted = make([(b"1-0", 1, PLAIN)])
    reclaimer.retry.stopping.set()
    assert await reclaimer._reclaim("N", 10) == (0, False)
    assert accepted == [] and reclaimer.holdings.count == 0
