"""Where Redis is: `redis_url=` or EXOSPHERE_REDIS_URL; credential: `key=` or EXOSPHERE_API_KEY;
whether it is a Redis Cluster: asked of the server, or EXOSPHERE_REDIS_CLUSTER=yes|no."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.broker.connection import CLUSTER_MODES, ClusterAwareRedis, faster
from exospherehost.errors import ConfigError as ConfigError  # old import path

ENV_URL = "EXOSPHERE_REDIS_URL"
ENV_KEY = "EXOSPHERE_API_KEY"
ENV_CLUSTER = "EXOSPHERE_REDIS_CLUSTER"
ENV_LEGACY_URI = "EXOSPHERE_STATE_MANAGER_URI"
"""The original SDK's setting: the address of its state-manager server, which this SDK does
not have (Redis is the broker). Read only to say what to set instead."""
_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisConfig:
    url: str
    password: str | None
    cluster: str = "auto"  # auto: ask the server (INFO cluster); yes / no: told

    def client(self, **kwargs: object) -> aioredis.Redis:
        """The one place a client is made: a single-server client that turns into a
        Redis Cluster client when the server runs in cluster mode (the same redis:// or
        rediss:// URL of any one node; see broker.connection.ClusterAwareRedis)."""
        # A socket timeout detects a hung server; blocking reads stay well below it.
        opts: dict[str, object] = {
            "decode_responses": False,
            "health_check_interval": 30,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            # A pooled connection goes stale when Redis restarts: reconnect and retry
            # instead of failing the caller. (A write whose reply was lost may then run
            # twice: enqueue is at-least-once; settles are idempotent by their XACK.)
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 5),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        if self.password is not None:
            opts["password"] = self.password
        opts.update(kwargs)
        if self.cluster != "no" and urlparse(self.url).scheme == "unix":
            # A cluster has no unix sockets: a unix:// URL is a single server.
            return self._single(opts)
        return ClusterAwareRedis(
            connection_pool=self._single(opts).connection_pool,
            mode=self.cluster,
            cluster=lambda: self._cluster(opts),
        )

    def _single(self, opts: dict[str, object]) -> aioredis.Redis:
        # A blocking pool makes callers wait for a free connection instead of failing
        # with MaxConnectionsError when many coroutines share one client.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=64, timeout=30, **opts
        )
        # from_url picks the class by scheme (redis, rediss, unix); keep it, packing with
        # hiredis (exospherehost.broker.connection).
        pool.connection_class = faster(pool.connection_class)
        return aioredis.Redis(connection_pool=pool)

    def _cluster(self, opts: dict[str, object]) -> RedisCluster:
        # The same options; a cluster client keeps connections per node (no pool object).
        # Its retry covers MOVED / ASK / TRYAGAIN / CLUSTERDOWN and refreshes the topology.
        client = RedisCluster.from_url(self.url, **opts)
        # It builds connections with the class in its connection kwargs (plain or SSL),
        # shared with its node manager; swap in the hiredis-packing twin, also on the
        # node it was given (built already).
        kwargs = client.connection_kwargs
        kwargs["connection_class"] = faster(kwargs["connection_class"])
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = faster(node.connection_class)  # type: ignore[assignment]
        return client


def resolve(
    redis_url: str | None = None, key: str | None = None, cluster: str | None = None
) -> RedisConfig:
    url = redis_url if redis_url is not None else os.environ.get(ENV_URL)
    source = "redis_url" if redis_url is not None else ENV_URL
    if not url:
        legacy = os.environ.get(ENV_LEGACY_URI)
        if legacy:
            raise ConfigError(legacy_uri_problem(ENV_LEGACY_URI, legacy))
        raise ConfigError(
            f"no Redis configured: pass redis_url='redis://host:6379/0' or set {ENV_URL} "
            f"(and {ENV_KEY} for the password / ACL credential if the server needs one)"
        )
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        # The original SDK's 4th positional argument was the state-manager URI.
        raise ConfigError(legacy_uri_problem(source, url))
    if parsed.scheme not in _SCHEMES:
        raise ConfigError(
            f"{source}={url!r} is not a Redis URL: expected redis://host:port/db, "
            f"rediss://host:port/db (TLS) or unix:///path/to/redis.sock"
        )
    if parsed.scheme != "unix":
        if not parsed.hostname:
            raise ConfigError(f"{source}={url!r} has no host: expected redis://host:port/db")
        try:
            parsed.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"{source}={url!r} has an invalid port") from None
    password = key if key is not None else os.environ.get(ENV_KEY) or None
    mode = cluster if cluster is not None else os.environ.get(ENV_CLUSTER) or "auto"
    if mode.lower() not in CLUSTER_MODES:
        what = "cluster" if cluster is not None else ENV_CLUSTER
        raise ConfigError(
            f"{what}={mode!r}: expected auto (ask the server whether it is a Redis Cluster), "
            f"yes or no"
        )
    if mode.lower() == "yes" and parsed.scheme == "unix":
        raise ConfigError(f"{source}={url!r}: a Redis Cluster cannot be reached by unix socket")
    return RedisConfig(url, password, mode.lower())


def legacy_uri_problem(source: str, value: str) -> str:
    """What to say when the original SDK's state-manager address is given: there is no
    state-manager server here, so it cannot be used; say what to set instead."""
    return (
        f"{source}={value!r} is not a Redis URL: it looks like the original SDK's "
        f"state-manager address, and this SDK has no state-manager server (Redis is the "
        f"broker and the state): pass "
        f"redis_url='redis://host:6379/0' or set {ENV_URL} instead ({ENV_KEY} stays the "
        f"credential, now the Redis password / ACL key)"
    )


def legacy_arguments(
    redis_url: str | None,
    state_manager_uri: str | None,
    version: str | None,
    version_name: str,
) -> str | None:
    """The Redis URL to use given the original SDK's keyword arguments (accepted where they
    cost nothing): `state_manager_uri=` is taken when it is a Redis URL and refused (with
    what to set instead) when it is the state manager's http(s) address; the API version
    (`state_manage_version` / `state_manager_version`) only accepts the original's "v0"."""
    if version is not None and version != "v0":
        raise ConfigError(
            f"{version_name}={version!r}: this SDK speaks to Redis, not to a state-manager "
            f"API; leave {version_name} out (the original's only value, 'v0', is accepted)"
        )
    if state_manager_uri is None:
        return redis_url
    if urlparse(state_manager_uri).scheme in _SCHEMES and redis_url is None:
        return state_manager_uri
    if redis_url is not None:
        raise ConfigError(
            f"state_manager_uri={state_manager_uri!r} and redis_url={redis_url!r} are both "
            f"given: pass redis_url only (this SDK has no state-manager server)"
        )
    raise ConfigError(legacy_uri_problem("state_manager_uri", state_manager_uri))
