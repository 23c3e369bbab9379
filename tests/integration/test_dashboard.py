"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): graphs are drawn, a triggered run appears and turns SUCCEEDED, a dead letter is
listed and leaves the list when its Redrive button is clicked.

Selenium is synchronous; the Runtime under test runs in this test's event loop, so every
browser call goes through asyncio.to_thread to keep the loop (and the Runtime) running.
The dashboard server runs in a thread of its own with its own event loop, as a separate
server process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import uvicorn
from pydantic import BaseModel
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesModel,
)
from exospherehost.dashboard import create_app
from exospherehost.dashboard.layout import layout
from tests.integration.apps.nodes import Collect, Label, Split, Square, Work
from tests.integration.helpers import running, squares_graph

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20.0  # upper bound of every wait on the page; each returns as soon as it holds


class FailOnce(BaseNode):
    """Fails its first execution in this process and succeeds afterwards, so a state that
    was dead-lettered (no retries) succeeds when redriven."""

    failed: ClassVar[bool] = False

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        if not FailOnce.failed:
            FailOnce.failed = True
            raise RuntimeError("FailOnce fails its first execution")
        return self.Outputs(x=self.inputs.x)


# ---- chromium -----------------------------------------------------------------------------
def _have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def _chromium_missing_reason() -> str | None:
    """None when chromium and its driver are usable; otherwise what to install."""
    if _have_chromium():
        return None
    return (
        f"{CHROMIUM} / {CHROMEDRIVER} missing: apt-get install -y chromium chromium-driver "
        "(.ci/run installs them)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    reason = _chromium_missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must really run the browser test, never skip it
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="exo-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",  # running as root in a container
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium then never tries to download one.
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


# ---- dashboard server ---------------------------------------------------------------------
@contextlib.contextmanager
def dashboard_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound before the server starts: no port race
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "dashboard server died at start-up"
            assert time.monotonic() < deadline, "dashboard server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Page:
    """Async wrappers over the (blocking) WebDriver, with bounded waits on the DOM."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def open(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def until(self, what: str, check: Callable[[webdriver.Chrome], Any]) -> Any:
        """Poll the DOM until `check` returns something truthy (the page re-renders every
        second, so elements may go stale between finding and reading: retried)."""

        def wait() -> Any:
            w = WebDriverWait(
                self.driver,
                WAIT_S,
                0.1,
                ignored_exceptions=[StaleElementReferenceException, NoSuchElementException],
            )
            try:
                return w.until(check)
            except TimeoutException:
                shown = self.driver.execute_script("return document.body.textContent")
                raise AssertionError(f"page never showed {what}; it shows:\n{shown}") from None

        return await asyncio.to_thread(wait)

    async def css(self, selector: str, count: int = 1) -> list[Any]:
        """Wait for at least `count` elements matching `selector`."""
        return await self.until(  # type: ignore[no-any-return]
            f"{count}x {selector}",
            lambda d: (
                (found := d.find_elements(By.CSS_SELECTOR, selector))
                and len(found) >= count
                and found
            ),
        )

    async def text_of(self, selector: str, wanted: str) -> None:
        """Wait for `wanted` in the text of an element matching `selector` (textContent,
        as WebElement.text is empty for SVG text)."""
        await self.until(
            f"{wanted!r} in {selector}",
            lambda d: any(
                wanted in (e.get_attribute("textContent") or "")
                for e in d.find_elements(By.CSS_SELECTOR, selector)
            ),
        )

    async def gone(self, selector: str) -> None:
        await self.until(
            f"{selector} removed", lambda d: not d.find_elements(By.CSS_SELECTOR, selector)
        )

    async def click(self, selector: str) -> None:
        def clicked(d: webdriver.Chrome) -> bool:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True

        # Retried while the element is missing or replaced by a re-render mid-click.
        await self.until(f"a clickable {selector}", clicked)


# ---- graphs -------------------------------------------------------------------------------
def fan_in(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace=ns,
            identifier="work",
            inputs={"value": "${{ fan.outputs.value }}"},
            next_nodes=["collect"],
        ),
        GraphNodeModel(
            node_name="Collect",
            namespace=ns,
            identifier="collect",
            unites=UnitesModel(identifier="fan"),
            inputs={"values": "${{ work.outputs.value }}", "items": "${{ store.n }}"},
        ),
    ]


async def test_dashboard_shows_runs_and_redrives_dead_letters(
    redis_url: str, namespace: str, browser: webdriver.Chrome
) -> None:
    FailOnce.failed = False
    nodes = [Split, Square, Label, Work, Collect, FailOnce]
    rt = Runtime(namespace=namespace, name="dash", nodes=nodes, redis_url=redis_url)
    page = Page(browser)
    ns = namespace
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        await sm.upsert_graph("squares", squares_graph(ns, base=1), secrets={})
        await sm.upsert_graph(
            "fanin", fan_in(ns), secrets={}, store_config=StoreConfigModel(required_keys=["n"])
        )
        await sm.upsert_graph(
            "flaky",
            [
                GraphNodeModel(
                    node_name="FailOnce", namespace=ns, identifier="once", inputs={"x": 7}
                )
            ],
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        with dashboard_server(create_app(redis_url, None)) as url:
            # Namespaces list -> the namespace: every graph drawn, unites edge dashed.
            await page.open(url)
            await page.click(f'a[data-namespace="{ns}"]')
            await page.css('svg.dag[data-graph="squares"] g.node', 3)
            [arc] = await page.css('svg.dag[data-graph="fanin"] path.edge.unites')
            dash = await asyncio.to_thread(arc.value_of_css_property, "stroke-dasharray")
            assert dash not in ("", "none"), dash
            await page.text_of('#nodes tr[data-node="Square"] td.done-rate', "/s")  # per node

            # A run triggered through the SDK appears on the graph page, then SUCCEEDED.
            await page.click('.card.graph[data-graph="squares"] h3 a')
            await page.css("table#runs")
            run = await sm.trigger("squares")
            row = f'tr[data-run="{run}"]'
            await page.css(row)
            await page.text_of(f"{row} td.status", "SUCCEEDED")
            # Live queue figures from node_stats, once per node type in the Nodes table: the
            # Runtime joined the groups at start, so Redis lists it as a consumer.
            split_row = '#nodes tr[data-node="Split"]'
            await page.text_of(split_row, "Split")
            cells = await page.css(f"{split_row} td.num", 5)
            figures = [await asyncio.to_thread(c.get_attribute, "textContent") for c in cells[:4]]
            assert figures == ["0", "0", "0", "1"], figures  # queue, pending, delayed, consumers
            # Its page: every state (1 split + 3 squares + 3 labels) and the 3 results.
            await page.click(f"{row} a")
            await page.text_of("#run-status", "SUCCEEDED")
            await page.css("#history tbody tr[data-state]", 7)
            await page.css("#results tbody tr", 3)
            await page.text_of("#results", '"text": "v=3 sq=9"')
            if shot := os.environ.get("EXO_DASHBOARD_SCREENSHOT"):
                await asyncio.to_thread(browser.save_screenshot, shot)

            # A node failing with no retries left: dead letter, listed, redriven, gone.
            failing = await sm.trigger("flaky")
            assert (await sm.wait(failing, timeout=10)).status == "FAILED"
            [dead] = await sm.dead_letters()
            await page.open(f"{url}#/ns/{ns}/dead")
            dead_row = f'tr[data-dead="{dead.id}"]'
            await page.text_of(dead_row, "FailOnce")
            await page.text_of(dead_row, "RuntimeError: FailOnce fails its first execution")
            await page.click(f'button.redrive[data-dead="{dead.id}"]')
            await page.gone(dead_row)
            assert (await sm.wait(failing, timeout=10)).status == "SUCCEEDED"
            assert await sm.dead_letters() == []

            # The page ran without script errors.
            logs = await asyncio.to_thread(browser.get_log, "browser")
            assert [e for e in logs if e["level"] == "SEVERE"] == []


# ---- without a browser --------------------------------------------------------------------
def test_layout_levels_fan_in_and_unites_arc() -> None:
    nodes = [n.model_dump(mode="json") for n in fan_in("ns")]
    nodes[0]["next_nodes"] = ["work", "side"]  # a second branch: two boxes on level 1
    nodes.append({"identifier": "side", "node_name": "Square", "next_nodes": ["collect"]})
    lay = layout(nodes)
    boxes = {b.identifier: b for b in lay.boxes}
    assert {i: b.depth for i, b in boxes.items()} == {"fan": 0, "work": 1, "side": 1, "collect": 2}
    assert boxes["work"].x == boxes["side"].x and boxes["work"].y != boxes["side"].y
    assert boxes["collect"].x > boxes["work"].x > boxes["fan"].x
    kinds = {(e.source, e.target): e.kind for e in lay.edges}
    assert kinds == {
        ("fan", "work"): "next",
        ("fan", "side"): "next",
        ("work", "collect"): "next",
        ("side", "collect"): "next",
        ("fan", "collect"): "unites",
    }
    assert all(b.x + lay.box_w <= lay.width and b.y + lay.box_h <= lay.height for b in lay.boxes)


def _call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_api_errors_csrf_and_pinned_namespace(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    await sm.broker.registry.register({"Square": "{}"})  # a namespace a Runtime served
    with dashboard_server(create_app(redis_url, None, namespace=namespace)) as url:
        api = f"{url}api/ns/{namespace}"
        calls = [
            (f"{url}api/namespaces", "GET", {}),
            (f"{api}/runs/nope", "GET", {}),
            (f"{url}api/ns/other/dead", "GET", {}),
            (f"{api}/graphs/g?count=x", "GET", {}),
            (f"{api}/dead/redrive-all", "POST", {}),
            (f"{api}/dead/redrive-all", "POST", {"X-Exo-Dashboard": "1"}),
        ]
        replies = [await asyncio.to_thread(_call, u, m, h) for u, m, h in calls]
    status = [code for code, _ in replies]
    assert status == [200, 404, 404, 400, 403, 200], replies
    assert replies[0][1] == {"namespaces": [namespace], "pinned": namespace}
    assert replies[-1][1] == {"redriven": 0}
