"""In-process counters of one Runtime, updated on the hot path with plain integer adds.
Exporters (Prometheus metrics, the CLI) read them; nothing here does I/O."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from exospherehost.runtime.outcomes import Completed, Failed, Outcome, Pruned, Requeued, Retry

# Execution-time histogram bucket upper bounds, seconds (Prometheus-style, cumulative).
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


@dataclass
class NodeStats:
    executed: int = 0  # executions finished, whatever the outcome
    succeeded: int = 0
    failed: int = 0  # executions that raised (retried or not)
    retried: int = 0  # ... of which scheduled for another attempt
    dead_lettered: int = 0  # ... of which dead-lettered (retries spent, or permanent)
    pruned: int = 0
    requeued: int = 0
    malformed: int = 0  # entries that could not be decoded
    settled: int = 0  # outcomes written by the settle script
    late_settles: int = 0  # settles skipped: another worker settled the state first
    exec_seconds_sum: float = 0.0
    exec_buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def observe(self, seconds: float) -> None:
        self.exec_seconds_sum += seconds
        # The bucket index is also the overflow slot when `seconds` exceeds every bound.
        self.exec_buckets[bisect_left(BUCKETS, seconds)] += 1


class RuntimeStats:
    def __init__(self, nodes: list[str]) -> None:
        self.nodes: dict[str, NodeStats] = {n: NodeStats() for n in nodes}

    def executed(self, node: str, outcome: Outcome, seconds: float) -> None:
        s = self.nodes[node]
        s.executed += 1
        if isinstance(outcome, Completed):
            s.observe(seconds)
            s.succeeded += 1
            return
        if not isinstance(outcome, Failed) or outcome.started:
            # Refused before execute() ran (invalid inputs): not an execution time.
            s.observe(seconds)
        if isinstance(outcome, Failed):
            s.failed += 1  # retried or dead-lettered: counted once settled (`decided`)
        elif isinstance(outcome, Pruned):
            s.pruned += 1
        elif isinstance(outcome, Requeued):
            s.requeued += 1

    def decided(self, planned: Iterable[Outcome]) -> None:
        """Split the failed executions among settled outcomes (whatever the settle's flag:
        each is counted by the worker that ran it, as `failed` is) into retried /
        dead-lettered, as settle planning decided them (`Failed.fate`)."""
        for outcome in planned:
            if type(outcome) is Failed and outcome.executed and outcome.fate is not None:
                s = self.nodes[outcome.job.node]
                if isinstance(outcome.fate, Retry):
                    s.retried += 1
                else:
                    s.dead_lettered += 1

    def malformed(self, node: str) -> None:
        self.nodes[node].malformed += 1
