"""The run page in headless Chromium (issue 12.8): the run's state DAG (a fan-out / fan-in
run whose one branch failed, the failed state marked), a click on a state shows its
details (inputs, error, times with their UTC offset, worker, parents), Retry failed and
Retry (state) with confirm and the CSRF header, and the API's 404 / 409 / 403 answers; a
wide fan-out drawn as one group box whose states are listed; a truncated output shown as
its marker.

Screenshots land in /tmp/dash12-*.png (EXO_DASHBOARD_SHOTS=0 to skip them).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

from pydantic import BaseModel
from selenium import webdriver
from selenium.webdriver.common.by import By

from examples.nodes import Split
from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.dashboard import create_app, rundag
from tests.integration import test_dashboard as base
from tests.integration.apps.nodes import Collect, Work
from tests.integration.helpers import running
from tests.integration.test_cli_runs import FlakyWork, Hold, a_state_in_flight, fan_in
from tests.integration.test_dashboard import Page, _call, dashboard_server
from tests.integration.test_dashboard_runs import asked, confirm_yes, no_script_errors, shot

browser = base.browser  # the headless Chromium fixture (module-scoped)
CSRF = {"X-Exo-Dashboard": "1"}


class Big(BaseNode):
    class Inputs(BaseModel):
        size: int

    class Outputs(BaseModel):
        blob: str

    async def execute(self) -> Outputs:
        return self.Outputs(blob="x" * self.inputs.size)


def _get_json(url: str) -> tuple[int, int, dict[str, object]]:
    """(status, body size in bytes, body) of a GET."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        raw = reply.read()
        return reply.status, len(raw), json.loads(raw)


async def test_run_page_draws_the_dag_shows_a_failed_state_and_retries_failed(
    redis_url: str, namespace: str, browser: webdriver.Chrome
) -> None:
    ns = namespace
    FlakyWork.failed = set()
    rt = Runtime(
        namespace=ns, name="dash-dag", nodes=[Split, FlakyWork, Collect, Hold], redis_url=redis_url
    )
    page = Page(browser)
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        await sm.upsert_graph(
            "fanin",
            fan_in(ns),
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=0),
            store_config=StoreConfigModel(required_keys=["n"]),
        )
        run = await sm.trigger("fanin", store={"n": "3"})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
        graph = await sm.run_graph(run)
        by_value = {
            s.inputs["value"]: sid
            for sid, s in graph.states.items()
            if s.identifier == "work" and s.inputs
        }
        failed = by_value[1]
        [root] = [sid for sid, s in graph.states.items() if s.identifier == "fan"]

        with dashboard_server(create_app(redis_url, None)) as url:
            # The DAG: the root, its three branches side by side, the failed one marked.
            await page.open(f"{url}#/ns/{ns}/run/{run}")
            await page.text_of("#run-status", "FAILED")
            await page.css('a.sbox[data-identifier="work"]', 3)
            await page.css(f'a.sbox.FAILED[data-state="{failed}"]')
            await page.css(f'a.sbox.SUCCEEDED[data-state="{root}"]')
            ys = await asyncio.to_thread(
                lambda: {
                    e.find_element(By.CSS_SELECTOR, "rect").get_attribute("y")
                    for e in browser.find_elements(
                        By.CSS_SELECTOR, 'a.sbox[data-identifier="work"]'
                    )
                }
            )
            assert len(ys) == 1, f"fan-out siblings not on one row: {ys}"
            edges = await page.css("svg.run-dag path.edge", 3)
            assert len(edges) == 3  # no unite fired: fan -> each branch only
            await shot(browser, "run-dag-failed")

            # Click the failed state: its details, with the error and its inputs.
            await page.click(f'a.sbox[data-state="{failed}"] rect')
            await page.text_of("#state-panel h3", failed)
            await page.text_of("#state-panel pre.err", "branch 1 fails its first execution")
            await page.text_of("#state-panel pre.inputs", '"value": 1')
            await page.text_of("#state-panel .f-parents", root)
            await page.text_of("#state-panel .f-finished", "UTC")
            await page.text_of("#state-panel .f-worker", rt.consumer)
            await page.css(f'a.sbox.selected[data-state="{failed}"]')
            await shot(browser, "run-state-details")
            # Its parent, one click away.
            await page.click("#state-panel .f-parents a")
            await page.text_of("#state-panel h3", root)
            await page.text_of("#state-panel pre.outputs", '"value": 2')

            api = f"{url}api/ns/{ns}/runs"
            calls = [
                (f"{api}/{run}/states/nope", "GET", {}),
                (f"{api}/nope/states/{failed}", "GET", {}),
                (f"{api}/{run}/retry-failed", "POST", {}),
                (f"{api}/{run}/states/{failed}/retry", "POST", {}),
            ]
            replies = [await asyncio.to_thread(_call, u, m, h) for u, m, h in calls]
            assert [c for c, _ in replies] == [404, 404, 403, 403], replies
            assert "has no record" in replies[0][1]["error"]

            # Retry failed (confirmed): the branch runs again, the unite fires, SUCCEEDED.
            await page.open(f"{url}#/ns/{ns}/run/{run}")
            await confirm_yes(browser)
            await page.click("#retry-failed")
            await page.text_of("#flash", "retried 1 failed state")
            assert any(run in q for q in await asked(browser))
            await page.text_of("#run-status", "SUCCEEDED")
            await page.css('a.sbox.SUCCEEDED[data-identifier="collect"]')
            # The failed state stays, marked as retried; its retry beside it.
            await page.text_of(f'a.sbox.retried[data-state="{failed}"] text.line3', "retried")
            retry = (await sm.state(run, failed)).retried_as
            assert retry is not None
            await page.text_of(f'a.sbox.SUCCEEDED[data-state="{retry}"] text.nodename', "a retry")
            assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"
            await page.gone("#retry-failed")
            await shot(browser, "run-retried")
            await page.click(f'a.sbox[data-state="{failed}"] rect')
            await page.text_of("#state-panel .f-retried-as", retry)
            await page.gone("#retry-state")  # retried once: its retry is the one to retry

            # Retry (one state): a succeeded branch, confirmed; the answer names the new state.
            await page.open(f"{url}#/ns/{ns}/run/{run}?state={by_value[0]}")
            await confirm_yes(browser)
            await page.click("#retry-state")
            await page.text_of("#flash", f"state {by_value[0]} retried as ")
            assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"

            # 404 unknown run / state; 409 with the reason: a state still running.
            async with a_state_in_flight(sm) as (busy, state):
                calls = [
                    (f"{api}/nope/retry-failed", "POST", CSRF),
                    (f"{api}/{run}/states/nope/retry", "POST", CSRF),
                    (f"{api}/{busy}/states/{state}/retry", "POST", CSRF),
                ]
                replies = [await asyncio.to_thread(_call, u, m, h) for u, m, h in calls]
            assert [c for c, _ in replies] == [404, 404, 409], replies
            assert replies[2][1]["kind"] == "conflict"
            assert "it has not settled yet" in replies[2][1]["error"]
            await no_script_errors(browser)


async def test_a_wide_fan_out_is_one_group_and_a_truncated_output_shows_its_marker(
    redis_url: str, namespace: str, browser: webdriver.Chrome
) -> None:
    ns = namespace
    n = 300
    rt = Runtime(
        namespace=ns, name="dash-wide", nodes=[Split, Work, Collect, Big], redis_url=redis_url
    )
    page = Page(browser)
    async with StateManager(ns, redis_url=redis_url) as sm, running(rt):
        nodes = fan_in(ns, work="Work")
        nodes[1].inputs["fail_at"] = 7  # one branch of the 300 fails for good
        await sm.upsert_graph(
            "wide",
            nodes,
            secrets={},
            retry_policy=RetryPolicyModel(max_retries=0),
            store_config=StoreConfigModel(required_keys=["n"]),
        )
        big = [
            GraphNodeModel(
                node_name="Big", namespace=ns, identifier="big", inputs={"size": 100_000}
            )
        ]
        await sm.upsert_graph("big", big, secrets={})
        run = await sm.trigger("wide", store={"n": str(n)})
        blob = await sm.trigger("big")
        assert (await sm.wait(run, timeout=60)).status == "FAILED"
        assert (await sm.wait(blob, timeout=20)).status == "SUCCEEDED"
        broken = [
            sid for sid, s in (await sm.run_graph(run)).states.items() if s.status == "FAILED"
        ]
        assert len(broken) == 1

        with dashboard_server(create_app(redis_url, None)) as url:
            code, size, body = await asyncio.to_thread(_get_json, f"{url}api/ns/{ns}/runs/{run}")
            assert code == 200
            dag = body["dag"]
            assert isinstance(dag, dict)
            assert dag["states"] == n + 1 and dag["collapsed"] == n
            assert size < 120_000, f"the run page's JSON is {size} bytes"

            await page.open(f"{url}#/ns/{ns}/run/{run}")
            group = f'a.sbox.group[data-identifier="work"][data-count="{n}"]'
            await page.css(group)
            await page.text_of(f"{group} text.ident", f"work \u00d7{n}")
            await page.css(f"{group}.FAILED")  # a group shows its worst status
            await page.text_of("#dag-note", f"{n} of {n + 1} states are drawn as 1 group")
            await shot(browser, "run-dag-group")
            await page.click(f"{group} rect")
            await page.text_of("#group-panel h3", f"{n} states of work")
            await page.text_of("#group-panel", f"{rundag.MEMBERS_LISTED} of {n} listed")
            first = "#group-members tbody tr:first-child"
            await page.text_of(f"{first} td", "FAILED")  # the failed one listed first
            await page.click(f"{first} a")
            await page.text_of("#state-panel h3", broken[0])
            await page.text_of("#state-panel pre.err", "branch 7 fails for good")
            await shot(browser, "run-group-member")

            # A truncated output: the marker, readably, and the start of the value.
            [(sid, _)] = (await sm.run_graph(blob)).states.items()
            await page.open(f"{url}#/ns/{ns}/run/{blob}?state={sid}")
            await page.text_of("#state-panel .truncated .trunc-mark", "truncated: ")
            await page.text_of("#state-panel .truncated .trunc-mark", "bytes")
            await page.text_of("#state-panel .truncated pre", "{'blob': 'xxx")
            # Its result, shown shortened (sm.results has it whole): the page stays small.
            await page.text_of("#results .trunc-mark", "shown here up to 2,000 characters")
            _, size, _ = await asyncio.to_thread(_get_json, f"{url}api/ns/{ns}/runs/{blob}")
            assert size < 10_000, f"the run page's JSON is {size} bytes"
            await shot(browser, "run-truncated")
            await no_script_errors(browser)
