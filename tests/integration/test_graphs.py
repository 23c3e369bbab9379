"""Graphs end to end: validation, triggering, fan-out, run status and results."""

from __future__ import annotations

from collections import Counter

import pytest

from exospherehost import GraphNodeModel, Runtime, StateManager, StoreConfigModel
from exospherehost.client.statemanager import GraphValidationError, RunNotFound
from tests.integration.apps.nodes import ALL, Label, Split, Square
from tests.integration.helpers import running, squares_graph, stop_processes, worker_processes

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


def rt(url: str, ns: str) -> Runtime:
    return Runtime(namespace=ns, name="graphs", nodes=[Split, Square, Label], redis_url=url)


async def test_invalid_graph_is_rejected_with_every_problem(
    namespace: str, sm: StateManager
) -> None:
    nodes = [
        GraphNodeModel(
            node_name="Split",
            namespace=namespace,
            identifier="a",
            inputs={"items": 1},
            next_nodes=["b", "ghost"],
        ),
        GraphNodeModel(
            node_name="Square",
            namespace=namespace,
            identifier="b",
            inputs={"value": "${{ c.outputs.x }}"},
            next_nodes=["c"],
        ),
        GraphNodeModel(
            node_name="Label",
            namespace=namespace,
            identifier="c",
            inputs={"square": "${{ a.output.value }}", "text": "${{ store.k }}"},
            next_nodes=["b"],
        ),
        GraphNodeModel(node_name="Square", namespace=namespace, identifier="lonely", inputs={}),
    ]
    with pytest.raises(GraphValidationError) as info:
        await sm.upsert_graph("bad", nodes, secrets={}, validation_timeout=0)
    text = "\n".join(info.value.errors)
    for expected in ("ghost", "cycle", "root", "a.output.value", "store"):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert len(info.value.errors) >= 5
    with pytest.raises(KeyError, match="not found"):
        await sm.get_graph("bad")


async def test_unregistered_node_is_reported_after_the_validation_timeout(
    namespace: str, sm: StateManager
) -> None:
    with pytest.raises(GraphValidationError, match="not registered"):
        await sm.upsert_graph("g", squares_graph(namespace), secrets={}, validation_timeout=0.2)


async def test_graph_run_with_fanout_and_ancestor_templates(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(rt(redis_url, namespace)):
        graph = await sm.upsert_graph("g", squares_graph(namespace, items=4), secrets={})
        assert graph["validation_status"] == "VALID"
        assert (await sm.get_graph("g"))["validation_status"] == "VALID"
        run = await sm.trigger("g", inputs={"base": 10})
        status = await sm.wait(run, timeout=10)
        results = await sm.results(run)
    assert status.status == "SUCCEEDED"
    assert status.open == 0
    assert {k: (c.succeeded, c.pending, c.failed) for k, c in status.nodes.items()} == {
        "split": (1, 0, 0),
        "square": (4, 0, 0),
        "label": (4, 0, 0),
    }
    got = sorted(
        (r["outputs"]["value"], r["outputs"]["square"], r["outputs"]["text"]) for r in results
    )
    assert got == [(v, v * v, f"v={v} sq={v * v}") for v in range(10, 14)]
    assert all(r["identifier"] == "label" for r in results)


async def test_store_values_feed_templates_and_required_keys_are_enforced(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    nodes = [
        GraphNodeModel(
            node_name="Split",
            namespace=namespace,
            identifier="split",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["square"],
        ),
        GraphNodeModel(
            node_name="Square",
            namespace=namespace,
            identifier="square",
            inputs={"value": "${{ store.offset }}"},
        ),
    ]
    cfg = StoreConfigModel(required_keys=["n"], default_values={"offset": 5})
    async with running(rt(redis_url, namespace)):
        await sm.upsert_graph("s", nodes, secrets={}, store_config=cfg)
        with pytest.raises(ValueError, match=r"requires store keys \['n'\]"):
            await sm.trigger("s")
        run = await sm.trigger("s", store={"n": 2})
        results = await sm.results(run, timeout=10)
    assert [r["outputs"] for r in results] == [{"square": 25}, {"square": 25}]


async def test_start_delay_and_status_while_running(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(rt(redis_url, namespace)):
        await sm.upsert_graph("g", squares_graph(namespace, items=1), secrets={})
        run = await sm.trigger("g", start_delay=300)
        early = await sm.status(run)
        assert early.status == "RUNNING" and early.nodes["split"].pending == 1
        final = await sm.wait(run, timeout=10)
    assert final.status == "SUCCEEDED"
    assert final.finished_ms is not None and final.finished_ms - final.created_ms >= 300
    with pytest.raises(RunNotFound):
        await sm.status("no-such-run")
    with pytest.raises(ValueError, match="start_delay"):
        await sm.trigger("g", start_delay=-1)


async def test_wait_times_out_with_a_clear_error(
    namespace: str, sm: StateManager, redis_url: str
) -> None:
    async with running(rt(redis_url, namespace)):
        await sm.upsert_graph("g", squares_graph(namespace), secrets={})
    run = await sm.trigger("g")  # no runtime serves it now
    with pytest.raises(TimeoutError, match=run):
        await sm.wait(run, timeout=0.3)


@pytest.mark.slow
async def test_thousand_runs_two_runtime_processes(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    runs_n = 1000
    with worker_processes(redis_url, namespace, 2) as procs:
        await sm.upsert_graph(
            "g", squares_graph(namespace, items=3), secrets={}, validation_timeout=30
        )
        runs = await sm.trigger_many("g", [{"base": 10 * k} for k in range(runs_n)])
        statuses = list((await sm.wait_all(runs, timeout=120)).values())
        all_results = [await sm.results(r) for r in runs]
        outs = stop_processes(procs)
    assert all(p.returncode == 0 for p in procs), outs
    assert all("runtime stopped cleanly" in o for o in outs), outs
    assert {s.status for s in statuses} == {"SUCCEEDED"}
    pids: Counter[int] = Counter()
    for k, results in enumerate(all_results):
        base = 10 * k
        got = sorted((r["outputs"]["value"], r["outputs"]["square"]) for r in results)
        assert got == [(v, v * v) for v in range(base, base + 3)], f"run {k}: {results}"
        pids.update(r["outputs"]["pid"] for r in results)
    assert len(pids) == 2, f"both processes should share the work: {pids}"
    for node in ("Split", "Square", "Label"):
        assert await sm.pending(node) == {"length": 0, "pending": 0, "delayed": 0}
    assert len(ALL) >= 3


async def test_run_listing_history_and_node_stats(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(rt(redis_url, namespace)):
        await sm.upsert_graph("g", squares_graph(namespace, items=2), secrets={})
        runs = [await sm.trigger("g", inputs={"base": k}) for k in range(3)]
        await sm.wait_all(runs, timeout=10)
        stats = await sm.node_stats()
    listed = await sm.list_runs("g", count=2)
    assert [r.run_id for r in listed] == runs[::-1][:2]  # newest first, paged
    assert [r.run_id for r in await sm.list_runs("g", offset=2)] == [runs[0]]
    history = await sm.run_history(runs[0])
    assert sorted((h.identifier, h.status) for h in history) == [
        ("label", "SUCCEEDED"),
        ("label", "SUCCEEDED"),
        ("split", "SUCCEEDED"),
        ("square", "SUCCEEDED"),
        ("square", "SUCCEEDED"),
    ]
    assert all(h.attempt == 1 and h.node in ("Split", "Square", "Label") for h in history)
    assert set(stats) == {"Split", "Square", "Label"}
    assert stats["Square"]["length"] == 0 and stats["Square"]["consumers"] == 1
    assert await sm.graph_names() == ["g"]
    assert namespace in await StateManager.namespaces(redis_url)
