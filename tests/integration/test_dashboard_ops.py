"""The dashboard an operator can trust, in headless Chromium (issue 13.13): the workers page
(a live Runtime, a lost and an unknown consumer), the throughput chart drawn from the
Runtimes' 10 s buckets, queue figures once per node type, clear page states for an
unknown run / namespace and for Redis going away, times with their zone; and the token
that guards a dashboard bound beyond loopback (HTTP, no browser).

Screenshots land in /tmp/dash13-*.png (EXO_DASHBOARD_SHOTS=0 to skip them).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from exospherehost import GraphNodeModel, Runtime, StateManager
from exospherehost.broker.workers import BUCKET_S
from exospherehost.config import ConfigError
from exospherehost.dashboard import create_app, serve
from exospherehost.dashboard.auth import check_bind
from exospherehost.testing.server import PrivateServer
from tests.integration import test_dashboard as base
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import running, squares_graph
from tests.integration.test_dashboard import Page, _call, dashboard_server

TOKEN = "s3cret-token-of-24-chars"
browser = base.browser  # the headless Chromium fixture (module-scoped: one per module)


async def shot(driver: webdriver.Chrome, name: str) -> None:
    if os.environ.get("EXO_DASHBOARD_SHOTS", "1") != "0":
        await asyncio.to_thread(driver.save_screenshot, f"/tmp/dash13-{name}.png")


async def no_script_errors(driver: webdriver.Chrome) -> None:
    logs = await asyncio.to_thread(driver.get_log, "browser")
    # 4xx/5xx replies are logged by Chromium as failed resource loads: expected here.
    severe = [
        e for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert severe == []


def js(driver: webdriver.Chrome, script: str) -> Any:
    return driver.execute_script(script)


async def test_workers_page_throughput_chart_and_nodes_once(
    redis_url: str, namespace: str, browser: webdriver.Chrome
) -> None:
    ns = namespace
    rt = Runtime(
        namespace=ns, name="dash-ops", nodes=[Split, Square, Label], redis_url=redis_url, workers=5
    )
    page = Page(browser)
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        # Two graphs share the node types Square and Label.
        await sm.upsert_graph("squares", squares_graph(ns, base=1), secrets={})
        nodes = squares_graph(ns, base=2)
        await sm.upsert_graph("squares-too", nodes, secrets={})
        await sm.upsert_graph(
            "a-graph-with-a-very-long-identifier",
            [
                GraphNodeModel(
                    node_name="Square",
                    namespace=ns,
                    identifier="an_identifier_far_too_long_to_fit_in_its_box_at_all",
                    inputs={"value": 3},
                )
            ],
            secrets={},
        )
        run = await sm.trigger("squares")
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
        # Past buckets as other Runtimes would have written them: Square did 50 per bucket
        # (5/s) for the last 3 minutes, and failed 10 in one bucket (1/s).
        board = sm.broker.workers
        now = int(time.time())
        end = now - now % BUCKET_S
        for k in range(1, 19):
            failed = 10 if k == 6 else 0
            await board.publish("other:hostX:9:cccccc", {"runtime": "other"}, now * 1000,
                                {"Square": (50, failed)}, end - k * BUCKET_S)  # fmt: skip
        # A worker whose record expired (killed) and a consumer that never wrote one.
        await sm.broker.client.execute_command("DEL", sm.broker.keys.worker("other:hostX:9:cccccc"))
        await sm.broker.join("legacy:hostB:22:bbbbbb", ["Square"])

        with dashboard_server(create_app(redis_url, None)) as url:
            await page.open(f"{url}#/ns/{ns}")
            # Queue figures: once per node type, in the Nodes table, not in every DAG box.
            await page.css("#nodes tr[data-node]", 3)
            rows = await asyncio.to_thread(
                browser.find_elements, By.CSS_SELECTOR, "#nodes tr[data-node]"
            )
            assert sorted([r.get_attribute("data-node") for r in rows]) == [
                "Label",
                "Split",
                "Square",
            ]
            await page.text_of('#nodes tr[data-node="Square"] td.used', "squares-too")
            boxes = await page.css('svg.dag g.node[data-node="Square"]', 3)
            for box in boxes:
                text = await asyncio.to_thread(box.get_attribute, "textContent")
                assert "queue" not in text and "pend" not in text, text
            # The chart: Square's done line peaks at 5/s, its failed line at 1/s.
            await page.css('#throughput polyline.done[data-node="Square"]')
            await page.css('#throughput polyline.failed[data-node="Square"]')
            await page.text_of('#throughput .key[data-node="Square"]', "done")
            await page.text_of("#throughput svg", "UTC")  # the axis names its zone
            peak = await asyncio.to_thread(js, browser, """
                const grid = [...document.querySelectorAll('#throughput text.axis')]
                  .map((t) => t.textContent);
                const ys = (sel) => document.querySelector(sel).getAttribute('points')
                  .split(' ').map((p) => Number(p.split(',')[1]));
                return {grid, done: Math.min(...ys('polyline.done[data-node="Square"]')),
                        failed: Math.min(...ys('polyline.failed[data-node="Square"]')),
                        zero: Math.max(...ys('polyline.done[data-node="Square"]'))};
            """)  # fmt: skip
            top = max(float(t[:-2]) for t in peak["grid"] if t.endswith("/s"))
            assert 5 <= top < 10, peak  # the axis covers the peak, rounded up
            # y grows downwards: failed (1/s) peaks a fifth as high as done (5/s).
            height = peak["zero"] - peak["done"]
            assert height > 80, peak
            assert abs((peak["zero"] - peak["failed"]) - height / 5) < 2, peak
            # Texts fit their boxes: the long identifier is shortened, its title says it whole.
            widths = await asyncio.to_thread(js, browser, """
                return [...document.querySelectorAll('svg.dag text[data-fit]')].map(
                  (t) => [t.getComputedTextLength(), Number(t.dataset.fit), t.textContent]);
            """)  # fmt: skip
            assert widths and all(w <= limit + 0.5 for w, limit, _ in widths), widths
            assert any(t.endswith("…") for _, _, t in widths), widths
            await shot(browser, "namespace")

            # Workers page: this Runtime serving with its figures, the lost and the unknown.
            await page.click("#workers-link")
            me = f'tr[data-consumer="{rt.consumer}"]'
            await page.text_of(f"{me} td.state", "serving")
            await page.text_of(f"{me} td.processed", "7")  # 1 split + 3 squares + 3 labels
            await page.text_of(f"{me} td.nodes", "Square")
            await page.text_of(f"{me} td.host", os.uname().nodename[:20])
            await page.text_of(f"{me} td.started", "UTC")
            await page.text_of('tr[data-consumer="other:hostX:9:cccccc"] td.state', "lost")
            await page.text_of('tr[data-consumer="legacy:hostB:22:bbbbbb"] td.state', "unknown")
            await shot(browser, "workers")

            # The graph page: only its own node types, once each, and their chart.
            await page.open(f"{url}#/ns/{ns}/graph/squares")
            await page.css("table#runs")
            rows = await page.css("#nodes tr[data-node]", 3)
            assert len(rows) == 3
            await page.css('#throughput polyline.done[data-node="Square"]')
            await page.text_of(f'tr[data-run="{run}"]', "UTC")
            await shot(browser, "graph")
            await no_script_errors(browser)


async def test_page_states_for_unknown_run_namespace_and_redis_down(
    namespace: str, browser: webdriver.Chrome
) -> None:
    ns = namespace
    page = Page(browser)
    with PrivateServer(appendonly=True, appendfsync="always") as server:
        url_redis = server.start().url
        rt = Runtime(
            namespace=ns, name="dash-err", nodes=[Split, Square, Label], redis_url=url_redis
        )
        async with StateManager(ns, redis_url=url_redis) as sm, running(rt):
            await sm.upsert_graph("squares", squares_graph(ns), secrets={})
            with dashboard_server(create_app(url_redis, None)) as url:
                await page.open(f"{url}#/ns/{ns}/run/no-such-run")
                await page.text_of("#page-state h2", "Run not found")
                await page.text_of("#page-state", "no-such-run")
                await shot(browser, "unknown-run")
                await page.open(f"{url}#/ns/nosuchns")
                await page.text_of('#page-state[data-kind="unknown_namespace"]', "nosuchns")
                await shot(browser, "unknown-namespace")
                await page.open(f"{url}#/ns/bad%7Bname")
                await page.text_of('#page-state[data-kind="bad_request"]', "not valid")

                # A live page, then Redis goes away: the page says so, nothing stale stays.
                await page.open(f"{url}#/ns/{ns}")
                await page.css('svg.dag[data-graph="squares"]')
                server.kill()
                await page.text_of('#page-state[data-kind="redis_down"] h2', "Redis unreachable")
                await page.gone("svg.dag")
                await page.text_of("#status", "redis unreachable")
                await shot(browser, "redis-down")
                # ... and comes back: the page is whole again.
                await asyncio.to_thread(server.restart)
                await page.css('svg.dag[data-graph="squares"]')
                await page.gone("#page-state")


# ---- access control (no browser) ----------------------------------------------------------
async def test_token_required_401_without_200_with(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    await sm.broker.registry.register({"Square": "{}"})
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    with dashboard_server(create_app(redis_url, None, token=TOKEN)) as url:
        api = f"{url}api/ns/{namespace}"
        calls = [
            (f"{api}/workers", "GET", {}),
            (f"{api}/workers", "GET", {"Authorization": "Bearer wrong-token-wrong-token"}),
            (f"{api}/workers", "GET", {"Authorization": f"Bearer {TOKEN}"}),
            (f"{api}/throughput", "GET", {"Authorization": f"Basic {basic}"}),
            (f"{api}/workers", "GET", {"Cookie": f"exo_dashboard_token={TOKEN}"}),
            # CSRF is still checked on actions, token or not.
            (f"{api}/dead/redrive-all", "POST", {"Authorization": f"Bearer {TOKEN}"}),
            (f"{api}/dead/redrive-all", "POST", {"Authorization": f"Bearer {TOKEN}", CSRF: "1"}),
        ]
        replies = [await asyncio.to_thread(_call, u, m, h) for u, m, h in calls]
        # The page itself asks the browser for basic auth.
        status, headers = await asyncio.to_thread(_head, url)
    assert [code for code, _ in replies] == [401, 401, 200, 200, 200, 403, 200], replies
    assert replies[0][1]["kind"] == "unauthorized"
    assert status == 401 and headers.get("www-authenticate", "").startswith("Basic"), headers


async def test_a_token_link_lets_the_browser_in(
    redis_url: str, namespace: str, sm: StateManager, browser: webdriver.Chrome
) -> None:
    """`/?token=` sets the cookie and drops the token from the address bar; the page's
    own API calls then pass."""
    await sm.broker.registry.register({"Square": "{}"})
    page = Page(browser)
    with dashboard_server(create_app(redis_url, None, namespace=namespace, token=TOKEN)) as url:
        await page.open(f"{url}?token={TOKEN}")
        await page.css("#nodes-card")  # pinned namespace: its page, drawn from the API
        address = await asyncio.to_thread(lambda: browser.current_url)
        assert "token" not in address, address
        cookies = await asyncio.to_thread(browser.get_cookies)
        [cookie] = [c for c in cookies if c["name"] == "exo_dashboard_token"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        await asyncio.to_thread(browser.delete_all_cookies)


CSRF = "X-Exo-Dashboard"


def _head(url: str) -> tuple[int, dict[str, str]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def test_binding_beyond_loopback_needs_a_token_or_insecure(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXOSPHERE_DASHBOARD_TOKEN", raising=False)
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, None, insecure=False)
    with pytest.raises(ConfigError, match="EXOSPHERE_DASHBOARD_TOKEN"):
        serve("0.0.0.0", 1, redis_url)  # refused before anything binds
    check_bind("0.0.0.0", None, insecure=True)
    check_bind("0.0.0.0", TOKEN, insecure=False)
    with pytest.raises(ConfigError, match="too short"):
        create_app(redis_url, None, token="short")


def test_cli_dashboard_beyond_loopback_without_token_is_one_error_line(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from exospherehost.cli import cli

    monkeypatch.delenv("EXOSPHERE_DASHBOARD_TOKEN", raising=False)
    env = {"EXOSPHERE_REDIS_URL": redis_url}
    with socket.socket() as probe:  # a port nobody listens on (checked before serving)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    args = ["dashboard", "--host", "0.0.0.0", "--port", port]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: the dashboard binds to 0.0.0.0"), result.output
    assert "EXOSPHERE_DASHBOARD_TOKEN" in result.output and "Traceback" not in result.output
    short = [*args, "--token", "short"]
    result = CliRunner().invoke(cli, short, env=env)
    assert result.exit_code == 1 and "too short" in result.output, result.output
