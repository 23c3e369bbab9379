"""FailureLog: each failure once, with what happens next, at most `burst` lines per node
per window; what is held back is counted in the node's next line."""

from __future__ import annotations

import logging

import pytest

from exospherehost.broker.codec import Envelope
from exospherehost.runtime.failurelog import FailureLog
from exospherehost.runtime.outcomes import DeadLettered, Failed, Fate, Job, Malformed, Retry

RETRIES = 2  # the retry policy's budget the fates below are decided under


def _failed(node: str, sid: str, attempt: int = 0, permanent: bool = False) -> Failed:
    """A failure as settle planning leaves it: with its fate decided."""
    env = Envelope(sid, {}, attempt=attempt)
    job = Job(node, f"q:{node}", b"1-1", {}, env)
    fate: Fate = DeadLettered.PERMANENT if permanent else DeadLettered.RETRIES_SPENT
    if not permanent and attempt < RETRIES:
        fate = Retry(attempt + 2, RETRIES + 1, 10)
    return Failed(job, "ValueError: boom", "Traceback ...", permanent=permanent, fate=fate)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log(clock: Clock, burst: int = 3) -> FailureLog:
    return FailureLog(
        logging.getLogger("exospherehost.failures"), burst=burst, window_s=10.0, clock=clock
    )


def test_each_failure_says_what_happens_next(caplog: pytest.LogCaptureFixture) -> None:
    flog = _log(Clock(), burst=10)
    with caplog.at_level(logging.INFO, logger="exospherehost.failures"):
        flog.report([_failed("Sq", "s1", attempt=0)])
        flog.report([_failed("Sq", "s2", attempt=2)])
        flog.report([_failed("Sq", "s3", permanent=True)])
        flog.report([Malformed("Sq", "q:Sq", b"7-0", {}, "entry has no fields")])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            logging.WARNING,
            "Sq state s1 failed on attempt 1: ValueError: boom; retrying (attempt 2 of 3)",
        ),
        (
            logging.ERROR,
            "Sq state s2 failed on attempt 3: ValueError: boom; dead-lettered (retries spent)",
        ),
        (
            logging.ERROR,
            "Sq state s3 failed on attempt 1: ValueError: boom; "
            "dead-lettered (cannot succeed on a retry)",
        ),
        (logging.ERROR, "Sq entry 7-0 is malformed and was dead-lettered: entry has no fields"),
    ]


def test_a_failure_storm_is_rate_limited_per_node_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    flog = _log(clock)
    with caplog.at_level(logging.INFO, logger="exospherehost.failures"):
        flog.report([_failed("Sq", f"a{i}") for i in range(100)])
        flog.report([_failed("Other", "o1")])  # another node has its own budget
        clock.now = 10.0  # the next window
        flog.report([_failed("Sq", "b0")])
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" failed")[0] for m in messages] == [
        "Sq state a0",
        "Sq state a1",
        "Sq state a2",
        "Other state o1",
        "Sq state b0",
    ]
    assert messages[-1].endswith("(and 97 more Sq failures not logged in the last window)")
