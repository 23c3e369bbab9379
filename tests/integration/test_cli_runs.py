"""`exosphere runs list` across the namespace with filters, `runs cancel`, `graphs delete`
and `nodes` (issue 12.9), against a real server."""

from __future__ import annotations

import json

from exospherehost import StateManager
from tests.integration.helpers import running, squares_graph
from tests.integration.test_cli import arun, one_line_error, runtime


async def test_runs_list_filters_cancel_and_delete(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph("squares", squares_graph(namespace), secrets={})
        await sm.upsert_graph("other", squares_graph(namespace), secrets={})
        done = await sm.trigger_many("squares", [{"base": i} for i in range(3)])
        await sm.wait_all(done, timeout=20)
        shown = await arun(redis_url, namespace, "nodes")
    # Runs nobody serves any more: they stay RUNNING until cancelled.
    waiting = await sm.trigger_many("other", [None] * 2)

    every = await arun(redis_url, namespace, "runs", "list")
    assert every.exit_code == 0, every.output
    assert every.stdout.splitlines()[-1] == "runs 1-5 of 5"
    running_only = json.loads(
        (await arun(redis_url, namespace, "runs", "list", "--status", "running", "--json")).stdout
    )
    assert running_only["total"] == 2
    assert {r["run_id"] for r in running_only["runs"]} == set(waiting)
    paged = await arun(redis_url, namespace, "runs", "list", "--count", "2", "--offset", "2")
    assert paged.stdout.splitlines()[-1] == "runs 3-4 of 5; next page: --offset 4"
    later = await arun(redis_url, namespace, "runs", "list", "--since", "2099-01-01")
    assert "no runs (0 match)" in later.stdout
    bad = await arun(redis_url, namespace, "runs", "list", "--since", "yesterday")
    assert bad.exit_code == 2 and "'yesterday' is not a time" in bad.stderr

    refused = await arun(redis_url, namespace, "graphs", "delete", "other")
    assert "has 2 run(s) in flight" in one_line_error(refused)

    cancelled = await arun(redis_url, namespace, "runs", "cancel", waiting[0], done[0], "nope")
    assert cancelled.exit_code == 1
    assert f"{waiting[0]}: CANCELLED" in cancelled.stdout
    assert f"{done[0]}: already finished (SUCCEEDED), left as it is" in cancelled.stdout
    assert "nope: not found" in cancelled.stderr
    assert (await sm.status(waiting[0])).status == "CANCELLED"
    listed = await arun(redis_url, namespace, "runs", "list", "--status", "CANCELLED")
    assert listed.stdout.splitlines()[-1] == "runs 1-1 of 1"

    forced = await arun(redis_url, namespace, "graphs", "delete", "other", "--force")
    assert forced.exit_code == 0, forced.output
    assert "graph 'other' deleted; 1 run(s) in flight finish on their version" in forced.stdout
    gone = await arun(redis_url, namespace, "graphs", "show", "other")
    assert "graph 'other' not found" in one_line_error(gone)

    assert shown.exit_code == 0, shown.output
    assert "Square  (runtime cli, returns one" in shown.stdout
    assert "inputs: value: int*" in shown.stdout
    assert "outputs: square: int" in shown.stdout
