"""The dashboard's operator pages in headless Chromium (issue 12.8): the namespace's runs
with graph / status / time filters, the exact total and paging; cancelling a RUNNING run
(and the API's 404 / 409 for unknown and finished runs); the registered nodes' schemas;
a graph's template details (retry, store, secret names only, cron triggers); deleting a
graph, refused while a run is in flight unless forced.

Screenshots land in /tmp/dash12-*.png (EXO_DASHBOARD_SHOTS=0 to skip them).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from examples.nodes import Split, Square
from exospherehost import (
    BaseNode,
    CronTrigger,
    GraphNodeModel,
    GraphNotFound,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.dashboard import create_app, operate
from exospherehost.dashboard.operate import _when, schema_fields, type_name
from exospherehost.secrets import ENV_SECRETS_KEY
from tests.integration import test_dashboard as base
from tests.integration.apps.nodes import Label
from tests.integration.helpers import running, squares_graph
from tests.integration.test_dashboard import Page, _call, dashboard_server

browser = base.browser  # the headless Chromium fixture (module-scoped: one per module)
CSRF = {"X-Exo-Dashboard": "1"}


class Gate(BaseNode):
    """Blocks until the test opens the gate, so its run stays RUNNING."""

    opened: ClassVar[asyncio.Event | None] = None

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        assert Gate.opened is not None
        await Gate.opened.wait()
        return self.Outputs(x=self.inputs.x)


class Fails(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        raise RuntimeError("Fails always fails")


class Limits(BaseModel):
    per_minute: int
    burst: int = 5


class Ask(BaseNode):
    """A node with every kind of field the schema view renders; waits at the gate too."""

    class Inputs(BaseModel):
        prompt: str
        temperature: float = 0.2
        tags: list[str] = []
        limits: dict[str, int] | None = None
        quota: Limits | None = None

    class Outputs(BaseModel):
        answer: str

    class Secrets(BaseModel):
        api_token: str

    async def execute(self) -> Outputs:
        assert Gate.opened is not None
        await Gate.opened.wait()
        return self.Outputs(answer=self.inputs.prompt)


async def shot(driver: webdriver.Chrome, name: str) -> None:
    if os.environ.get("EXO_DASHBOARD_SHOTS", "1") != "0":
        await asyncio.to_thread(driver.save_screenshot, f"/tmp/dash12-{name}.png")


async def no_script_errors(driver: webdriver.Chrome) -> None:
    logs = await asyncio.to_thread(driver.get_log, "browser")
    # 4xx replies (a refused action) are logged by Chromium as failed loads: expected.
    severe = [
        e for e in logs if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert severe == []


def js(driver: webdriver.Chrome, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


async def confirm_yes(driver: webdriver.Chrome) -> None:
    """Answer the page's next confirm() with OK, keeping its question in __asked."""
    script = "window.__asked = []; window.confirm = (q) => { __asked.push(q); return true; };"
    await asyncio.to_thread(js, driver, script)


async def asked(driver: webdriver.Chrome) -> list[str]:
    found: list[str] = await asyncio.to_thread(js, driver, "return window.__asked")
    return found


async def rows_are(page: Page, wanted: list[str], total: int) -> None:
    """Wait until the runs table lists exactly `wanted`, in order, and says `total`."""

    def check(d: webdriver.Chrome) -> bool:
        shown = [
            r.get_attribute("data-run")
            for r in d.find_elements(By.CSS_SELECTOR, "#all-runs tbody tr[data-run]")
        ]
        said = d.find_element(By.CSS_SELECTOR, "#runs-total").get_attribute("textContent")
        return shown == wanted and said == str(total)

    await page.until(f"runs {wanted} of {total}", check)


async def set_filters(page: Page, **values: str) -> None:
    """Set the filter form's fields (selects by value, times as datetime-local text) and
    press Apply."""

    def fill() -> None:
        form = page.driver.find_element(By.CSS_SELECTOR, "#run-filters")
        for name, value in values.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                Select(field).select_by_value(value)
            else:  # datetime-local: typing depends on the locale; set the value itself
                js(page.driver, "arguments[0].value = arguments[1]", field, value)
        form.find_element(By.CSS_SELECTOR, "#apply-filters").click()

    await asyncio.to_thread(fill)


async def local_input(page: Page, ms: int) -> str:
    """`ms` as the page writes it into a datetime-local field (browser's local time)."""
    text: str = await asyncio.to_thread(js, page.driver, "return localInput(arguments[0])", ms)
    return text


def one_node(ns: str, node: str, ident: str, inputs: dict[str, Any]) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name=node, namespace=ns, identifier=ident, inputs=inputs)]


async def test_runs_list_filters_paging_and_cancel(
    redis_url: str, namespace: str, browser: webdriver.Chrome
) -> None:
    ns = namespace
    Gate.opened = asyncio.Event()
    rt = Runtime(
        namespace=ns,
        name="dash-runs",
        nodes=[Split, Square, Label, Gate, Fails],
        redis_url=redis_url,
        workers=4,
    )
    page = Page(browser)
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        try:
            await sm.upsert_graph("squares", squares_graph(ns, base=1), secrets={})
            await sm.upsert_graph(
                "flaky",
                one_node(ns, "Fails", "fails", {"x": 1}),
                secrets={},
                retry_policy=RetryPolicyModel(max_retries=0),
            )
            await sm.upsert_graph("gated", one_node(ns, "Gate", "gate", {"x": 1}), secrets={})
            # Two batches apart in time, one failing graph, one run held RUNNING.
            first = await sm.trigger_many("squares", [None] * 5)
            failed = await sm.trigger_many("flaky", [None] * 2)
            await sm.wait_all(first + failed, timeout=30)
            second = await sm.trigger_many("squares", [None] * 4)
            await sm.wait_all(second, timeout=30)
            held = await sm.trigger("gated")
            everything = await sm.list_runs(count=100)
            assert everything.total == 12, everything.total
            newest = [r.run_id for r in everything]
            assert newest[0] == held
            created = {r.run_id: r.created_ms for r in everything}
            since = min(created[r] for r in second)
            until = max(created[r] for r in first + failed)
            assert until < since, "the two batches were created in the same millisecond"

            with dashboard_server(create_app(redis_url, None)) as url:
                # The namespace page links to the runs page: every run, newest first.
                await page.open(f"{url}#/ns/{ns}")
                await page.click("#runs-link")
                await rows_are(page, newest, 12)
                await page.text_of(f'tr[data-run="{held}"] td.status', "RUNNING")
                await page.text_of(f'tr[data-run="{failed[0]}"] td.graph', "flaky")
                await shot(browser, "runs")

                # Paging, 10 a page (chosen in the form): 1-10, then 11-12, the last.
                await set_filters(page, count="10")
                await rows_are(page, newest[:10], 12)
                await page.text_of("#page-range", "1\u201310 of 12")
                assert await asyncio.to_thread(
                    lambda: browser.find_element(By.ID, "page-prev").get_attribute("disabled")
                )
                await page.click("#page-next")
                await rows_are(page, newest[10:], 12)
                await page.text_of("#page-range", "11\u201312 of 12")
                assert await asyncio.to_thread(
                    lambda: browser.find_element(By.ID, "page-next").get_attribute("disabled")
                )
                await shot(browser, "runs-last-page")
                await page.click("#page-prev")
                await rows_are(page, newest[:10], 12)

                # Status filter: the two FAILED runs (newest first), back on page 1.
                await set_filters(page, status="FAILED")
                await rows_are(page, [r for r in newest if r in failed], 2)
                assert "status=FAILED" in await asyncio.to_thread(lambda: browser.current_url)
                await page.text_of("#page-range", "1\u20132 of 2")
                # Graph + time range: squares created since the second batch; up to the
                # first's end. Bounds are inclusive, to the millisecond.
                await page.click("#clear-filters")
                await rows_are(page, newest, 12)  # every filter off, 20 a page
                await set_filters(page, graph="squares", since=await local_input(page, since))
                await rows_are(page, [r for r in newest if r in second], 4)
                await set_filters(page, since="", until=await local_input(page, until))
                await rows_are(page, [r for r in newest if r in first], 5)
                await shot(browser, "runs-filtered")

                # Cancel the held run from its page: confirm, CANCELLED, no button after.
                await page.open(f"{url}#/ns/{ns}/run/{held}")
                await page.text_of("#run-status", "RUNNING")
                await page.css("#cancel-run")
                await shot(browser, "run-cancel-button")
                await confirm_yes(browser)
                await page.click("#cancel-run")
                await page.text_of("#run-status", "CANCELLED")
                await page.gone("#cancel-run")
                assert any(held in q for q in await asked(browser))
                assert (await sm.status(held)).status == "CANCELLED"
                await page.text_of("#flash", f"run {held} cancelled")
                await shot(browser, "cancelled")
                # A finished run has no Cancel button.
                await page.open(f"{url}#/ns/{ns}/run/{first[0]}")
                await page.text_of("#run-status", "SUCCEEDED")
                assert not await asyncio.to_thread(
                    browser.find_elements, By.CSS_SELECTOR, "#cancel-run"
                )
                # The CANCELLED filter finds it.
                await page.open(f"{url}#/ns/{ns}/runs?status=CANCELLED")
                await rows_are(page, [held], 1)

                # The API: 409 for a finished run, 404 for an unknown one, 403 without CSRF.
                api = f"{url}api/ns/{ns}"
                calls = [
                    (f"{api}/runs/{held}/cancel", "POST", CSRF),
                    (f"{api}/runs/{first[0]}/cancel", "POST", CSRF),
                    (f"{api}/runs/nope/cancel", "POST", CSRF),
                    (f"{api}/runs/{held}/cancel", "POST", {}),
                    (f"{api}/runs?status=BOGUS", "GET", {}),
                    (f"{api}/runs?since=yesterday", "GET", {}),
                    (f"{api}/runs?since=2&until=1", "GET", {}),
                ]
                replies = [await asyncio.to_thread(_call, u, m, h) for u, m, h in calls]
                assert [c for c, _ in replies] == [409, 409, 404, 403, 400, 400, 400], replies
                assert "already finished as CANCELLED" in replies[0][1]["error"]
                assert "already finished as SUCCEEDED" in replies[1][1]["error"]
                assert replies[0][1]["kind"] == "conflict"
                assert "status must be one of" in replies[4][1]["error"]
                assert "since" in replies[5][1]["error"]
                await no_script_errors(browser)
        finally:
            Gate.opened.set()  # the cancelled run's state settles; the Runtime can stop


def test_schema_fields_render_python_types() -> None:
    schema = Ask.Inputs.model_json_schema()
    fields = {f["name"]: f for f in schema_fields(schema)}
    names = [f["name"] for f in schema_fields(schema)]
    assert names == ["prompt", "temperature", "tags", "limits", "quota"]
    assert fields["quota"]["type"] == "Limits | None"
    assert fields["prompt"] == {
        "name": "prompt",
        "type": "str",
        "required": True,
        "has_default": False,
        "default": None,
    }
    assert (fields["temperature"]["type"], fields["temperature"]["default"]) == ("float", 0.2)
    assert fields["tags"]["type"] == "list[str]" and not fields["tags"]["required"]
    assert fields["limits"]["type"] == "dict[str, int] | None"
    assert fields["limits"]["has_default"] and fields["limits"]["default"] is None
    assert type_name({"$ref": "#/$defs/Inner"}) == "Inner"
    assert type_name({"enum": ["a", "b"]}) == "'a' | 'b'"
    assert type_name({}) == "any"
    assert schema_fields(None) == []


async def test_a_status_filtered_listing_is_reused_ten_times_as_long_as_it_took(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(operate, "_clock", lambda: clock[0])
    monkeypatch.setattr(operate, "_reused", {})
    rt = Runtime(namespace=namespace, name="reuse", nodes=[Square], redis_url=redis_url)
    async with StateManager(namespace, redis_url=redis_url) as sm, running(rt):
        await sm.upsert_graph("g", one_node(namespace, "Square", "sq", {"value": 2}), secrets={})
        first = await sm.trigger("g")
        await sm.wait(first, timeout=10)
        reads = []
        real = sm.list_runs

        async def slow(*args: Any, **kwargs: Any) -> Any:
            reads.append(kwargs.get("status"))
            clock[0] += 1.0  # this listing "takes" 1 s: reused for 10 s after it
            return await real(*args, **kwargs)

        monkeypatch.setattr(sm, "list_runs", slow)

        async def listing(status: str | None) -> dict[str, Any]:
            return await operate.runs_page(sm, None, status, None, None, 0, 20)

        assert (await listing("SUCCEEDED"))["total"] == 1
        second = await sm.trigger("g")
        await sm.wait(second, timeout=10)
        clock[0] += 9.5
        reused = await listing("SUCCEEDED")
        assert (reused["total"], reused["age_ms"]) == (1, 9500)
        assert (await listing(None))["total"] == 2  # unfiltered: always read
        clock[0] += 0.6  # (the unfiltered read took 1 s of the clock too)
        assert (await listing("SUCCEEDED"))["total"] == 2  # past its 10 s: read again
        assert reads == ["SUCCEEDED", None, "SUCCEEDED"]


def test_time_filters_keep_the_millisecond() -> None:
    # What the SDK does with since/until (client/runs.py _ms): back to the same ms.
    for ms in (0, 1, 999, 1_764_582_725_123, 1_764_582_725_999, 1_900_000_000_001):
        when = _when(ms)
        assert when is not None and int(when.timestamp() * 1000) == ms, ms
    assert _when(None) is None


async def test_node_schemas_template_details_and_delete_graph(
    redis_url: str, namespace: str, browser: webdriver.Chrome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SECRETS_KEY, Fernet.generate_key().decode())
    ns = namespace
    Gate.opened = asyncio.Event()
    rt = Runtime(namespace=ns, name="dash-llm", nodes=[Ask, Square], redis_url=redis_url)
    page = Page(browser)
    secret_value = "very-secret-value-never-shown"
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        try:
            await sm.upsert_graph(
                "ask",
                one_node(ns, "Ask", "ask", {"prompt": "${{ store.q }}"}),
                secrets={"api_token": secret_value},
                retry_policy=RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.LINEAR),
                store_config=StoreConfigModel(
                    required_keys=["q"], default_values={"q": "hi", "lang": "en"}
                ),
                triggers=[CronTrigger(expression="0 2 * * *")],
            )
            await sm.upsert_graph("plain", one_node(ns, "Square", "sq", {"value": 2}), secrets={})
            held = await sm.trigger("ask")

            with dashboard_server(create_app(redis_url, None)) as url:
                # Node schemas: fields with type, required / default; secrets; returns; runtime.
                await page.open(f"{url}#/ns/{ns}")
                await page.click("#nodes-link")
                card = '.node-schema[data-node="Ask"]'
                await page.text_of(f'{card} table.inputs tr[data-field="prompt"]', "required")
                await page.text_of(f'{card} tr[data-field="prompt"] td.type', "str")
                temp = f'{card} table.inputs tr[data-field="temperature"]'
                await page.text_of(f"{temp} td.type", "float")
                await page.text_of(f"{temp} td.default", "0.2")
                await page.text_of(f"{temp} td.req", "optional")
                await page.text_of(f'{card} tr[data-field="tags"] td.type', "list[str]")
                limits = f'{card} tr[data-field="limits"] td.type'
                await page.text_of(limits, "dict[str, int] | None")
                await page.text_of(f'{card} table.outputs tr[data-field="answer"] td.type', "str")
                await page.text_of(f"{card} td.secrets", "api_token")
                await page.text_of(f"{card} td.returns", "one Outputs")
                await page.text_of(f"{card} td.runtime", "dash-llm")
                await page.text_of(f'{card} tr[data-field="quota"] td.type', "Limits | None")
                model = f'{card} .model[data-model="Limits"]'
                await page.text_of(f'{model} tr[data-field="per_minute"] td.type', "int")
                await page.text_of(f'{model} tr[data-field="burst"] td.default', "5")
                await page.text_of('.node-schema[data-node="Square"] td.secrets', "none")
                await shot(browser, "nodes")

                # Template details on the graph page; the secret's value is nowhere.
                await page.open(f"{url}#/ns/{ns}/graph/ask")
                await page.text_of("#tpl-retry", "LINEAR")
                await page.text_of("#tpl-retry", "max retries 2")
                await page.text_of("#tpl-required", "q")
                await page.text_of("#tpl-defaults", '"lang": "en"')
                await page.text_of("#tpl-secrets", "api_token")
                await page.text_of("#tpl-triggers", "0 2 * * *")
                await page.text_of("#tpl-triggers", "next 20")  # a date: the next fire time
                await shot(browser, "template")
                source = await asyncio.to_thread(lambda: browser.page_source)
                assert secret_value not in source
                await page.open(f"{url}#/ns/{ns}/graph/plain")
                await page.text_of("#tpl-retry", "(the default: the graph sets none)")
                await page.text_of("#tpl-triggers", "none")

                # Delete, refused with a run in flight, then forced.
                await page.open(f"{url}#/ns/{ns}/graph/ask")
                await page.css("#delete-graph")
                await confirm_yes(browser)
                await page.click("#delete-graph")
                await page.text_of("#delete-result", "1 run(s) in flight")
                await asyncio.to_thread(js, browser, "scrollTo(0, document.body.scrollHeight)")
                assert (await sm.get_graph("ask"))["name"] == "ask"
                await shot(browser, "delete-refused")
                await page.click("#delete-force")
                await page.click("#delete-graph")
                await page.text_of("#flash", "graph ask deleted")
                await page.css('.card.graph[data-graph="plain"]')  # back on the namespace
                await page.gone('.card.graph[data-graph="ask"]')
                assert any("even with runs in flight" in q for q in await asked(browser))
                with pytest.raises(GraphNotFound):
                    await sm.get_graph("ask")
                # The run in flight finishes on its version.
                Gate.opened.set()
                assert (await sm.wait(held, timeout=20)).status == "SUCCEEDED"
                # Unknown graph: 404; without the CSRF header: 403.
                api = f"{url}api/ns/{ns}/graphs"
                calls = [(f"{api}/ask/delete", CSRF), (f"{api}/plain/delete", {})]
                replies = [await asyncio.to_thread(_call, u, "POST", h) for u, h in calls]
                assert [c for c, _ in replies] == [404, 403], replies
                await no_script_errors(browser)
        finally:
            Gate.opened.set()
