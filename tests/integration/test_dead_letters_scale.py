"""Dead letters at scale (issue 13 item 4), on the session's real redis-server: thousands
of letters listed newest first in pages, counted exactly, filtered by node / error text /
time, deleted and purged (filtered), redriven (filtered), and the dead stream capped by
the settle script (MAXLEN ~, `Runtime(dead_letters_maxlen=...)`)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis
from selenium.webdriver.common.by import By

from exospherehost import BaseNode, RetryPolicyModel, Runtime, StateManager
from exospherehost.broker.codec import pack
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import DeadLetterRecord, SettlePlan
from exospherehost.broker.streams import Broker
from exospherehost.dashboard import create_app
from exospherehost.errors import InvalidArgument
from tests.integration import test_dashboard as dash
from tests.integration.helpers import running

pytestmark = [pytest.mark.redis, pytest.mark.cluster_too]  # cluster: issue 14

browser = dash.browser  # headless Chromium (skipped without it, except in CI)
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
    broker = Broker(sm.client, namespace)
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


# -- dashboard: API and page --------------------------------------------------------------


def _call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_dashboard_api_pages_filters_and_purges(
    redis_url: str, redis: Redis, namespace: str
) -> None:
    await seed(redis, namespace, 2500)
    csrf = {"X-Exo-Dashboard": "1"}
    with dash.dashboard_server(create_app(redis_url, None)) as url:
        api = f"{url}api/ns/{namespace}"

        def call(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
            return _call(api + path, method, headers)

        status, page = await asyncio.to_thread(call, "/dead?count=100")
        assert status == 200
        assert (page["total"], page["matching"], len(page["dead"])) == (2500, 2500, 100)
        assert page["dead"][0]["id"] == f"{BASE_MS + 2499}-0"
        status, older = await asyncio.to_thread(call, f"/dead?count=100&before={page['cursor']}")
        assert older["dead"][0]["id"] == f"{BASE_MS + 2399}-0"
        status, overview = await asyncio.to_thread(call, "")
        assert overview["dead"] == {"count": 2500, "capped": False}  # exact, not "200+"

        q = f"node=B&grep=boom&since={BASE_MS + 500}&until={BASE_MS + 1499}"
        status, flt = await asyncio.to_thread(call, f"/dead?count=1000&{q}")
        want = [i for i in range(1499, 499, -1) if i % 15 == 0]
        assert [int(d["id"].split("-")[0]) - BASE_MS for d in flt["dead"]] == want
        assert (flt["matching"], flt["total"], flt["cursor"]) == (len(want), 2500, None)

        assert (await asyncio.to_thread(call, f"/dead/purge?{q}", "POST"))[0] == 403  # CSRF
        status, purged = await asyncio.to_thread(call, f"/dead/purge?{q}", "POST", csrf)
        assert (status, purged) == (200, {"deleted": len(want)})
        status, redriven = await asyncio.to_thread(
            call, "/dead/redrive-all?node=A&until=" + str(BASE_MS + 99), "POST", csrf
        )
        assert redriven == {"redriven": sum(1 for i in range(100) if i % 3 != 0)}
        one = f"{BASE_MS + 2499}-0"
        assert (await asyncio.to_thread(call, f"/dead/{one}/delete", "POST", csrf))[1] == {
            "deleted": 1
        }
        assert (await asyncio.to_thread(call, "/dead?since=x"))[0] == 400
        status, left = await asyncio.to_thread(call, "/dead?count=1")
        assert left["total"] == 2500 - len(want) - redriven["redriven"] - 1


async def test_dashboard_page_pages_filters_and_purges(
    redis_url: str, redis: Redis, namespace: str, browser: Any
) -> None:
    """Headless Chromium: the dead-letter page shows the exact count, pages older, filters
    by node and error text through its form, and purges what matches (CSRF header sent)."""
    await seed(redis, namespace, 300)
    page = dash.Page(browser)
    ns = namespace
    with dash.dashboard_server(create_app(redis_url, None)) as url:
        await page.open(f"{url}#/ns/{ns}/dead")
        await page.text_of("#dead-count", "300")
        await page.css("#dead tbody tr[data-dead]", 50)
        await page.css(f'tr[data-dead="{BASE_MS + 299}-0"]')
        await page.click("#dead-older")
        await page.css(f'tr[data-dead="{BASE_MS + 249}-0"]')
        await page.gone(f'tr[data-dead="{BASE_MS + 299}-0"]')

        def fill(d: Any) -> bool:
            d.find_element(By.NAME, "node").send_keys("B")
            d.find_element(By.NAME, "grep").send_keys("boom")
            d.find_element(By.ID, "dead-apply").click()
            return True

        await page.until("the filter form", fill)
        matching = sum(1 for i in range(300) if i % 15 == 0)
        await page.text_of("#dead-count", f"{matching} matching of 300")
        await page.css("#dead tbody tr[data-dead]", matching)
        await asyncio.to_thread(browser.execute_script, "window.confirm = () => true;")
        await page.click("button#purge")
        await page.text_of("#flash", f"{matching} dead letter(s) deleted")
        await page.text_of("#dead-count", f"0 matching of {300 - matching}")
        assert await redis.xlen(Keys(ns).dead()) == 300 - matching
        await page.click("#dead-clear")
        await page.text_of("#dead-count", str(300 - matching))
        await page.click(f'button.delete[data-dead="{BASE_MS + 299}-0"]')
        await page.gone(f'tr[data-dead="{BASE_MS + 299}-0"]')
        if shot := os.environ.get("EXO_DEAD_SCREENSHOT"):
            await asyncio.to_thread(browser.save_screenshot, shot)
