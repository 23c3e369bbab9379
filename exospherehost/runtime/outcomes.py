"""What happened to a state, as values. The worker produces them; `settle.plan_settle`
turns a batch of them into one atomic settle-script call."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from exospherehost.broker.codec import Envelope


@dataclass(slots=True)
class Job:
    """A state read from a stream and decoded, on its way through a worker."""

    node: str
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    env: Envelope
    deliveries: int = 1  # times Redis handed this entry to a worker (reclaims add one)
    timeout: float | None = None  # bound on this execution (s), else the node's own
    started: float = 0.0  # when execution began (time.time()); 0: never started


@dataclass(slots=True)
class Completed:
    job: Job
    outputs: list[dict[str, Any]]
    fanout: bool  # execute returned a list (even of one): one successor set per element


@dataclass(slots=True)  # not frozen: built per retried failure, a frozen init is ~5x slower
class Retry:
    """Settle planning gave a failure another attempt: attempt `attempt` (1-based) of the
    `attempts` its retry policy allows, due `delay_ms` after the settle."""

    attempt: int
    attempts: int
    delay_ms: int


class DeadLettered(Enum):
    """Settle planning dead-lettered a failure; the value says why, as logged."""

    RETRIES_SPENT = "retries spent"
    PERMANENT = "cannot succeed on a retry"


Fate = Retry | DeadLettered


@dataclass(slots=True)
class Failed:
    job: Job
    error: str
    traceback: str
    permanent: bool = False  # bad inputs or graph: retrying cannot help
    # Not from an execution (a reclaimed poison message): not counted as one in the stats.
    executed: bool = True
    # False: refused before execute() ran (invalid inputs, missing secrets, unknown graph
    # node): a failure, but no execution time to put in the histogram.
    started: bool = field(default=True, compare=False)
    # What settle planning decided for it (None until planned): the stats and the failure
    # log read this, so retry or dead letter is decided once, where it is written.
    fate: Fate | None = field(default=None, compare=False)


@dataclass(slots=True)
class Pruned:
    job: Job
    data: dict[str, Any]


@dataclass(slots=True)
class Requeued:
    job: Job
    delay_ms: int


@dataclass(slots=True)
class Released:
    """Not executed (shutdown): put back on its stream at once for another worker."""

    job: Job


@dataclass(slots=True)
class Malformed:
    """An entry that could not be decoded: dead-lettered with the reason."""

    node: str
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str
    deliveries: int = 1


Outcome = Completed | Failed | Pruned | Requeued | Released | Malformed


def source(outcome: Outcome) -> tuple[str, bytes]:
    """(node, entry id) of the stream entry an outcome settles."""
    if isinstance(outcome, Malformed):
        return outcome.node, outcome.entry_id
    return outcome.job.node, outcome.job.entry_id
