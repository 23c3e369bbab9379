"""How many states a worker reads ahead, per node: full batches for short executions,
little more than the free executors for long ones (issue 11). Pure: no I/O, no clock.

A state read by a worker is held by it until settled; no other worker can run it. A fixed
read-ahead (`batch_size * 4 + workers`) is what short executions need, since reads,
executions and settles overlap, but with slow nodes it hoards: a worker that can run 32
one-second states at a time held 400 more, and workers started later found the stream
empty. The rule here, per node `n` with `e` = a moving average of its execution time:

    headroom(n) = floor(workers * HORIZON_S / e)      states beyond the executors
    hold(n)     = workers + headroom(n)               at most `limit` (the fixed window)

`HORIZON_S` stands for one refill (the reader's wake-up and a read: a finished state's
replacement arrives about that long after it finished): the headroom is what the
executors start meanwhile. A node whose `hold` reaches `limit` (e below ~0.16 ms at the
defaults) is read in full batches exactly as before. Any other node is read only while
the executors are short of work: what is queued (read, not started, of any node) stays
below the free executors plus `headroom(n)`, so two slow nodes together still hold about
`workers` states, not twice that; finished states whose settle is on its way do not
count (the reader is woken when a settle is sent, not only when it returns). A node not
yet seen to finish an execution is read as if its headroom were
`min(batch_size, workers) // 4`: a fast node is learnt after its first few executions,
a slow one never takes more than that extra.

A refill takes a round trip or two, so a slow node's replacement is read that much before
its executor frees (`due`): a running state of a node with mean `e`, started at `s`,
counts as finished from `s + e - LEAD_S` (and again as running once it is `LEAD_S` past
its expected end: it is a long one, reading for it would hoard). Equal states that all
finish at once (a batch started together) then find their replacements waiting instead
of idling for a read round trip each round. Only nodes with no headroom (shorter ones
are refilled from it) whose executions are alike (mean deviation under `STEADY` of the
mean) are watched: for a node of 10 ms and 1 s states the mean end predicts nothing.

`fixed=N` (Runtime(prefetch=N)) replaces all of it: the window is `workers + N` states,
read as a fast node's; `N=0` reads only for idle executors (finished states count until
their settle returns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

HORIZON_S = 0.002
"""Seconds one refill takes (the reader woken as a settle is sent, plus a read round
trip, on a loaded 2-core machine with Redis on loopback)."""
LEAD_S = 2 * HORIZON_S
"""How long before a slow node's state is expected to finish its replacement is read."""
STEADY = 0.25
"""A node is `watch`ed when its executions deviate from their mean by less than this."""
ALPHA = 0.2
"""Weight of one execution in the moving average of a node's execution time."""


class Counters(Protocol):
    """A node's cumulative execution counters (runtime.stats.NodeStats)."""

    executed: int
    exec_seconds_sum: float


@dataclass
class _Seen:
    count: int = 0  # executions counted so far
    seconds: float = 0.0  # ... and their total seconds
    ewma: float | None = None  # mean execution seconds, None before the first
    spread: float = 0.0  # moving mean absolute deviation from it (batch means)


Reads = list[tuple[list[str], int]]
"""XREADGROUP calls to make: (nodes, COUNT) each."""


class Prefetch:
    def __init__(
        self,
        nodes: Sequence[str],
        concurrency: int,
        batch_size: int,
        limit: int,
        fixed: int | None = None,
        horizon_s: float = HORIZON_S,
        alpha: float = ALPHA,
    ) -> None:
        self.nodes = list(nodes)
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.limit = limit
        self.fixed = fixed
        self.horizon_s = horizon_s
        self.alpha = alpha
        self.unknown_headroom = max(1, min(batch_size, concurrency) // 4)
        self._seen = {n: _Seen() for n in self.nodes}
        # Nodes whose running states the worker reports to `due` (see `watch`), as of
        # the last plan.
        self.watched: set[str] = set()
        # Fewer than this to read waits for more room (today's rule: half a batch), unless
        # the node's own window is smaller.
        self._min_read = batch_size // 2 + 1

    @staticmethod
    def window(concurrency: int, batch_size: int, fixed: int | None) -> int:
        """The most states one worker holds (read or claimed, not settled)."""
        if fixed is not None:
            return concurrency + fixed
        # Room for ~4 batches: reads go on while a settle is in flight. With 2 the worker
        # sat idle ~14% of the time waiting for settles (W1: 0.86 -> 0.97 core busy).
        return batch_size * 4 + concurrency

    # -- estimates ----------------------------------------------------------------------
    def observe(self, node: str, executed: int, seconds: float) -> None:
        """Take in `node`'s cumulative counters: the executions finished since the last
        call move the average, each by ALPHA."""
        seen = self._seen[node]
        done = executed - seen.count
        if done <= 0:
            return
        mean = (seconds - seen.seconds) / done
        seen.count, seen.seconds = executed, seconds
        if seen.ewma is None:
            seen.ewma = mean
        else:
            weight = 1.0 - (1.0 - self.alpha) ** done
            seen.spread += weight * (abs(mean - seen.ewma) - seen.spread)
            seen.ewma += weight * (mean - seen.ewma)

    def estimate(self, node: str) -> float | None:
        """Mean execution seconds of `node` (None before its first execution)."""
        return self._seen[node].ewma

    def headroom(self, node: str) -> int:
        """States of `node` to hold beyond the executors."""
        if self.fixed is not None:
            return self.fixed
        e = self._seen[node].ewma
        if e is None:
            return self.unknown_headroom
        full = self.limit - self.concurrency
        if e <= 0 or self.concurrency * self.horizon_s >= e * full:
            return full
        return int(self.concurrency * self.horizon_s / e + 1e-9)  # 1e-9: float noise

    def hold(self, node: str) -> int:
        """The most states of `node` this worker holds."""
        return min(self.limit, self.concurrency + self.headroom(node))

    def watch(self, node: str) -> bool:
        """Whether `node`'s running states are worth predicting (`due`): no headroom (a
        refill each time one ends) and executions alike."""
        seen = self._seen[node]
        e = seen.ewma
        return (
            self.fixed is None
            and e is not None
            and seen.spread < STEADY * e
            and self.headroom(node) == 0
        )

    def due(
        self, running: Iterable[tuple[str, float]], now: float, lead: float = LEAD_S
    ) -> tuple[int, float | None]:
        """Of the `running` states (node, start time), how many are within `lead` of
        their node's mean end (counted as finished by `plan`'s caller), and the earliest
        time one not yet due will be (None: none)."""
        count, wake = 0, None
        seen = self._seen
        for node, started in running:
            e = seen[node].ewma
            if e is None:
                continue
            at = started + e - lead  # due from here ...
            if at > now:
                if wake is None or at < wake:
                    wake = at
            elif now <= at + 2 * lead:  # ... to `lead` past its expected end
                count += 1
        return count, wake

    # -- the decision -------------------------------------------------------------------
    def plan(
        self,
        stats: Mapping[str, Counters],
        room: int,
        executing: int,
        queued: int,
        dry: bool = False,
    ) -> Reads:
        """The reads to make now: [] = none (wait for room or a finished execution).

        `stats`: the nodes' execution counters; `room`: the window's free room;
        `executing`: the executions running; `queued`: states read and not started (of
        any node). A fast node may fill the window; the others share what the executors
        lack plus their headroom (finished states waiting for their settle do not count:
        they hold no executor). One call when every node read gets the same COUNT (all
        fast nodes: the read as before this module); else one call per COUNT, meant to
        be made without BLOCK, and after a round that returned nothing (`dry`) one call
        over every node with the smallest COUNT, to block on."""
        for node, counters in stats.items():
            self.observe(node, counters.executed, counters.exec_seconds_sum)
        short = self.concurrency - executing - queued  # executors without a state
        fast: list[str] = []
        slow: dict[str, int] = {}
        self.watched.clear()
        for node in self.nodes:
            headroom = self.headroom(node)
            if self.concurrency + headroom >= self.limit:  # the whole window, as before
                if room >= min(self._min_read, max(1, headroom // 2)):
                    fast.append(node)
                continue
            if self.watch(node):
                self.watched.add(node)
            if (budget := min(room, short + headroom)) >= max(1, headroom // 2):
                slow[node] = budget
        if not fast and not slow:
            return []
        share = max(1, min(self.batch_size, room) // (len(fast) + len(slow)))
        # A copy: slow nodes whose COUNT equals the fast share join this group, and the
        # fast list must stay as it is. Mutated, it listed those nodes twice in one
        # XREADGROUP, and states went to this worker's pending list without ever being in
        # a reply (W2, 2 processes: stalled until reclaimed 30 s later; test_prefetch).
        groups: dict[int, list[str]] = {share: list(fast)} if fast else {}
        for node, budget in slow.items():
            # The slow nodes share one budget: COUNT applies to each of their streams.
            groups.setdefault(min(share, max(1, budget // len(slow))), []).append(node)
        if len(groups) == 1 or dry:
            return [([*fast, *slow], min(groups))]
        return [(nodes, count) for count, nodes in sorted(groups.items(), reverse=True)]
