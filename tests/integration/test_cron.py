"""Cron triggers: validated at upsert, fired by every Runtime's scheduler exactly once per
fire time (UTC), missed fire times not caught up."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    CronTrigger,
    GraphNodeModel,
    Runtime,
    StateManager,
    StoreConfigModel,
)
from exospherehost.broker.codec import pack
from exospherehost.broker.keys import Keys
from exospherehost.broker.runstart import RunStart
from exospherehost.broker.streams import Broker
from exospherehost.client.statemanager import GraphValidationError
from exospherehost.graph.cron import CronExpressionError, check_expression, next_fire
from exospherehost.graph.runplan import plan_run, run_store
from exospherehost.graphstore import GraphStore
from exospherehost.runtime.cron import CronScheduler
from tests.integration.helpers import running

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


class Tick(BaseNode):
    class Inputs(BaseModel):
        label: str

    class Outputs(BaseModel):
        label: str

    async def execute(self) -> Outputs:
        return self.Outputs(label=self.inputs.label)


def tick_graph(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Tick",
            namespace=ns,
            identifier="tick",
            inputs={"label": "${{ store.label }}"},
        )
    ]


STORE = StoreConfigModel(default_values={"label": "scheduled"})
EVERY_SECOND = "* * * * * *"


def runtime(url: str, ns: str) -> Runtime:
    return Runtime(namespace=ns, name="cron", nodes=[Tick], redis_url=url)


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> AsyncIterator[StateManager]:
    manager = StateManager(namespace, redis_url=redis_url)
    yield manager
    await manager.close()


async def fire_times(redis: Redis, ns: str, graph: str) -> dict[str, int]:
    """run id -> fire_ts of every run in the graph's run index."""
    out: dict[str, int] = {}
    for raw in await redis.zrange(f"exo:{{{ns}}}:runs:{graph}", 0, -1):
        run = raw.decode()
        fields = await redis.hgetall(f"exo:{{{ns}}}:run:{run}")
        assert fields[b"trigger"] == b"cron", fields
        out[run] = int(fields[b"fire_ts"])
    return out


def test_expressions_are_validated_and_seconds_come_first() -> None:
    assert next_fire("*/5 * * * * *", 100) == 105  # 6 fields: seconds first
    assert next_fire("* * * * *", 100) == 120  # 5 fields: minute resolution
    assert next_fire("0 0 * * *", 0) == 86_400  # UTC midnight
    assert check_expression("@hourly") == "@hourly"
    for bad, why in [
        ("61 * * * * *", "invalid"),
        ("* * * * * * 2030", "7 fields"),
        ("* * *", "3 fields"),
        ("0 0 31 2 *", "invalid"),  # never fires
        ("every minute", "2 fields"),
    ]:
        with pytest.raises(CronExpressionError, match=why) as info:
            check_expression(bad)
        assert repr(bad) in str(info.value)


async def test_upsert_rejects_bad_expressions_naming_them(namespace: str, sm: StateManager) -> None:
    with pytest.raises(GraphValidationError) as info:
        await sm.upsert_graph(
            "c",
            tick_graph(namespace),
            store_config=STORE,
            triggers=[CronTrigger(expression="61 * * * * *"), CronTrigger(expression="* *")],
            validation_timeout=0,
        )
    text = "\n".join(info.value.errors)
    assert "'61 * * * * *' is invalid" in text and "'* *' has 2 fields" in text
    with pytest.raises(GraphValidationError, match=r"without a default value.*\['label'\]"):
        await sm.upsert_graph(
            "c",
            tick_graph(namespace),
            store_config=StoreConfigModel(required_keys=["label"]),
            triggers=[CronTrigger(expression=EVERY_SECOND)],
            validation_timeout=0,
        )


async def wait_finished_runs(redis: Redis, ns: str, count: int, timeout: float) -> set[str]:
    """Follow the namespace's event stream until `count` runs have finished."""
    finished: set[str] = set()
    last: bytes | str = "0"
    deadline = time.monotonic() + timeout
    while len(finished) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(finished)} of {count} cron runs finished in {timeout}s"
        reply = await redis.xread({f"exo:{{{ns}}}:events": last}, block=int(left * 1000) + 1)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                last = entry_id
                assert fields[b"status"] == b"SUCCEEDED", fields
                finished.add(fields[b"run"].decode())
    return finished


async def test_two_runtimes_fire_each_second_exactly_once(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    a, b = runtime(redis_url, namespace), runtime(redis_url, namespace)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running(a))
        await stack.enter_async_context(running(b))
        await sm.upsert_graph(
            "c",
            tick_graph(namespace),
            store_config=STORE,
            triggers=[CronTrigger(expression=EVERY_SECOND)],
        )
        await wait_finished_runs(redis, namespace, 4, timeout=20)
    assert a.cron is not None and b.cron is not None
    fired = await fire_times(redis, namespace, "c")
    n = len(fired)
    assert n >= 4
    times = sorted(fired.values())
    assert len(set(times)) == n, f"a fire time fired twice: {times}"
    assert times == list(range(times[0], times[0] + n)), f"not consecutive: {times}"
    assert a.cron.stats.fired + b.cron.stats.fired == n
    # Both schedulers tried (nearly) every fire time; the marker let exactly one win.
    assert a.cron.stats.duplicates + b.cron.stats.duplicates >= n - 2
    for run, ts in fired.items():
        assert await redis.get(f"exo:{{{namespace}}}:cron:c:{ts}") == run.encode()
    results = [await sm.results(r) for r in fired if (await sm.status(r)).done]
    assert results and all(r[0]["outputs"] == {"label": "scheduled"} for r in results)


async def backdate(redis: Redis, ns: str, graph: str, updated_s: int) -> None:
    """Rewrite the current version of `graph` as if upserted at `updated_s` (Redis's clock;
    its triggers count from then)."""
    store = GraphStore(redis, Keys(ns))
    doc = await store.current(graph)
    assert doc is not None
    doc["updated_ms"] = updated_s * 1000
    await redis.set(f"exo:{{{ns}}}:graph:{graph}:{doc['version']}", pack(doc))


async def test_scheduler_with_an_injected_clock(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace)):  # registers Tick, schedules nothing
        pass
    await sm.upsert_graph(
        "c",
        tick_graph(namespace),
        store_config=STORE,
        triggers=[CronTrigger(expression=EVERY_SECOND)],
    )
    # Fake times passed to tick (Redis's clock as the scheduler would estimate it), in the
    # past: the cron_fire script fires nothing that is not due by Redis's own clock.
    t0 = math.floor(time.time()) - 1000
    await backdate(redis, namespace, "c", t0 - 10)

    def scheduler() -> CronScheduler:
        broker = Broker(sm.client, namespace)
        return CronScheduler(
            broker, GraphStore(redis, broker.keys), reload_s=1e9, grace_s=5, marker_ttl_s=100_000
        )

    a, b = scheduler(), scheduler()
    assert await a.tick(t0) == 0 and await b.tick(t0) == 0  # start: nothing is due yet
    assert a.triggers == {("c", EVERY_SECOND): t0 + 1}
    assert await a.tick(t0 + 3.5) == 3  # t0+1, t0+2, t0+3
    assert await b.tick(t0 + 3.5) == 0 and b.stats.duplicates == 3
    assert await b.tick(t0 + 4.0) == 1 and await a.tick(t0 + 4.0) == 0
    # A stall longer than the grace period: only fire times at most 5 s late are fired.
    assert await a.tick(t0 + 200.2) == 5  # t0+196 .. t0+200
    assert a.stats.skipped == 1 and "more than 5s late" in a.stats.errors[-1]
    # A scheduler starting later does not catch up fire times it was not running for.
    c = scheduler()
    assert await c.tick(t0 + 500.5) == 0
    assert await c.tick(t0 + 501.0) == 1
    expected = [t0 + k for k in (1, 2, 3, 4, 196, 197, 198, 199, 200, 501)]
    assert sorted((await fire_times(redis, namespace, "c")).values()) == expected
    assert await redis.xlen(f"exo:{{{namespace}}}:q:Tick") == len(expected)
    ttl = await redis.ttl(f"exo:{{{namespace}}}:cron:c:{t0 + 501}")
    assert 0 < ttl <= c.marker_ttl_s

    # Upserted meanwhile (c has not reloaded): the script refuses the stale version,
    # c reloads and fires with the current one.
    upserted = await sm.upsert_graph(
        "c",
        tick_graph(namespace),
        store_config=STORE,
        triggers=[CronTrigger(expression=EVERY_SECOND)],
    )
    assert await c.tick(t0 + 502.0) == 1
    by_ts = {ts: run for run, ts in (await fire_times(redis, namespace, "c")).items()}
    assert (await redis.hget(f"exo:{{{namespace}}}:run:{by_ts[t0 + 502]}", "version")) == str(
        upserted["version"]
    ).encode()
    # Triggers removed: nothing is scheduled any more.
    await sm.upsert_graph("c", tick_graph(namespace), store_config=STORE, triggers=[])
    await c.reload(t0 + 503.0)
    assert c.triggers == {}
    assert await c.tick(t0 + 503.0) == 0


async def test_scheduler_survives_a_graph_it_cannot_fire(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """A forged document with a bad expression is logged and ignored, the rest fires."""
    async with running(runtime(redis_url, namespace)):
        pass
    await sm.upsert_graph(
        "c",
        tick_graph(namespace),
        store_config=STORE,
        triggers=[CronTrigger(expression=EVERY_SECOND)],
    )
    broker = Broker(sm.client, namespace)
    store = GraphStore(redis, broker.keys)
    doc = await store.current("c")
    assert doc is not None
    doc["triggers"] = [{"type": "CRON", "expression": "nonsense"}, *doc["triggers"]]
    doc["version"] = await store.next_version("c")
    await store.save(doc, None)
    t0 = math.floor(time.time()) - 100  # a fake "now" in the past (Redis's clock)
    await backdate(redis, namespace, "c", t0 - 10)
    sched = CronScheduler(broker, store, reload_s=1e9)
    await sched.tick(t0)
    assert any("'nonsense'" in e for e in sched.stats.errors)
    assert list(sched.triggers) == [("c", EVERY_SECOND)]
    assert await sched.tick(t0 + 1.0) == 1


async def test_runtime_scheduler_stops_with_the_runtime(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    rt = runtime(redis_url, namespace)
    async with running(rt):
        assert rt.cron is not None
    await asyncio.sleep(0)
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "exo-cron"]
    assert tasks == []


async def test_cron_fire_writes_exactly_what_trigger_writes(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace)):
        pass
    await sm.upsert_graph("c", tick_graph(namespace), store_config=STORE)
    graph = await sm._compiled_current("c")
    broker = Broker(sm.client, namespace)

    def plan() -> RunStart:
        return plan_run(
            graph,
            broker.keys,
            inputs={},
            store=run_store(graph, {}),
            start_delay_ms=0,
            now_ms=5,
        )

    by_trigger, by_cron = plan(), plan()
    await broker.start_run(by_trigger)
    before_ms = int(time.time() * 1000) - 1000
    assert await broker.cron_fire(by_cron, graph.version, 123, 60) == 1
    assert await broker.cron_fire(plan(), graph.version, 123, 60) == 0  # marker taken
    assert await broker.cron_fire(plan(), graph.version + 1, 124, 60) == -1  # stale version

    async def written(start: RunStart) -> tuple[object, ...]:
        return (
            await redis.hgetall(start.run_key),
            await redis.hgetall(start.store_key),
            await redis.zscore(start.index_key, start.run_id),
            await redis.ttl(start.run_key),
        )

    # The same writes, but a cron run's creation time is Redis's clock when it was fired.
    trig, cron = await written(by_trigger), await written(by_cron)
    assert trig[0][b"created_ms"] == b"5" and trig[2] == 5
    cron_created = int(cron[0][b"created_ms"])
    assert cron_created > before_ms and cron[2] == cron_created
    assert {**trig[0], b"created_ms": b""} == {**cron[0], b"created_ms": b""}
    assert trig[1] == cron[1] and trig[3] == cron[3]
    entries = await redis.xrange(f"exo:{{{namespace}}}:q:Tick")
    assert [e[1] for e in entries] == [
        {b"_exo": by_trigger.envelope},
        {b"_exo": by_cron.envelope},
    ]
    assert await redis.zcard(f"exo:{{{namespace}}}:runs:c") == 2
