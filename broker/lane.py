"""A pooled connection held by one sequential caller, for the hot path's round trips.

`Redis.execute_command` checks a connection out of the pool and back in, wraps the call
in its retry machinery and records metrics, every call: about 45 us of CPU per command
on this project's benchmark VM, against 55 us for the whole round trip through the
connection itself. The worker's reader (XREADGROUP) and settler (the settle script) each
make one call per batch for as long as the Runtime runs, one call at a time, so each
keeps one connection of the pool and talks through redis-py's `Connection` directly.

A lane is not shared: one coroutine, one call at a time. On a Redis Cluster a lane holds
one connection per node it talks to and follows MOVED / ASK itself (_ClusterRoute).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.broker.client import Pool, RedisClient
from exospherehost.broker.connection import ClusterAwareRedis, cluster_of, refusal

_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


def transport_closed(exc: BaseException) -> bool:
    """uvloop's answer to a write on a connection the peer reset: `RuntimeError: unable to
    perform operation on <TCPTransport closed=True>; the handler is closed` (asyncio's loop
    drops the write and the read then fails with a ConnectionError). The same broken
    connection, by another name."""
    return isinstance(exc, RuntimeError) and "closed" in str(exc)


class Lane:
    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._pool: Pool | None = None
        self._conn: AbstractConnection | None = None
        self._cluster: _ClusterRoute | None = None
        self._decided = False

    async def open(self) -> None:
        """Take the connection now rather than on the first call (so the first calls of
        several lanes are not ordered by how long each took to connect). On a Redis
        Cluster connections are taken per node, on first use."""
        if not self._decided:
            cluster = await cluster_of(self._client)
            if cluster is not None:
                self._cluster = _ClusterRoute(cluster)
            else:
                self._pool = self._client.connection_pool
            self._decided = True
        if self._conn is None and self._cluster is None:
            assert self._pool is not None
            self._conn = await self._pool.get_connection()

    async def call(self, *args: Any) -> Any:
        """Send one command and return its raw reply (no redis-py reply callback). An
        error reply raises ResponseError and keeps the connection. A broken connection
        (e.g. a pooled one gone stale when Redis restarted) is dropped and the command
        sent once more on a fresh one, as redis-py's own retry would; a second failure
        is raised for the caller's retry loop. On a cluster the command goes to the node
        serving its first key's slot (see _ClusterRoute)."""
        try:
            if self._cluster is not None:
                return await self._cluster.call(args)
            for attempt in (1, 2):
                await self.open()
                if self._cluster is not None:
                    return await self._cluster.call(args)
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
        except NoPermissionError as exc:
            if not isinstance(self._client, ClusterAwareRedis):
                raise
            raise refusal(exc, self._client.user, args, self._cluster is not None) from exc
        except RedisConnectionError as exc:
            client = self._client
            error = client.setup_error(exc) if isinstance(client, ClusterAwareRedis) else None
            if error is None:
                raise
            raise error from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Give the connection (one per node on a cluster) back."""
        if self._cluster is not None:
            self._cluster.close()
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            await self._pool.release(conn)

    async def _drop(self, conn: AbstractConnection) -> None:
        self._conn = None
        try:
            await conn.disconnect(nowait=True)
        finally:
            if self._pool is not None:
                await self._pool.release(conn)


def first_key(args: Sequence[Any]) -> Any:
    """The first key of a command a lane sends (XREADGROUP, EVALSHA / EVAL), or None
    (keyless: SCRIPT LOAD, PING, ...)."""
    name = args[0].upper() if isinstance(args[0], bytes | str) else args[0]
    if name in (b"XREADGROUP", "XREADGROUP", b"XREAD", "XREAD"):
        for i, arg in enumerate(args):
            if arg in ("STREAMS", b"STREAMS", "streams", b"streams"):
                return args[i + 1]
        return None
    if name in (b"EVALSHA", "EVALSHA", b"EVAL", "EVAL", "EVALSHA_RO", "EVAL_RO"):
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    return args[1] if len(args) > 1 and name not in _KEYLESS else None


_KEYLESS = {"SCRIPT", b"SCRIPT", "PING", b"PING", "CLIENT", b"CLIENT", "ASKING", b"ASKING"}
_REDIRECTS = 5  # MOVED / ASK hops followed for one call before giving up


class _ClusterRoute:
    """A lane on a Redis Cluster: one held connection per node, the command sent to the
    node that serves the slot of its first key (a keyless one to the node of the last
    call, e.g. SCRIPT LOAD after a NOSCRIPT). MOVED (the slot moved for good: the cluster
    client's slot table is updated and the call sent to the new owner) and ASK (the slot
    is migrating and this key is there already: ASKING + the call on the target) are
    followed here, as the cluster client follows them for its own calls; TRYAGAIN and
    CLUSTERDOWN are raised to the caller's retry loop (outages)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.held: dict[str, tuple[ClusterNode, Connection]] = {}
        self.last: ClusterNode | None = None
        self.slots: dict[Any, int] = {}  # key -> slot, cached

    def node_for(self, key: Any) -> ClusterNode:
        if key is None:
            return self.last or self.cluster.get_default_node()
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = key_slot(key.encode() if isinstance(key, str) else key)
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    async def conn(self, node: ClusterNode) -> Connection:
        held = self.held.get(node.name)
        if held is not None and held[0] is not node:  # the node was replaced: refresh
            self.release(node.name)
            held = None
        if held is None:
            held = (node, node.acquire_connection())
            self.held[node.name] = held
        conn = held[1]
        if conn.should_reconnect():  # type: ignore[no-untyped-call]  # marked by a refresh
            await conn.disconnect()
        return conn

    async def call(self, args: tuple[Any, ...]) -> Any:
        node = self.node_for(first_key(args))
        asking = False
        for hop in range(_REDIRECTS + 1):
            self.last = node  # where a keyless follow-up goes (SCRIPT LOAD after NOSCRIPT)
            try:
                return await self.send(node, args, asking)
            except AskError as exc:
                if hop == _REDIRECTS:
                    raise
                node, asking = await self.target(exc), True
            except MovedError as exc:
                if hop == _REDIRECTS:
                    raise
                await self.cluster.nodes_manager.move_slot(exc)
                node, asking = self.node_for(first_key(args)), False
        raise AssertionError("unreachable")

    async def target(self, exc: AskError) -> ClusterNode:
        node = self.cluster.get_node(host=exc.host, port=exc.port)
        if node is None:  # a node this client has not met: learn the topology again
            await self.cluster.nodes_manager.initialize()
            node = self.cluster.get_node(host=exc.host, port=exc.port)
            if node is None:
                raise exc
        return node

    async def send(self, node: ClusterNode, args: tuple[Any, ...], asking: bool) -> Any:
        for attempt in (1, 2):
            conn = await self.conn(node)
            try:
                if asking:
                    await conn.send_packed_command(conn.pack_commands([("ASKING",), args]))
                    await conn.read_response()
                else:
                    await conn.send_command(*args)
                return await conn.read_response()
            except ResponseError:
                raise
            except _BROKEN:
                await self.drop(node.name)
                if attempt == 2:
                    raise
            except RuntimeError as exc:
                await self.drop(node.name)
                if not transport_closed(exc):
                    raise
                if attempt == 2:
                    raise RedisConnectionError(f"connection reset: {exc}") from exc
            except BaseException:
                await self.drop(node.name)  # cancelled mid-call (see Lane.call)
                raise
        raise AssertionError("unreachable")

    async def drop(self, name: str) -> None:
        held = self.held.pop(name, None)
        if held is not None:
            node, conn = held
            try:
                await conn.disconnect(nowait=True)
            finally:
                node.release(conn)

    def release(self, name: str) -> None:
        held = self.held.pop(name, None)
        if held is not None:
            held[0].release(held[1])

    def close(self) -> None:
        for name in list(self.held):
            self.release(name)
