"""broker/lane.py treats uvloop's RuntimeError on a reset transport as a broken connection
(issue 18 item 1): the call goes out again on a fresh connection, and a second failure is a
ConnectionError the worker's retry loops ride out, not a RuntimeError that kills a task."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.broker.lane import Lane, transport_closed

UVLOOP_RESET = RuntimeError(
    "unable to perform operation on <TCPTransport closed=True at 0x1>; the handler is closed"
)


class FakeConnection:
    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail
        self.disconnected = False

    async def send_command(self, *args: Any) -> None:
        if self.fail is not None:
            raise self.fail

    async def read_response(self) -> bytes:
        return b"PONG"

    async def disconnect(self, nowait: bool = False) -> None:
        self.disconnected = True


class FakePool:
    def __init__(self, *conns: FakeConnection) -> None:
        self.conns = list(conns)
        self.released: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        return self.conns.pop(0)

    async def release(self, conn: FakeConnection) -> None:
        self.released.append(conn)


class FakeClient:
    def __init__(self, pool: FakePool) -> None:
        self.connection_pool = pool


async def test_a_reset_transport_is_dropped_and_the_call_sent_again() -> None:
    broken, fresh = FakeConnection(UVLOOP_RESET), FakeConnection(None)
    pool = FakePool(broken, fresh)
    lane = Lane(FakeClient(pool))
    assert await lane.call("PING") == b"PONG"
    assert broken.disconnected and pool.released == [broken]


async def test_two_resets_in_a_row_raise_a_connection_error() -> None:
    lane = Lane(FakeClient(FakePool(FakeConnection(UVLOOP_RESET), FakeConnection(UVLOOP_RESET))))
    with pytest.raises(RedisConnectionError, match="connection reset"):
        await lane.call("PING")


async def test_other_runtime_errors_are_not_taken_for_a_reset() -> None:
    other = RuntimeError("something else")
    lane = Lane(FakeClient(FakePool(FakeConnection(other), FakeConnection(None))))
    with pytest.raises(RuntimeError, match="something else"):
        await lane.call("PING")
    assert not transport_closed(other) and transport_closed(UVLOOP_RESET)
