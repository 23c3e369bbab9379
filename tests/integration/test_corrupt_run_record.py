"""A run hash edited by hand or by a foreign client (a counter that is not an integer,
bytes that are not UTF-8) gives a CorruptRecord naming the run, key and field, not a
bare ValueError from int() or a UnicodeDecodeError."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from redis.asyncio import Redis

from exospherehost import GraphNodeModel, StateManager
from exospherehost.broker import fields as f
from exospherehost.broker.keys import Keys
from exospherehost.dashboard import create_app
from exospherehost.errors import CorruptRecord
from tests.integration.test_dashboard import dashboard_server

pytestmark = pytest.mark.redis


async def _run(sm: StateManager, ns: str) -> str:
    await sm.broker.registry.register({"Anything": "{}"})  # as a Runtime would
    await sm.upsert_graph(
        "g", [GraphNodeModel(node_name="Anything", namespace=ns, identifier="p", inputs={})]
    )
    return await sm.trigger("g")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        (f"{f.FAILED_COUNT}p", b"abc", f"'{f.FAILED_COUNT}p' is 'abc', not an integer"),
        (f.RUN_OPEN, b"1.5", f"'{f.RUN_OPEN}' is '1.5', not an integer"),
        (f.RUN_GRAPH, b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_a_run_hash_that_the_sdk_never_wrote_is_refused_by_name(
    redis_url: str, namespace: str, redis: Redis, field: str, value: bytes, named: str
) -> None:
    async with StateManager(namespace, redis_url) as sm:
        run = await _run(sm, namespace)
        key = Keys(namespace).for_run(run).run(run)
        await redis.hset(key, field, value)
        with pytest.raises(CorruptRecord) as caught:
            await sm.status(run)
    message = str(caught.value)
    assert run in message and key in message and named in message, message


async def test_the_dashboard_answers_500_with_the_reason_for_a_corrupt_run(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    async with StateManager(namespace, redis_url) as sm:
        run = await _run(sm, namespace)
        await redis.hset(Keys(namespace).for_run(run).run(run), f.RUN_OPEN, b"many")
    with dashboard_server(create_app(redis_url, None)) as url:
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"{url}api/ns/{namespace}/runs/{run}")
        except urllib.error.HTTPError as exc:
            code, body = exc.code, json.loads(exc.read())
        else:
            raise AssertionError("a corrupt run hash was served as if it were fine")
    assert code == 500, code
    assert "'open' is 'many', not an integer" in body["error"], body
