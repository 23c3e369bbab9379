"""The throughput workloads: W1 (drain a backlog of no-op states), W2 (a 3-stage graph
A -> B -> C), W3 (a fan-out to `ctx.branches` branches and their unite) and the enqueue
rate of `StateManager.enqueue_many`. Each checks what the workers did before its figures
count (see benchmarks/README.md for the definitions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from benchmarks.harness import Ctx, cleanup, measurement, payload, snapshot
from benchmarks.processes import Workers, register_nodes, wait_drained
from exospherehost import GraphNodeModel, StateManager, UnitesModel
from exospherehost.broker.codec import unpack
from exospherehost.broker.keys import GROUP, Keys

GRAPH = "bench-chain"
FAN_GRAPH = "bench-fan"


async def w1_drain(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Enqueue N no-op states, release W workers, time until all are settled.

    With `ctx.lanes` > 1 the namespace has that many lanes, but states enqueued without a
    graph always go to lane 0 (README, Wire protocol: Lanes), so W1 then measures what the
    idle lanes cost the workers, not a spread."""
    ns = ctx.namespace("w1")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "noop", processes, output_maxlen=max(2 * n, 100_000), label=label)
    try:
        if ctx.lanes != 1:
            await sm.set_lanes(ctx.lanes)
        await sm.enqueue_many("Noop", [payload(i) for i in range(n)])
        await workers.start()
        await ctx.settle_machine()
        a = await snapshot(ctx.client, ctx.masters)
        await workers.go()
        drained = await wait_drained(ctx, [("stream", keys.queue("Noop"))], workers, ctx.timeout)
        b = replace(await snapshot(ctx.client, ctx.masters), at=drained)
        reports = await workers.stop()
        await _verify_w1(ctx, keys, n, reports)
        result = measurement(n, a, b, reports, ctx.external)
        result["lanes"] = ctx.lanes
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns, ctx.masters)


async def _verify_w1(ctx: Ctx, keys: Keys, n: int, reports: list[dict[str, Any]]) -> None:
    c = ctx.client
    out = keys.output("Noop")
    pending = (await c.xpending(keys.queue("Noop"), GROUP))["pending"]
    statuses: dict[bytes, int] = {}
    after = "-"
    while True:
        chunk = await c.xrange(out, min=after, count=5000)
        for _, f in chunk:
            statuses[f[b"status"]] = statuses.get(f[b"status"], 0) + 1
        if len(chunk) < 5000:
            break
        after = "(" + chunk[-1][0].decode()
    settled = sum(int(r["settled"]) for r in reports)
    problems = []
    if statuses != {b"SUCCEEDED": n}:
        problems.append(f"output statuses {statuses}, expected {n} SUCCEEDED")
    if pending:
        problems.append(f"{pending} states still pending")
    if settled != n:
        problems.append(f"workers report {settled} settled, expected {n}")
    if await c.xlen(keys.dead()):
        problems.append("dead letters were written")
    if problems:
        raise AssertionError("w1 check failed: " + "; ".join(problems))


def chain_graph(namespace: str) -> list[GraphNodeModel]:
    def node(name: str, ident: str, x: object, nxt: str | None) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=name,
            namespace=namespace,
            identifier=ident,
            inputs={"x": x},
            next_nodes=[nxt] if nxt else None,
        )

    return [
        node("A", "a", 0, "b"),
        node("B", "b", "${{ a.outputs.x }}", "c"),
        node("C", "c", "${{ b.outputs.x }}", None),
    ]


async def trigger_runs(
    sm: StateManager,
    n: int,
    concurrency: int = 64,
    graph: str = GRAPH,
    inputs: Callable[[int], dict[str, Any]] = lambda i: {"x": i},
) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, concurrency):
        stop = min(n, start + concurrency)
        ids += await asyncio.gather(
            *(sm.trigger(graph, inputs=inputs(i)) for i in range(start, stop))
        )
    return ids


async def w2_pipeline(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Trigger N runs of A -> B -> C, release W workers, time until every run finished.

    With `ctx.lanes` = k > 1 the namespace gets k lanes before the runs are triggered, so
    the runs are spread round robin over the k lanes (k hash tags, on a cluster spread
    over the masters) and every worker serves every lane."""
    ns = ctx.namespace("w2")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "chain", processes, label=label)
    try:
        tags = await sm.set_lanes(ctx.lanes) if ctx.lanes != 1 else [0]
        await register_nodes(ctx.url, ns, "chain", cluster=ctx.cluster)
        await sm.upsert_graph(GRAPH, chain_graph(ns), secrets={}, validation_timeout=10)
        tt = time.perf_counter()
        run_ids = await trigger_runs(sm, n)
        trigger_rate = n / (time.perf_counter() - tt)
        await workers.start()
        watch: list[tuple[str, str]] = []
        for tag in tags:
            lane = keys.on_lane(tag)
            for node in ("A", "B", "C"):
                watch += [("stream", lane.queue(node)), ("zset", lane.delayed(node))]
        await ctx.settle_machine()
        a = await snapshot(ctx.client, ctx.masters)
        await workers.go()
        drained = await wait_drained(ctx, watch, workers, ctx.timeout)
        b = replace(await snapshot(ctx.client, ctx.masters), at=drained)
        reports = await workers.stop()
        await _verify_w2(ctx, keys, run_ids, reports, tags)
        result = measurement(n, a, b, reports, ctx.external)
        result["states_per_s"] = round(3 * n / (b.at - a.at), 1)
        result["trigger_rate"] = round(trigger_rate, 1)
        result["lanes"] = ctx.lanes
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns, ctx.masters)


async def _verify_w2(
    ctx: Ctx,
    keys: Keys,
    run_ids: list[str],
    reports: list[dict[str, Any]],
    tags: Sequence[int] = (0,),
) -> None:
    c = ctx.client
    pipe = c.pipeline(transaction=False)
    for run in run_ids:
        pipe.hget(keys.for_run(run).run(run), "status")
        pipe.lrange(keys.for_run(run).run_results(run), 0, -1)
    replies = await pipe.execute()
    problems: list[str] = []
    statuses = list(replies[0::2])
    bad_status = sum(1 for s in statuses if s != b"SUCCEEDED")
    if bad_status:
        problems.append(f"{bad_status} runs not SUCCEEDED (e.g. {statuses[0]!r})")
    wrong = 0
    for i, results in enumerate(replies[1::2]):
        xs = [unpack(r)["outputs"]["x"] for r in results]
        if xs != [i + 3]:
            wrong += 1
    if wrong:
        problems.append(f"{wrong} runs have a wrong result (expected C.outputs.x == i + 3)")
    settled = sum(int(r["settled"]) for r in reports)
    if settled != 3 * len(run_ids):
        problems.append(f"workers report {settled} settled, expected {3 * len(run_ids)}")
    on_lanes = {keys.for_run(run).lane for run in run_ids}
    if not on_lanes <= set(tags) or (len(run_ids) >= len(tags) and on_lanes != set(tags)):
        problems.append(f"runs on lanes {sorted(on_lanes)}, expected all of {list(tags)}")
    for tag in tags:
        if await c.xlen(keys.on_lane(tag).dead()):
            problems.append(f"dead letters were written (lane {tag})")
    if problems:
        raise AssertionError("w2 check failed: " + "; ".join(problems))


async def enqueue_rate(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Time StateManager.enqueue_many of N states (payloads built beforehand)."""
    del processes, label
    ns = ctx.namespace("enq")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    try:
        items = [payload(i) for i in range(n)]
        await sm.client.ping()  # open the connection outside the timing
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        ids = await sm.enqueue_many("Noop", items)
        b = await snapshot(ctx.client)
        length = await ctx.client.xlen(keys.queue("Noop"))
        if len(ids) != n or length != n:
            raise AssertionError(f"enqueue check failed: {len(ids)} ids, stream length {length}")
        result = measurement(n, a, b, [], ctx.external)
        del result["worker_cpu"], result["worker_us_per_item"]
        return result
    finally:
        await sm.close()
        await cleanup(ctx.client, ns)


def fan_graph(namespace: str) -> list[GraphNodeModel]:
    """fan (returns n outputs) -> branch (one state per output) -> unite (fan-in on fan)."""
    return [
        GraphNodeModel(
            node_name="Fan",
            namespace=namespace,
            identifier="fan",
            inputs={"run": 0, "n": 1},
            next_nodes=["branch"],
        ),
        GraphNodeModel(
            node_name="Branch",
            namespace=namespace,
            identifier="branch",
            inputs={"x": "${{ fan.outputs.x }}"},
            next_nodes=["unite"],
        ),
        GraphNodeModel(
            node_name="Unite",
            namespace=namespace,
            identifier="unite",
            unites=UnitesModel(identifier="fan"),
            inputs={"values": "${{ branch.outputs.x }}"},
        ),
    ]


async def w3_fan(ctx: Ctx, n: int, processes: int, label: str) -> dict[str, Any]:
    """Trigger N runs that each fan out to `ctx.branches` branches and unite; release W
    workers, time until every run finished (1 + branches + 1 states per run)."""
    ns = ctx.namespace("w3")
    keys = Keys(ns)
    sm = StateManager(ns, redis_url=ctx.url)
    workers = Workers(ctx, ns, "fan", processes, label=label)
    branches = ctx.branches
    try:
        await register_nodes(ctx.url, ns, "fan")
        await sm.upsert_graph(FAN_GRAPH, fan_graph(ns), secrets={}, validation_timeout=10)
        run_ids = await trigger_runs(
            sm, n, graph=FAN_GRAPH, inputs=lambda i: {"run": i, "n": branches}
        )
        await workers.start()
        watch: list[tuple[str, str]] = []
        for node in ("Fan", "Branch", "Unite"):
            watch += [("stream", keys.queue(node)), ("zset", keys.delayed(node))]
        await ctx.settle_machine()
        a = await snapshot(ctx.client)
        await workers.go()
        drained = await wait_drained(ctx, watch, workers, ctx.timeout)
        b = replace(await snapshot(ctx.client), at=drained)
        reports = await workers.stop()
        states = n * (branches + 2)
        await _verify_w3(ctx, keys, run_ids, branches, reports)
        result = measurement(n, a, b, reports, ctx.external)
        elapsed = b.at - a.at
        result["branches"] = branches
        result["states"] = states
        result["states_per_s"] = round(states / elapsed, 1)
        result["worker_us_per_state"] = round(result["worker_us_per_item"] / (branches + 2), 2)
        result["redis_us_per_state"] = round(result["redis_us_per_item"] / (branches + 2), 2)
        return result
    finally:
        await workers.kill()
        await sm.close()
        await cleanup(ctx.client, ns)


async def _verify_w3(
    ctx: Ctx, keys: Keys, run_ids: list[str], branches: int, reports: list[dict[str, Any]]
) -> None:
    """Every run SUCCEEDED with exactly one result, the unite's, holding all branch values
    in fan-out order."""
    c = ctx.client
    pipe = c.pipeline(transaction=False)
    for run in run_ids:
        pipe.hget(keys.run(run), "status")
        pipe.lrange(keys.run_results(run), 0, -1)
    replies = await pipe.execute()
    problems: list[str] = []
    statuses = list(replies[0::2])
    bad_status = sum(1 for s in statuses if s != b"SUCCEEDED")
    if bad_status:
        problems.append(f"{bad_status} runs not SUCCEEDED (e.g. {statuses[0]!r})")
    wrong: list[str] = []
    for i, raw in enumerate(replies[1::2]):
        results = [unpack(r) for r in raw]
        expected = [i * branches + j + 1 for j in range(branches)]
        if len(results) != 1:
            wrong.append(f"run {i}: {len(results)} results")
        elif results[0]["identifier"] != "unite":
            wrong.append(f"run {i}: result of {results[0]['identifier']!r}")
        elif results[0]["outputs"]["values"] != expected:
            got = results[0]["outputs"]["values"]
            order = " (same values, other order)" if sorted(got) == expected else ""
            wrong.append(f"run {i}: {len(got)} values{order}")
    if wrong:
        problems.append(f"{len(wrong)} runs have a wrong unite result: {wrong[:3]}")
    settled = sum(int(r["settled"]) for r in reports)
    want = (branches + 2) * len(run_ids)
    if settled != want:
        problems.append(f"workers report {settled} settled, expected {want}")
    if await c.xlen(keys.dead()):
        problems.append("dead letters were written")
    if problems:
        raise AssertionError("w3 check failed: " + "; ".join(problems))
