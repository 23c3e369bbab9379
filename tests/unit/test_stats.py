"""RuntimeStats: executions are counted when they finish; failed ones are split into
retried / dead-lettered once settled, by the decision settle planning recorded."""

from __future__ import annotations

from exospherehost.broker.codec import Envelope
from exospherehost.runtime.outcomes import DeadLettered, Failed, Job, Malformed, Retry
from exospherehost.runtime.stats import RuntimeStats


def _failed(executed: bool = True) -> Failed:
    job = Job("N", "q:N", b"1-1", {}, Envelope("s", {}))
    return Failed(job, "boom", "", executed=executed)


def test_failures_are_split_by_their_planned_fate_once_settled() -> None:
    stats = RuntimeStats(["N"])
    retried, dead, unplanned = _failed(), _failed(), _failed()
    for f in (retried, dead, unplanned):
        stats.executed("N", f, 0.01)
    assert (stats.nodes["N"].failed, stats.nodes["N"].retried) == (3, 0)  # not decided yet
    retried.fate = Retry(2, 3, 100)
    dead.fate = DeadLettered.RETRIES_SPENT
    stats.decided([retried, dead, unplanned, Malformed("N", "q:N", b"2-2", {}, "bad")])
    n = stats.nodes["N"]
    assert (n.failed, n.retried, n.dead_lettered) == (3, 1, 1)


def test_a_failure_that_was_not_an_execution_is_not_split() -> None:
    """A reclaimed poison message is dead-lettered without being executed: it counts in
    neither `failed` nor `dead_lettered` (those count executions)."""
    stats = RuntimeStats(["N"])
    poison = _failed(executed=False)
    poison.fate = DeadLettered.PERMANENT
    stats.decided([poison])
    assert stats.nodes["N"].dead_lettered == 0
