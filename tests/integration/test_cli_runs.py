"""`exosphere runs list` across the namespace with filters, `runs cancel`, `graphs delete`
and `nodes` (issue 12.9), against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import ClassVar

from pydantic import BaseModel

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesModel,
)
from exospherehost.cli.runtree import short_id
from tests.integration.apps.nodes import Collect, Split, Work
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


# -- runs show's tree, states show, runs retry (issue 12.9) -------------------------------


class FlakyWork(BaseNode):
    """A branch that fails the first execution of value 1 in this process, so its run
    FAILS (no retries) and succeeds once that state is retried."""

    failed: ClassVar[set[int]] = set()

    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        v = self.inputs.value
        if v == 1 and v not in FlakyWork.failed:
            FlakyWork.failed.add(v)
            raise RuntimeError(f"branch {v} fails its first execution")
        return self.Outputs(value=v)


def fan_in(ns: str, work: str = "FlakyWork") -> list[GraphNodeModel]:
    """fan (a fan-out of store.n) -> work -> collect, which unites fan."""
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name=work,
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


class Hold(BaseNode):
    """Runs until the test opens `opened`, after setting `started`: a state in flight,
    which retry_state refuses."""

    started: ClassVar[asyncio.Event | None] = None
    opened: ClassVar[asyncio.Event | None] = None

    class Inputs(BaseModel):
        value: int

    class Outputs(BaseModel):
        value: int

    async def execute(self) -> Outputs:
        assert Hold.started is not None and Hold.opened is not None
        Hold.started.set()
        await Hold.opened.wait()
        return self.Outputs(value=self.inputs.value)


def held(ns: str) -> list[GraphNodeModel]:
    """fan (one item) -> hold: the held state has a parent, so it is known while it runs."""
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": 1},
            next_nodes=["hold"],
        ),
        GraphNodeModel(
            node_name="Hold",
            namespace=ns,
            identifier="hold",
            inputs={"value": "${{ fan.outputs.value }}"},
        ),
    ]


@contextlib.asynccontextmanager
async def a_state_in_flight(sm: StateManager) -> AsyncIterator[tuple[str, str]]:
    """(run id, state id) of a Hold state while it executes; let go on leaving."""
    Hold.started, Hold.opened = asyncio.Event(), asyncio.Event()
    await sm.upsert_graph("held", held(sm.namespace), secrets={})
    run = await sm.trigger("held")
    try:
        await asyncio.wait_for(Hold.started.wait(), 20)
        [state] = [s for s, d in (await sm.run_graph(run)).states.items() if not d.identifier]
        yield run, state
    finally:
        Hold.opened.set()
    assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"


async def test_runs_show_tree_states_show_and_runs_retry(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    FlakyWork.failed = set()
    ns = namespace
    rt = Runtime(ns, "cli-tree", [Split, FlakyWork, Work, Collect, Hold], redis_url=redis_url)
    async with running(rt):
        for name, work in (("fanin", "FlakyWork"), ("wide", "Work")):
            await sm.upsert_graph(
                name,
                fan_in(ns, work),
                secrets={},
                retry_policy=RetryPolicyModel(max_retries=0),
                store_config=StoreConfigModel(required_keys=["n"]),
            )
        run = await sm.trigger("fanin", store={"n": "3"})
        wide = await sm.trigger("wide", store={"n": "30"})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
        assert (await sm.wait(wide, timeout=30)).status == "SUCCEEDED"
        graph = await sm.run_graph(run)
        ids = {
            (s.identifier, (s.inputs or {}).get("value")): sid for sid, s in graph.states.items()
        }
        root, failed = ids[("fan", None)], ids[("work", 1)]

        # The tree: root first, the branches under it, the failed one with its error.
        shown = await arun(redis_url, ns, "runs", "show", run)
        assert shown.exit_code == 0, shown.output
        tree = shown.stdout.split("states (4):\n")[1].split("\n\nhistory")[0].splitlines()
        assert tree[0] == f"  fan  Split  SUCCEEDED  try 1  {short_id(root)}"
        assert len(tree) == 4 and all(t.startswith(("  ├─ work", "  └─ work")) for t in tree[1:])
        assert (
            f"  ├─ work  FlakyWork  FAILED  try 1  {short_id(failed)}  RuntimeError: branch 1 "
            "fails its first execution" in tree
        )
        as_json = json.loads((await arun(redis_url, ns, "runs", "show", run, "--json")).stdout)
        [top] = as_json["tree"]
        assert top["state_id"] == root and len(top["children"]) == 3
        # A wide fan-out, bounded; the unite under the state it unites.
        many = await arun(redis_url, ns, "runs", "show", wide, "--children", "5")
        lines = many.stdout.split("states (32):\n")[1].split("\n\nhistory")[0].splitlines()
        assert len(lines) == 1 + 5 + 2, lines
        assert lines[-2] == "  ├─ ... 25 more: 25 SUCCEEDED"
        assert lines[-1].startswith("  └─ collect  Collect  SUCCEEDED  try 1  ")
        assert lines[-1].endswith(f"unites fan {lines[0].split()[-1]}")  # the root

        # states show: by the end of its id as the tree prints it, human and --json.
        one = await arun(redis_url, ns, "states", "show", run, short_id(failed))
        assert one.exit_code == 0, one.output
        text = one.stdout
        assert f"state:       {failed}  (run {run})" in text
        assert "status:      FAILED" in text and "attempt:     1" in text
        assert f"parents:     {root}" in text
        assert 'inputs:      {"value": 1}' in text
        assert "error:\n  RuntimeError: branch 1 fails its first execution" in text
        assert f"worker:      {rt.consumer}" in text
        assert re.search(r"finished:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}", text)
        detail = json.loads(
            (await arun(redis_url, ns, "states", "show", run, failed, "--json")).stdout
        )
        assert (detail["state_id"], detail["status"], detail["parents"]) == (
            failed,
            "FAILED",
            [root],
        )
        assert "has no state 'nope'" in one_line_error(
            await arun(redis_url, ns, "states", "show", run, "nope")
        )
        assert "run 'nope' not found" in one_line_error(
            await arun(redis_url, ns, "states", "show", "nope", failed)
        )
        assert f"retried as {short_id(failed)}" not in shown.stdout
        usage = await arun(redis_url, ns, "runs", "retry", run)
        assert (
            usage.exit_code == 2 and "give --state STATE (repeatable) or --failed" in usage.stderr
        )

        # runs retry --failed: the failed branch runs again, the unite fires, SUCCEEDED.
        retried = await arun(redis_url, ns, "runs", "retry", run, "--failed")
        assert retried.exit_code == 0, retried.output
        [new] = re.findall(r"^retried 1 failed state: (\S+)$", retried.stdout, re.M)
        assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"
        assert (await sm.state(run, new)).status == "SUCCEEDED"
        after = (await arun(redis_url, ns, "runs", "show", run)).stdout
        assert re.search(r"└─ collect  Collect  SUCCEEDED  try 1  \S+  unites fan ", after)
        assert f"FAILED  try 1  {short_id(failed)}  retried as {short_id(new)}" in after
        assert f"SUCCEEDED  try 1  {short_id(new)}  retry of {short_id(failed)}" in after
        # --state, by the end of its id; prints the new state's id.
        again = await arun(
            redis_url, ns, "runs", "retry", run, "--state", short_id(ids[("work", 0)])
        )
        assert again.exit_code == 0, again.output
        assert re.fullmatch(rf"retried {ids[('work', 0)]} as \S+\n", again.stdout), again.stdout
        assert (await sm.wait(run, timeout=20)).status == "SUCCEEDED"
        # Refused: one Error line saying why; unknown run / state: not found.
        async with a_state_in_flight(sm) as (busy, state):
            refused = await arun(redis_url, ns, "runs", "retry", busy, "--state", state)
            assert "it has not settled yet" in one_line_error(refused)
        assert "run 'nope' not found" in one_line_error(
            await arun(redis_url, ns, "runs", "retry", "nope", "--failed")
        )
        assert "has no state 'nope'" in one_line_error(
            await arun(redis_url, ns, "runs", "retry", run, "--state", "nope")
        )
