"""exospherehost.broker.connection: hiredis packing, byte for byte what redis-py sends."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from exospherehost.broker.connection import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
)
from exospherehost.config import resolve


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("CONFIG GET", "maxmemory"),  # literal arguments inside the command name
        (b"XREADGROUP", "GROUP", "exo", "c", "COUNT", 100, "STREAMS", "q", ">"),
        ("EVALSHA", "a" * 40, 3, "k1", "k:é", b"\x00\xff", "exo", b"x" * 70_000, 7, 1.5),
    ],
)
def test_packs_like_redis_py(args: tuple[object, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_unpackable_argument_is_redis_pys_data_error() -> None:
    with pytest.raises(DataError, match="must be str, int, float or bytes"):
        HiredisConnection().pack_command("SET", "k", None)


@pytest.mark.parametrize(
    ("url", "cls", "base"),
    [
        ("redis://127.0.0.1:6399/0", HiredisConnection, Connection),
        ("rediss://127.0.0.1:6399/0", HiredisSSLConnection, SSLConnection),
        ("unix:///tmp/redis.sock", HiredisUnixConnection, UnixDomainSocketConnection),
    ],
)
def test_clients_use_hiredis_packing_for_every_scheme(url: str, cls: type, base: type) -> None:
    pool = resolve(url).client().connection_pool
    assert pool.connection_class is cls and issubclass(cls, base)
