"""redis-py asyncio connections that pack commands with hiredis.

redis-py's synchronous client packs commands with `hiredis.pack_command` when hiredis is
installed; its asyncio `Connection` still packs in Python, concatenating a growing buffer
per argument. A settle call of a graph batch carries a few hundred KEYS, and packing it
cost ~280 us in Python against ~37 us in hiredis (about 2.4 us of each W2 state). These
subclasses swap in the sync client's hiredis packing, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError, NoPermissionError, ResponseError


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py: a command name may carry literal arguments ('CONFIG GET').
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # None, bool, ...: redis-py's own error type
            raise DataError(str(exc)) from None


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


FAST: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}
"""redis-py's connection class -> the same with hiredis packing."""


def faster(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """The hiredis-packing twin of `connection_class`, or it unchanged if it has none."""
    return FAST.get(connection_class, connection_class)


# -- one client for a single server or a Redis Cluster ------------------------------------

CLUSTER_MODES = ("auto", "yes", "no")
"""Whether the server is a Redis Cluster: ask it (auto), or be told (yes / no)."""

CLUSTER_CONCURRENCY = 64
"""Commands in flight at once through a cluster client: redis-py's asyncio RedisCluster
raises MaxConnectionsError past 100 concurrent commands per node instead of waiting (the
single-server client waits on its BlockingConnectionPool of 64)."""


def _str_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # RedisCluster routes by the command name as str and refuses bytes names (the broker
    # sends b"XREADGROUP" to a single server to skip redis-py's reply callback).
    return (args[0].decode(), *args[1:]) if isinstance(args[0], bytes) else args


class ClusterAwareRedis(aioredis.Redis):
    """The asyncio client of config.client(): a single-server `Redis` that, when the server
    turns out to run in cluster mode (INFO cluster: cluster_enabled:1), sends every
    command through a `RedisCluster` of the same URL instead (routing by slot, following
    MOVED / ASK, refreshing its topology). The question is asked once, on the first
    command (`decide`), so building a client never touches the network.

    `mode` "yes" / "no" skips the question. Only the commands the broker sends are routed:
    every command method (they all end in execute_command), pipelines, scripts, and
    scan_iter (a cluster's SCAN runs on every primary)."""

    def __init__(
        self,
        *,
        connection_pool: aioredis.ConnectionPool,
        mode: str,
        cluster: Callable[[], RedisCluster],
    ) -> None:
        super().__init__(connection_pool=connection_pool)
        if mode not in CLUSTER_MODES:
            raise ValueError(f"cluster mode {mode!r}: expected one of {CLUSTER_MODES}")
        self.cluster_mode = mode
        self._make_cluster = cluster
        self.cluster_client: RedisCluster | None = None  # set when decided: a cluster
        self.decided = mode == "no"
        self._deciding: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None

    async def decide(self) -> RedisCluster | None:
        """The cluster client when the server is a cluster, else None (asked once)."""
        if self.decided:
            return self.cluster_client
        if self._deciding is None:
            self._deciding = asyncio.Lock()
        async with self._deciding:
            if not self.decided:
                if self.cluster_mode == "yes" or await self._is_cluster():
                    cluster = self._make_cluster()
                    await cluster.initialize()
                    self.cluster_client = cluster
                    self._slots = asyncio.Semaphore(CLUSTER_CONCURRENCY)
                    # The question's connection is of no further use.
                    await self.connection_pool.disconnect()
                self.decided = True
        return self.cluster_client

    async def _is_cluster(self) -> bool:
        try:
            info = await super().execute_command(  # type: ignore[no-untyped-call]
                "INFO", "cluster"
            )
        except NoPermissionError:
            # A user without +info: CLUSTER MYID answers only in cluster mode (an ERR
            # "cluster support disabled" otherwise).
            try:
                await super().execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER", "MYID"
                )
            except NoPermissionError as exc:
                raise NoPermissionError(
                    f"cannot tell whether this Redis is a cluster: the user may run neither "
                    f"INFO nor CLUSTER MYID ({exc}); grant +info, or set "
                    f"EXOSPHERE_REDIS_CLUSTER=yes or no"
                ) from exc
            except ResponseError:
                return False
            return True
        return bool(int(info.get("cluster_enabled", 0))) if isinstance(info, dict) else False

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        cluster = self.cluster_client if self.decided else await self.decide()
        if cluster is None:
            return await super().execute_command(  # type: ignore[no-untyped-call]
                *args, **options
            )
        assert self._slots is not None
        async with self._slots:
            return await cluster.execute_command(*_str_name(args), **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        if self.decided and self.cluster_client is None:
            return super().pipeline(transaction, shard_hint)
        return _RoutedPipeline(self, transaction, shard_hint)

    async def scan_iter(  # type: ignore[override]
        self, match: Any = None, count: int | None = None, _type: str | None = None, **kw: Any
    ) -> AsyncIterator[Any]:
        cluster = await self.decide()
        source = (
            cluster.scan_iter(match=match, count=count, _type=_type, **kw)
            if cluster is not None
            else super().scan_iter(match=match, count=count, _type=_type, **kw)
        )
        async for key in source:
            yield key

    async def primaries_info(self, section: str) -> list[dict[str, Any]]:
        """INFO `section` of every primary (one entry on a single server)."""
        cluster = await self.decide()
        if cluster is None:
            return [await super().info(section)]
        replies = await cluster.info(section, target_nodes=RedisCluster.PRIMARIES)
        return list(replies.values()) if isinstance(replies, dict) else [replies]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        cluster, self.cluster_client = self.cluster_client, None
        try:
            if cluster is not None:
                await cluster.aclose()
        finally:
            await super().aclose(close_connection_pool)


class _RoutedPipeline(Pipeline):
    """A pipeline of a ClusterAwareRedis not (yet) known to talk to a single server:
    queued as usual, and at `execute` sent through the cluster client when the server is
    one (its scripts loaded on every primary first: a cluster pipeline does not load them
    as a single server's pipeline does)."""

    def __init__(self, client: ClusterAwareRedis, transaction: bool, shard_hint: str | None):
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        cluster = await self._client.decide()
        if cluster is None:
            return await super().execute(raise_on_error)
        stack, scripts = self.command_stack, list(self.scripts)
        await self.reset()  # type: ignore[no-untyped-call]
        if scripts:
            known = await cluster.script_exists(*(s.sha for s in scripts))
            for script, there in zip(scripts, known, strict=True):
                if not there:
                    await cluster.script_load(script.script)
        pipe = cluster.pipeline(transaction=self.is_transaction)
        for args, options in stack:
            pipe.execute_command(*_str_name(args), **options)
        return await pipe.execute(raise_on_error=raise_on_error)


async def cluster_of(client: object) -> RedisCluster | None:
    """The RedisCluster `client` sends its commands through, or None for a single server."""
    if isinstance(client, ClusterAwareRedis):
        return await client.decide()
    if isinstance(client, RedisCluster):
        return client
    return None
