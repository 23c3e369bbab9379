"""redis-py asyncio connections that pack commands with hiredis.

redis-py's synchronous client packs commands with `hiredis.pack_command` when hiredis is
installed; its asyncio `Connection` still packs in Python, concatenating a growing buffer
per argument. A settle call of a graph batch carries a few hundred KEYS, and packing it
cost ~280 us in Python against ~37 us in hiredis (about 2.4 us of each W2 state). These
subclasses swap in the sync client's hiredis packing, nothing else.
"""

from __future__ import annotations

import asyncio
import re
import ssl
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
from redis.exceptions import (
    AuthenticationError,
    DataError,
    MovedError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.broker.errors import ConnectionSetupError, PermissionRefused


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


# -- failures retrying cannot mend ---------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in seen and len(seen) < 8:
        seen.append(at)
        at = at.__cause__ or at.__context__
    return seen


def setup_failure(exc: BaseException) -> str | None:
    """What is misconfigured when `exc` says the connection cannot be set up whatever the
    number of attempts (credentials refused, TLS refused, a certificate file missing), or
    None: redis-py raises these as ConnectionErrors, which are otherwise outages to ride
    out (a wrong password was retried forever as "Redis unavailable", issue 14)."""
    for err in _chain(exc):
        if isinstance(err, ConnectionSetupError):
            return str(err)
        if isinstance(err, AuthenticationError):
            return f"Redis refused the credentials ({err})"
        if isinstance(err, ssl.SSLCertVerificationError):
            why = getattr(err, "verify_message", None) or err
            return f"the server's TLS certificate is not trusted ({why})"
        if isinstance(err, ssl.SSLError) and not isinstance(
            err, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLWantReadError
        ):
            return f"the TLS handshake failed ({err})"
        if isinstance(err, RedisConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(err):
            return f"the server's TLS certificate is not trusted ({err})"
        if isinstance(err, FileNotFoundError | IsADirectoryError):
            return f"a file named in the connection options cannot be read ({err})"
    return None


ACL_COMMANDS = (
    "-@all +@stream +@hash +@list +@sortedset +get +set +del +exists +expire +pexpire "
    "+persist +pttl +type +multi +exec +discard +eval +evalsha +script|load "
    "+script|exists +time +ping +hello +auth +info"
)
"""The commands a per-namespace ACL user needs (README, Configuration: ACL). +info: the
eviction-policy check and the cluster-mode question."""

_NAMESPACE_IN_KEY = re.compile(rb"exo:\{([^}]*)\}")


CLUSTER_ACL_COMMANDS = "+cluster|slots +command"
"""What a cluster client sends besides: the topology, and the commands' key positions."""


def acl_rule(namespace: str, cluster: bool = False) -> str:
    """The minimal ACL rule of a user that runs namespace `namespace` (ACL SETUSER name on
    >password RULE); on a Redis Cluster (`cluster`), set on every node."""
    extra = f" {CLUSTER_ACL_COMMANDS}" if cluster else ""
    # The namespace's own tag, and its lanes' tags {ns/n} (broker/keys.py).
    return f"~exo:{{{namespace}}}:* ~exo:{{{namespace}/* {ACL_COMMANDS}{extra}"


def key_namespace(args: tuple[Any, ...]) -> str | None:
    """The namespace of the first `exo:{ns}:...` key among a command's arguments."""
    for arg in args[1:]:
        raw = arg.encode() if isinstance(arg, str) else arg
        if isinstance(raw, bytes) and raw.startswith(b"exo:{"):
            found = _NAMESPACE_IN_KEY.match(raw)
            if found:  # a lane's tag {ns/n} names the namespace before the slash
                return found.group(1).decode("utf-8", "replace").split("/", 1)[0]
    return None


def refusal(
    exc: NoPermissionError, user: str, args: tuple[Any, ...], cluster: bool = False
) -> PermissionRefused:
    """`exc` (Redis says "no permissions", naming neither user nor key) with the user, the
    command, the namespace and the grant it lacks."""
    if isinstance(exc, PermissionRefused):
        return exc
    name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    ns = key_namespace(args)
    where = f" in namespace {ns!r}" if ns is not None else ""
    grant = (
        acl_rule(ns, cluster)
        if ns is not None
        else f"{ACL_COMMANDS} {CLUSTER_ACL_COMMANDS}"
        if cluster
        else ACL_COMMANDS
    )
    return PermissionRefused(
        f"Redis ACL user {user!r} may not run {name.upper()}{where} ({exc}); grant it: "
        f"ACL SETUSER {user} {grant}"
    )


def user_of(kwargs: dict[str, Any]) -> str:
    return str(kwargs.get("username") or "default")


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
        """The cluster client when the server is a cluster, else None (asked once).
        Refused credentials or TLS raise ConnectionSetupError (see setup_failure)."""
        if self.decided:
            return self.cluster_client
        try:
            return await self._decide()
        except (RedisConnectionError, RedisClusterException) as exc:
            error = self.setup_error(exc)
            if error is None:
                raise
            raise error from exc

    async def _decide(self) -> RedisCluster | None:
        if self._deciding is None:
            self._deciding = asyncio.Lock()
        async with self._deciding:
            if not self.decided:
                if self.cluster_mode == "yes" or await self._is_cluster():
                    cluster = self._make_cluster()
                    try:
                        await cluster.initialize()
                    except RedisClusterException as exc:
                        await cluster.aclose()
                        if "not enabled" not in str(exc):
                            raise
                        raise ConnectionSetupError(
                            f"EXOSPHERE_REDIS_CLUSTER=yes, but {exc}: unset it (auto asks "
                            f"the server) or set it to no"
                        ) from exc
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
        try:
            cluster = self.cluster_client if self.decided else await self.decide()
            if cluster is None:
                return await super().execute_command(  # type: ignore[no-untyped-call]
                    *args, **options
                )
            assert self._slots is not None
            async with self._slots:
                return await cluster.execute_command(*_str_name(args), **options)
        except NoPermissionError as exc:
            raise refusal(exc, self.user, args, self.cluster_client is not None) from exc
        except MovedError as exc:
            if self.cluster_client is not None:
                raise
            raise ConnectionSetupError(
                f"this Redis is a node of a Redis Cluster (MOVED {exc}) but the client was "
                f"told it is not (EXOSPHERE_REDIS_CLUSTER=no): unset it or set it to auto"
            ) from exc
        except (RedisConnectionError, RedisClusterException) as exc:
            error = self.setup_error(exc)
            if error is None:
                raise
            raise error from exc

    @property
    def user(self) -> str:
        """The ACL user this client authenticates as."""
        return user_of(self.connection_pool.connection_kwargs)

    def setup_error(self, exc: BaseException) -> ConnectionSetupError | None:
        """`exc` as a ConnectionSetupError naming the server and the user, when it says the
        connection is misconfigured (setup_failure); else None."""
        problem = setup_failure(exc)
        if problem is None:
            return None
        if isinstance(exc, ConnectionSetupError):
            return exc
        kw = self.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
        return ConnectionSetupError(
            f"cannot connect to Redis at {where} as user {self.user!r}: {problem}; check "
            f"the URL (user:password@, rediss:// and its ssl_ca_certs / ssl_certfile / "
            f"ssl_keyfile parameters) and EXOSPHERE_API_KEY"
        )

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
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

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        cluster, self.cluster_client = self.cluster_client, None
        try:
            if cluster is not None:
                await cluster.aclose()
        finally:
            await super().aclose(close_connection_pool)


class _RoutedPipeline(Pipeline):
    """A pipeline of a ClusterAwareRedis: queued as usual, and at `execute` sent through
    the cluster client when the server is one (its scripts loaded on every primary first:
    a cluster pipeline does not load them as a single server's pipeline does). Refusals
    are raised as ClusterAwareRedis raises them."""

    def __init__(self, client: ClusterAwareRedis, transaction: bool, shard_hint: str | None):
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        first = self.command_stack[0][0] if self.command_stack else ("EXEC",)
        try:
            return await self._execute(raise_on_error)
        except NoPermissionError as exc:
            cluster = self._client.cluster_client is not None
            raise refusal(exc, self._client.user, first, cluster) from exc
        except (RedisConnectionError, RedisClusterException) as exc:
            error = self._client.setup_error(exc)
            if error is None:
                raise
            raise error from exc

    async def _execute(self, raise_on_error: bool) -> list[Any]:
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
