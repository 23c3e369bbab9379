"""Where Redis is: `redis_url=` or EXOSPHERE_REDIS_URL; credential: `key=` or EXOSPHERE_API_KEY."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.broker.connection import faster
from exospherehost.errors import ConfigError as ConfigError  # old import path

ENV_URL = "EXOSPHERE_REDIS_URL"
ENV_KEY = "EXOSPHERE_API_KEY"
_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisConfig:
    url: str
    password: str | None

    def client(self, **kwargs: object) -> aioredis.Redis:
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
        # A blocking pool makes callers wait for a free connection instead of failing
        # with MaxConnectionsError when many coroutines share one client.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=64, timeout=30, **opts
        )
        # from_url picks the class by scheme (redis, rediss, unix); keep it, packing with
        # hiredis (exospherehost.broker.connection).
        pool.connection_class = faster(pool.connection_class)
        return aioredis.Redis(connection_pool=pool)


def resolve(redis_url: str | None = None, key: str | None = None) -> RedisConfig:
    url = redis_url if redis_url is not None else os.environ.get(ENV_URL)
    source = "redis_url" if redis_url is not None else ENV_URL
    if not url:
        raise ConfigError(
            f"no Redis configured: pass redis_url='redis://host:6379/0' or set {ENV_URL} "
            f"(and {ENV_KEY} for the password / ACL credential if the server needs one)"
        )
    parsed = urlparse(url)
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
    return RedisConfig(url, password)
