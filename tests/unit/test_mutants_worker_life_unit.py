"""Tests written for mutmut's survivors in the worker's start, stop and log helpers
(runtime/worker.py: run, _join, _start_upkeep, _shut_down, _log_orphans, _name,
_fields; README, Testing). Stub brokers stand in for Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.broker.codec import Envelope
from exospherehost.runtime import worker as worker_module
from exospherehost.runtime.outcomes import Completed, Job, Malformed
from tests.unit.test_mutants_worker_unit import KEYS, StubBroker, make_worker


def _job(fields: dict[bytes, bytes] | None = None) -> Job:
    return Job("Noop", KEYS.queue("Noop"), b"7-1", fields or {}, Envelope("s9", {}))


# -- the log helpers ------------------------------------------------------------------------
def test_a_state_is_named_by_node_state_and_entry_a_malformed_one_without_state() -> None:
    """Bugs: the state id left out of a decoded one's name, "XXXX" for a malformed one's."""
    assert worker_module._name(Completed(_job(), [], fanout=False)) == "Noop state s9 (entry 7-1)"
    bad = Malformed("Noop", KEYS.queue("Noop"), b"7-2", {b"k": b"v"}, "bad")
    assert worker_module._name(bad) == "Noop (entry 7-2)"


def test_the_fields_logged_are_the_first_20_each_cut_at_200_bytes() -> None:
    """What an unsettled state's ERROR shows of it: its entry's own fields (a malformed
    entry's too), the first 20, values over 200 bytes as their size. Bugs: 21 fields,
    a limit of 201 or the default 4096, a malformed entry's fields read from a job."""
    many = {f"f{i:02}".encode(): b"x" for i in range(25)}
    shown = worker_module._fields(Completed(_job(many), [], fanout=False))
    assert list(shown) == [f"f{i:02}" for i in range(20)]
    sized = {b"a": b"y" * 200, b"b": b"z" * 201}
    assert worker_module._fields(Completed(_job(sized), [], fanout=False)) == {
        "a": "y" * 200,
        "b": "<201 bytes>",
    }
    bad = Malformed("Noop", KEYS.queue("Noop"), b"7-2", {b"k": b"v" * 300}, "bad")
    assert worker_module._fields(bad) == {"k": "<300 bytes>"}


# -- starting and stopping -----------------------------------------------------------------
class DownBroker(StubBroker):
    """Redis unreachable from the start: every call an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.retried = asyncio.Event()  # a second attempt came: the worker rides it out

    async def ensure_groups(self, nodes: Any) -> None:
        self.calls += 1
        if self.calls >= 2:
            self.retried.set()
        raise RedisConnectionError("Connection refused")


async def test_a_worker_stopped_while_redis_is_down_at_start_leaves_at_once() -> None:
    """run() itself (start-up, reading) gives up at once when stopped in an outage: it
    has nothing to finish. Bugs: run() not among the tasks that quit first (it retried
    until the grace period's end, 30 s here)."""
    broker = DownBroker()
    worker = make_worker(broker, grace_s=30.0)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(broker.retried.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)  # not after the 30 s grace period
    assert not worker.ready.is_set()
