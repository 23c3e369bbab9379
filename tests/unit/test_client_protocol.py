"""broker.client's protocols name the redis-py commands the broker sends; mypy cannot check
them against redis-py (its annotations are `reply | Awaitable[reply]`), so this does: every
member exists on the real class and takes the protocol's parameters by the same names."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline as RedisPipeline
from redis.asyncio.connection import ConnectionPool

from exospherehost.broker.client import Pipeline, Pool, RedisClient, Script


def _members(protocol: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(protocol).items()
        if (not name.startswith("_") or name == "__call__")
        and (callable(value) or isinstance(value, property))
    ) + sorted(getattr(protocol, "__annotations__", {}))


def _parameters_fit(ours: Any, theirs: Any) -> list[str]:
    """Why a call made as `ours` allows would not bind to `theirs` (empty: it does)."""
    mine = inspect.signature(ours)
    real = inspect.signature(theirs)
    problems = []
    takes_any = any(p.kind is p.VAR_KEYWORD for p in real.parameters.values())
    star_args = any(p.kind is p.VAR_POSITIONAL for p in real.parameters.values())
    for name, p in mine.parameters.items():
        if name == "self":
            continue
        if p.kind is p.VAR_POSITIONAL:
            if not star_args:
                problems.append(f"*{name}: redis-py takes no *args")
        elif name not in real.parameters and not takes_any:
            problems.append(f"{name}: not a parameter of redis-py's")
    for name, p in real.parameters.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if name != "self" and required and name not in mine.parameters:
            problems.append(f"{name}: redis-py requires it")
    return problems


def _instances() -> list[tuple[type, object]]:
    # Instances, for attributes set in __init__ (connection_pool); nothing connects.
    client = Redis()
    pipe = client.pipeline()
    assert isinstance(pipe, RedisPipeline)
    script = client.register_script("return 1")
    return [(RedisClient, client), (Pipeline, pipe), (Pool, ConnectionPool()), (Script, script)]


@pytest.mark.parametrize(("protocol", "real"), _instances())
def test_every_member_matches_redis_py(protocol: type, real: object) -> None:
    problems = {}
    for name in _members(protocol):
        assert hasattr(real, name), f"{type(real).__name__} has no {name}"
        ours, theirs = getattr(protocol, name, None), getattr(real, name)
        if not callable(ours) or isinstance(ours, property):
            continue  # an attribute (connection_pool, sha): its presence is what matters
        if found := _parameters_fit(ours, theirs):
            problems[name] = found
    assert problems == {}


def test_the_protocols_are_not_empty() -> None:
    # The members above are found by reflection: make sure it finds them.
    assert {"pipeline", "register_script", "xrange", "hgetall"} <= set(_members(RedisClient))
    assert {"execute", "hexists", "xinfo_groups"} <= set(_members(Pipeline))
