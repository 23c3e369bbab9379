"""Dead letters at scale (issue 13 item 4), on the session's real redis-server: thousands
of letters listed newest first in pages, counted exactly, filtered by node / error text /
time, deleted and purged (filtered), redriven (filtered), and the dead stream capped by
the settle script (MAXLEN ~, `Runtime(dead_letters_maxlen=...)`)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, RetryPolicyModel, Runtime, StateManager
from exospherehost.broker.codec import pack
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import DeadLetterRecord, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.errors import InvalidArgument
from tests.integration.helpers import running

pytestmark = pytest.mark.redis

BASE_MS = 1_700_000_000_000
N = 3000


def _record(i: int, node: str, error: str) -> DeadLetterRecord:
    return DeadLetterRecord(
        node=node,
        state=f"{BASE_MS + i}-0",
        run="",
        identifier="",
        attempts=1,
        deliveries=1,
        error=error,
        traceback=f"Traceback ...\nValueError: {error}",
        time_ms=BASE_MS + i,
        entry=f"{BASE_MS + i}-0".encode(),
        original=pack({b"x": str(i).encode()}),
    )


async def seed(redis: Redis, namespace: str, n: int = N) -> None:
    """`n` dead letters, one per millisecond from BASE_MS (entry id = its time): every
    third of node B (the others A), every fifth with error 'boom <i>' (else 'bad <i>')."""
    key = Keys(namespace).dead()
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        r = _record(i, "B" if i % 3 == 0 else "A", f"boom {i}" if i % 5 == 0 else f"bad {i}")
        pairs = r.pairs()
        fields = {pairs[j]: pairs[j + 1] for j in range(0, len(pairs), 2)}
        pipe.xadd(key, fields, id=f"{BASE_MS + i}-0")
    await pipe.execute()


def _i(dead_id: str) -> int:
    return int(dead_id.split("-")[0]) - BASE_MS


async def test_pages_newest_first_cover_every_letter_once(
    sm: StateManager, redis: Redis, namespace: str
) -> None:
    await seed(redis, namespace)
    assert (await sm.dead_letter_count()).count == N
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await sm.dead_letter_page(500, cursor)
        seen += [_i(d.id) for d in page.letters]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
        assert pages < 20, "paging does not end"
    assert seen == list(range(N - 1, -1, -1)), "not every letter once, newest first"
    assert pages == N // 500  # the last full page already knows nothing older is left


async def test_filters_node_text_and_time(sm: StateManager, redis: Redis, namespace: str) -> None:
    await seed(redis, namespace)
    want = [i for i in range(N - 1, -1, -1) if i % 3 == 0 and i % 5 == 0]
    got: list[int] = []
    cursor = None
    while True:
        page = await sm.dead_letter_page(37, cursor, node="B", grep="BOOM")
        assert all(d.node == "B" and "boom" in d.error for d in page.letters)
        got += [_i(d.id) for d in page.letters]
        if (cursor := page.cursor) is None:
            break
    assert got == want
    count = await sm.dead_letter_count(node="B", grep="boom")
    assert (count.count, count.exact) == (len(want), True)
    # A time range (inclusive) narrows the id range read.
    page = await sm.dead_letter_page(1000, since=BASE_MS + 100, until=BASE_MS + 199)
    assert [_i(d.id) for d in page.letters] == list(range(199, 99, -1))
    assert page.cursor is None
    assert (await sm.dead_letter_count(since=BASE_MS + 2990)).count == 10
    with pytest.raises(InvalidArgument, match="until"):
        await sm.dead_letter_page(10, since=BASE_MS + 5, until=BASE_MS + 1)
    with pytest.raises(InvalidArgument, match="count"):
        await sm.dead_letter_page(0)


async def test_delete_and_filtered_purge(sm: StateManager, redis: Redis, namespace: str) -> None:
    await seed(redis, namespace)
    assert await sm.delete_dead_letters([f"{BASE_MS}-0", f"{BASE_MS + 1}-0", "1-0"]) == 2
    assert (await sm.dead_letter_count()).count == N - 2
    removed = await sm.purge_dead_letters(node="A", grep="boom")
    expected = sum(1 for i in range(2, N) if i % 3 != 0 and i % 5 == 0)
    assert removed == expected
    assert (await sm.dead_letter_count()).count == N - 2 - expected
    assert (await sm.dead_letter_count(node="A", grep="boom")).count == 0
    assert (await sm.dead_letter_count(node="B", grep="boom")).count > 0  # untouched
    assert await sm.purge_dead_letters(until=BASE_MS + 999) == sum(
        1 for i in range(2, 1000) if not (i % 3 != 0 and i % 5 == 0)
    )
    rest = await sm.dead_letter_count()
    assert await sm.purge_dead_letters() == rest.count
    assert (await sm.dead_letter_count()).count == 0
    assert await sm.purge_dead_letters() == 0


class Sink(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


async def test_redrive_filtered_moves_only_matches(
    sm: StateManager, redis: Redis, namespace: str
) -> None:
    await seed(redis, namespace, 600)
    report = await sm.redrive_all(node="B", grep="boom")
    want = [i for i in range(600) if i % 3 == 0 and i % 5 == 0]
    assert report.redriven == len(want) and not report.skipped
    assert await redis.xlen(Keys(namespace).queue("B")) == len(want)
    assert await redis.xlen(Keys(namespace).queue("A")) == 0
    assert (await sm.dead_letter_count()).count == 600 - len(want)
    assert (await sm.dead_letter_count(node="B", grep="boom")).count == 0


async def test_settle_script_caps_the_dead_stream(
    sm: StateManager, redis: Redis, namespace: str
) -> None:
    """The settle script trims the dead stream at each dead letter (MAXLEN ~ cap):
    5000 letters through a cap of 1000 leave about 1000, the newest."""
    broker = Broker(redis, namespace)
    keys = broker.keys
    for batch in range(10):
        plan = SettlePlan()
        for j in range(500):
            i = batch * 500 + j
            plan.entry(keys.queue("A"), f"{i + 1}-0", ack=False)
            plan.dead_letter(keys.dead(), _record(i, "A", f"bad {i}"), 1000)
        assert set(await broker.settle(plan)) == {1}
    n = (await sm.dead_letter_count()).count
    assert 1000 <= n < 1200, f"dead stream holds {n}, cap 1000 (~)"
    newest = (await sm.dead_letter_page(1)).letters[0]
    assert newest.error == "bad 4999"


class AlwaysFails(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        raise ValueError(f"no {self.inputs.x}")


async def test_runtime_dead_letters_maxlen(
    sm: StateManager, redis_url: str, namespace: str
) -> None:
    rt = Runtime(
        namespace,
        "capped",
        [AlwaysFails],
        redis_url,
        dead_letters_maxlen=150,
        default_retry_policy=RetryPolicyModel(max_retries=0),
    )
    async with running(rt):
        await sm.enqueue_many("AlwaysFails", [{"x": i} for i in range(600)])
        for _ in range(400):
            if rt.stats is not None and rt.stats.nodes["AlwaysFails"].dead_lettered >= 600:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("600 failures were not dead-lettered in 20 s")
    n = (await sm.dead_letter_count()).count
    assert 150 <= n < 350, f"dead stream holds {n}, cap 150 (~)"
    with pytest.raises(InvalidArgument, match="dead_letters_maxlen"):
        Runtime(namespace, "x", [AlwaysFails], redis_url, dead_letters_maxlen=-1)
