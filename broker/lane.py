"""A pooled connection held by one sequential caller, for the hot path's round trips.

`Redis.execute_command` checks a connection out of the pool and back in, wraps the call
in its retry machinery and records metrics, every call: about 45 us of CPU per command
on this project's benchmark VM, against 55 us for the whole round trip through the
connection itself. The worker's reader (XREADGROUP) and settler (the settle script) each
make one call per batch for as long as the Runtime runs, one call at a time, so each
keeps one connection of the pool and talks through redis-py's `Connection` directly.

A lane is not shared: one coroutine, one call at a time.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.broker.client import RedisClient

_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


def transport_closed(exc: BaseException) -> bool:
    """uvloop's answer to a write on a connection the peer reset: `RuntimeError: unable to
    perform operation on <TCPTransport closed=True>; the handler is closed` (asyncio's loop
    drops the write and the read then fails with a ConnectionError). The same broken
    connection, by another name."""
    return isinstance(exc, RuntimeError) and "closed" in str(exc)


class Lane:
    def __init__(self, client: RedisClient) -> None:
        self._pool = client.connection_pool
        self._conn: AbstractConnection | None = None

    async def open(self) -> None:
        """Take the connection now rather than on the first call (so the first calls of
        several lanes are not ordered by how long each took to connect)."""
        if self._conn is None:
            self._conn = await self._pool.get_connection()

    async def call(self, *args: Any) -> Any:
        """Send one command and return its raw reply (no redis-py reply callback). An
        error reply raises ResponseError and keeps the connection. A broken connection
        (e.g. a pooled one gone stale when Redis restarted) is dropped and the command
        sent once more on a fresh one, as redis-py's own retry would; a second failure
        is raised for the caller's retry loop."""
        for attempt in (1, 2):
            await self.open()
            conn = self._conn
            assert conn is not None
            try:
                await conn.send_command(*args)
                return await conn.read_response()
            except ResponseError:
                raise
            except _BROKEN:
                await self._drop(conn)
                if attempt == 2:
                    raise
            except RuntimeError as exc:
                await self._drop(conn)
                if not transport_closed(exc):
                    raise
                if attempt == 2:
                    raise RedisConnectionError(f"connection reset: {exc}") from exc
            except BaseException:
                # Cancelled mid-call: the reply may still arrive on this connection, so
                # it cannot serve another command.
                await self._drop(conn)
                raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)

    async def _drop(self, conn: AbstractConnection) -> None:
        self._conn = None
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self._pool.release(conn)
