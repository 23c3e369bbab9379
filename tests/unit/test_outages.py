"""What a Runtime's loops ride out as an outage (issues 17.1 and 18.3): not only a lost
connection but every reply with which Redis says "not now" — out of memory (noeviction),
read-only (a failover window, a replica), BUSY (a script running), LOADING, MISCONF (a
failed RDB save), TRYAGAIN / CLUSTERDOWN / MASTERDOWN, a blocked read UNBLOCKED by a role
change — and uvloop's closed-transport RuntimeError. What Redis says about a command
itself (a wrong type, a script's own error) is not an outage."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.errors import ShutdownAbandoned
from exospherehost.runtime.resilience import is_outage, supervised


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("Connection closed by server."),
        OSError("reset"),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("You can't write against a read only replica."),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
        ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable"
        ),
        ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        TryAgainError("Multiple keys request during rehashing of slot"),
        ClusterDownError("The cluster is down"),
        MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        ResponseError(
            "Error running script (call to f_x): @user_script:1: OOM command not allowed"
        ),
        RuntimeError(
            "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
        ),
    ],
    ids=lambda e: f"{type(e).__name__}:{str(e)[:24]}",
)
def test_redis_saying_not_now_is_an_outage(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("settle: key exo:{ns}:q:A holds a hash, not a stream"),
        ResponseError("ERR unknown command 'FOO'"),
        RuntimeError("something else"),
        ValueError("x"),
    ],
)
def test_what_redis_says_about_the_command_itself_is_not(exc: BaseException) -> None:
    assert not is_outage(exc)


async def test_a_background_loop_that_raises_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ResponseError("WRONGTYPE something no one foresaw")

    with caplog.at_level(logging.ERROR, "exospherehost"):
        await asyncio.wait_for(supervised("promoter", loop, asyncio.Event()), 5)
    assert len(runs) == 3, "the loop was not started again after it raised"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "the second failure within a minute must be held back"
    assert "promoter loop failed; restarting it" in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_a_stop_ends_a_failing_loop_and_shutdown_abandoned_ends_it_quietly() -> None:
    stop = asyncio.Event()

    async def failing() -> None:
        stop.set()
        raise RuntimeError("boom")

    await asyncio.wait_for(supervised("reclaimer", failing, stop), 5)

    async def abandoned() -> None:
        raise ShutdownAbandoned("stopping, Redis unreachable")

    await asyncio.wait_for(supervised("heartbeat", abandoned, asyncio.Event()), 5)
