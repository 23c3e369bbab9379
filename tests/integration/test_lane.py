"""exospherehost.broker.lane.Lane: one pooled connection per sequential caller, on a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from exospherehost.broker.codec import Envelope, decode, encode
from exospherehost.broker.keys import ENVELOPE_FIELD
from exospherehost.broker.lane import Lane
from exospherehost.broker.streams import Broker
from exospherehost.config import resolve
from exospherehost.runtime.outcomes import Completed, Job
from exospherehost.runtime.settle import SettleConfig, plan_settle


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = resolve(redis_url).client()
    yield c
    await c.aclose()


async def test_raw_replies_and_error_replies_keep_the_connection(
    client: Redis, namespace: str
) -> None:
    lane = Lane(client)
    key = f"{namespace}:k"
    assert await lane.call("SET", key, "v") == b"OK"
    conn_id = await lane.call("CLIENT", "ID")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await lane.call("LPUSH", key, "x")
    assert await lane.call("CLIENT", "ID") == conn_id  # same connection after an error reply
    await lane.close()
    await client.delete(key)


async def test_a_killed_connection_is_replaced_once(client: Redis, redis_url: str) -> None:
    lane = Lane(client)
    first = await lane.call("CLIENT", "ID")
    other = Redis.from_url(redis_url)
    try:
        assert await other.client_kill_filter(_id=first) == 1
    finally:
        await other.aclose()
    second = await lane.call("CLIENT", "ID")  # sent again on a fresh connection
    assert second != first
    await lane.close()


async def test_an_unreachable_server_is_raised_to_the_caller() -> None:
    dead = resolve("redis://127.0.0.1:9/0").client()  # the discard port: refused
    try:
        with pytest.raises(RedisConnectionError):
            await Lane(dead).call("PING")
    finally:
        await dead.aclose()


async def test_a_call_cancelled_mid_flight_never_hands_its_reply_to_the_next(
    client: Redis, namespace: str
) -> None:
    lane = Lane(client)
    key = f"{namespace}:list"
    blocked = asyncio.create_task(lane.call("BLPOP", key, 5))
    deadline = time.monotonic() + 5
    while not any(c.get("cmd") == "blpop" for c in await client.client_list()):
        assert time.monotonic() < deadline, "the BLPOP never reached the server"
        await asyncio.sleep(0.01)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await client.rpush(key, "late")  # would wake the cancelled BLPOP's connection
    assert await lane.call("PING") == b"PONG"  # a fresh connection: not the BLPOP reply
    assert await client.lpop(key) == b"late"  # the dropped connection consumed nothing
    await lane.close()


async def test_settle_through_a_lane_reloads_a_flushed_script(
    client: Redis, namespace: str
) -> None:
    broker = Broker(client, namespace)
    keys = broker.keys
    await broker.ensure_groups(["A"])
    await client.xadd(keys.queue("A"), {ENVELOPE_FIELD: encode(Envelope("s", {"x": 1}))})
    lane = Lane(client)
    [(_, [(entry_id, fields)])] = await broker.read("w", ["A"], 10, None, lane)
    await client.script_flush()  # as a Redis restart would: NOSCRIPT on the next EVALSHA
    job = Job("A", keys.queue("A"), entry_id, fields, decode(entry_id, fields))
    plan = plan_settle([Completed(job, [{"y": 2}], False)], SettleConfig(keys=keys, graphs={}))
    assert await broker.settle(plan, lane) == [1]
    assert await client.xlen(keys.output("A")) == 1
    await lane.close()


async def test_close_gives_the_connection_back(client: Redis) -> None:
    lane = Lane(client)
    await lane.call("PING")
    pool = client.connection_pool
    in_use = len(pool._in_use_connections)
    await lane.close()
    assert len(pool._in_use_connections) == in_use - 1
    await lane.close()  # idempotent
