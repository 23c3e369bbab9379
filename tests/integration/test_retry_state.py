"""sm.retry_state / sm.retry_failed (issue 12.3) against the real server, under two worker
processes: a failed branch of a fan-in retried makes the unite fire once with every
branch; a succeeded state retried re-runs with its inputs and re-emits its successors;
concurrent calls make one retry; what cannot be retried is refused naming why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from exospherehost import (
    GraphNodeModel,
    RedriveRefused,
    RetryPolicyModel,
    RetryRefused,
    RunNotFound,
    Runtime,
    StateManager,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.broker.codec import pack, unpack
from tests.integration.apps.nodes import Collect, Flaky, Split, Square
from tests.integration.helpers import running, squares_graph, worker_processes

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too

BRANCHES = 5
FLAKY = 2  # the branch value that fails on its first execution
NO_RETRIES = RetryPolicyModel(max_retries=0)


def flaky_fan(ns: str, tmp: Path, strategy: UnitesStrategyEnum) -> list[GraphNodeModel]:
    """fan (Split, n branches) -> work (Flaky: branch FLAKY fails once) -> collect (unites fan)."""
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="fan",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Flaky",
            namespace=ns,
            identifier="work",
            next_nodes=["collect"],
            inputs={
                "value": "${{ fan.outputs.value }}",
                "fail_at": FLAKY,
                "marker": str(tmp / "marker"),
                "log": str(tmp / "executions"),
            },
        ),
        GraphNodeModel(
            node_name="Collect",
            namespace=ns,
            identifier="collect",
            unites=UnitesModel(identifier="fan", strategy=strategy),
            inputs={"values": "${{ work.outputs.value }}", "items": "${{ store.n }}"},
        ),
    ]


def flaky_runtime(redis_url: str, namespace: str) -> Runtime:
    """An in-process Runtime of the flaky fan's nodes, without retries (a Runtime runs
    once: a test that serves twice makes two)."""
    return Runtime(
        namespace=namespace,
        name="p",
        nodes=[Split, Flaky, Collect, Square],
        redis_url=redis_url,
        default_retry_policy=NO_RETRIES,
    )


async def upsert_flaky(
    sm: StateManager,
    namespace: str,
    tmp: Path,
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS,
    validation_timeout: float = 10,
) -> None:
    await sm.upsert_graph(
        "flaky",
        flaky_fan(namespace, tmp, strategy),
        retry_policy=NO_RETRIES,
        store_config=StoreConfigModel(required_keys=["n"]),
        validation_timeout=validation_timeout,
    )


def one_square(namespace: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Square", namespace=namespace, identifier="sq", inputs={"value": 3}
        )
    ]


def executions(tmp: Path) -> list[int]:
    return sorted(int(line) for line in (tmp / "executions").read_text().split())


@pytest.mark.parametrize("strategy", [UnitesStrategyEnum.ALL_SUCCESS, UnitesStrategyEnum.ALL_DONE])
async def test_retry_failed_in_a_fan_in_makes_the_run_succeed_once(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    tmp_path: Path,
    strategy: UnitesStrategyEnum,
) -> None:
    """ALL_SUCCESS: the unite did not fire (a branch failed); after retry_failed it fires
    once, with every branch's value. ALL_DONE: it fired without the failed branch; the
    retried branch runs and the decided unite does not fire again. Twenty concurrent
    retry_failed calls make one retry; the dead letter goes; the counters add up."""
    with worker_processes(redis_url, namespace, 2):
        await upsert_flaky(sm, namespace, tmp_path, strategy, validation_timeout=30)
        run = await sm.trigger("flaky", store={"n": BRANCHES})
        first = await sm.wait(run, timeout=30)
        assert first.status == "FAILED", first
        [letter] = await sm.dead_letters()
        [failed_id] = [
            sid
            for sid, d in (await sm.run_graph(run)).states.items()
            if d.status == "FAILED" and d.identifier == "work"
        ]

        calls = await asyncio.gather(*(sm.retry_failed(run) for _ in range(20)))
        # Each call returns the retry while it is in flight, [] once it has succeeded.
        made = {i for c in calls for i in c}
        assert len(made) == 1 and all(len(c) <= 1 for c in calls), calls
        [retry_id] = made
        final = await sm.wait(run, timeout=30)
        results = await sm.results(run)
        graph = await sm.run_graph(run)
        old, new = await sm.state(run, failed_id), await sm.state(run, retry_id)
        after = await sm.retry_failed(run)

    assert final.status == "SUCCEEDED" and final.open == 0, final
    assert final.nodes["work"].succeeded == BRANCHES and final.nodes["work"].failed == 0, final
    assert executions(tmp_path).count(FLAKY) == 2, "the failed branch ran once more, not twice"
    assert executions(tmp_path) == sorted([*range(BRANCHES), FLAKY])
    collected = [r["outputs"]["values"] for r in results if r["identifier"] == "collect"]
    if strategy is UnitesStrategyEnum.ALL_SUCCESS:
        assert collected == [list(range(BRANCHES))], "the unite fires once, with every branch"
        assert final.nodes["collect"].skipped == 0 and final.notes == {}, final
    else:
        assert collected == [[v for v in range(BRANCHES) if v != FLAKY]], "decided: not again"
    assert final.nodes["collect"].succeeded == 1, final
    assert old.retried_as == retry_id and new.retry_of == failed_id, (old, new)
    assert new.status == "SUCCEEDED" and new.inputs == old.inputs and new.attempt == 1
    assert new.parents == old.parents, "a retry is a sibling of what it re-ran"
    assert graph.retries == [(failed_id, retry_id)]
    assert await sm.dead_letter(letter.id) is None, "the retried state's dead letter is gone"
    assert await sm.dead_letters() == []
    assert after == [], "nothing failed any more"


async def test_retry_of_a_succeeded_state_re_emits_its_successors_exactly_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    """A succeeded square re-runs with its original inputs; its label runs again (one more
    leaf result, from the new square); twenty concurrent calls make one retry, and a later
    call returns it too; retrying the new square re-runs it in turn."""
    with worker_processes(redis_url, namespace, 2):
        await sm.upsert_graph("sq", squares_graph(namespace, 3), validation_timeout=30)
        run = await sm.trigger("sq")
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
        before = await sm.results(run)
        graph = await sm.run_graph(run)
        [square] = [s for s, d in graph.states.items() if d.identifier == "square"][:1]
        ids = await asyncio.gather(*(sm.retry_state(run, square) for _ in range(20)))
        assert len(set(ids)) == 1, ids
        assert (await sm.status(run)).status in ("RUNNING", "SUCCEEDED")
        final = await sm.wait(run, timeout=30)
        after = await sm.results(run)
        new = await sm.state(run, ids[0])
        assert await sm.retry_state(run, square) == ids[0], "a state is retried once"
        again = await sm.retry_state(run, ids[0])  # the new square, re-run in turn
        assert again not in (ids[0], square)
        assert (await sm.state(run, ids[0])).retried_as == again
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
        third = await sm.results(run)
        graph2 = await sm.run_graph(run)
    old = graph.states[square]
    assert final.status == "SUCCEEDED" and final.open == 0
    assert new.inputs == old.inputs and new.outputs == old.outputs and new.retry_of == square
    assert len(after) == len(before) + 1 and len(third) == len(before) + 2
    children = [c for p, c in graph2.edges if p == ids[0]]
    assert len(children) == 1 and graph2.states[children[0]].identifier == "label"
    assert final.nodes["square"].succeeded == 3, "the retry replaces the square it re-ran"


async def test_what_cannot_be_retried_is_refused_naming_why(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    rt = flaky_runtime(redis_url, namespace)
    async with running(rt):
        await upsert_flaky(sm, namespace, tmp_path)
        run = await sm.trigger("flaky", store={"n": 3})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
        with pytest.raises(RunNotFound):
            await sm.retry_state("nosuchrun", "s1")
        with pytest.raises(RetryRefused, match="no record"):
            await sm.retry_state(run, "nosuchstate")
        with pytest.raises(ValueError, match="state_id"):
            await sm.retry_state(run, "")
        with pytest.raises(ValueError, match="run id"):
            await sm.retry_state("bad id", "s1")
        # A settled state of a cancelled run (its record put there as a settle would).
        cancelled = await sm.trigger("flaky", store={"n": 3}, start_delay=60_000)
        await sm.cancel(cancelled)
        graph = await sm.run_graph(run)
        sid = next(s for s, d in graph.states.items() if d.status == "SUCCEEDED")
        raw = await redis.hget(sm.keys.run_states(run), sid)
        assert raw is not None
        await redis.hset(sm.keys.run_states(cancelled), sid, raw)
        with pytest.raises(RetryRefused, match="its run was cancelled"):
            await sm.retry_state(cancelled, sid)
        # A retrying state (a delayed retry due) is in flight.
        record = unpack(raw)
        record["s"] = "RETRYING"
        await redis.hset(sm.keys.run_states(run), sid, pack(record))
        with pytest.raises(RetryRefused, match="not settled yet"):
            await sm.retry_state(run, sid)


async def test_a_redriven_state_is_in_flight_and_a_retried_one_is_not_redriven(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, tmp_path: Path
) -> None:
    """Redrive and retry_state never both run a failed state: a redriven state has no
    record until it settles again (retry_state refuses it), and a dead letter of a
    state retry_state re-ran is refused by redrive (here a copy the retry did not see)."""

    async with running(flaky_runtime(redis_url, namespace)):
        await upsert_flaky(sm, namespace, tmp_path)
        run = await sm.trigger("flaky", store={"n": 3})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
    [letter] = await sm.dead_letters()
    raw_letter = await redis.xrange(sm.keys.dead(), letter.id, letter.id)
    # No worker runs now: the redriven state stays queued.
    assert await sm.redrive(letter.id) is True
    with pytest.raises(RetryRefused, match="not settled yet"):
        await sm.retry_state(run, letter.state_id)
    async with running(flaky_runtime(redis_url, namespace)):
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"

    # Second run: retried, then a copy of its dead letter appears (as if the retry had
    # not found it): redrive refuses it.
    (tmp_path / f"marker.{FLAKY}").unlink()
    async with running(flaky_runtime(redis_url, namespace)):
        run2 = await sm.trigger("flaky", store={"n": 3})
        assert (await sm.wait(run2, timeout=30)).status == "FAILED"
        [letter2] = await sm.dead_letters()
        [raw2] = await redis.xrange(sm.keys.dead(), letter2.id, letter2.id)
        [new] = await sm.retry_failed(run2)
        assert (await sm.wait(run2, timeout=30)).status == "SUCCEEDED"
    copy = await redis.xadd(sm.keys.dead(), raw2[1])
    with pytest.raises(RedriveRefused, match="was retried"):
        await sm.redrive(copy.decode())
    assert (await sm.status(run2)).status == "SUCCEEDED", "the run stays as it is"
    assert new and raw_letter


async def test_records_off_and_truncated_inputs_cannot_be_retried(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    rt = Runtime(
        namespace=namespace, name="p", nodes=[Square], redis_url=redis_url, state_records="off"
    )
    nodes = one_square(namespace)
    async with running(rt):
        await sm.upsert_graph("one", nodes)
        run = await sm.trigger("one")
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
    [hist] = await sm.run_history(run)
    with pytest.raises(RetryRefused, match="state_records='off'"):
        await sm.retry_state(run, hist.state_id)

    rt2 = Runtime(namespace=namespace, name="p", nodes=[Square], redis_url=redis_url)
    async with running(rt2):
        run2 = await sm.trigger("one")
        assert (await sm.wait(run2, timeout=30)).status == "SUCCEEDED"
    [hist2] = await sm.run_history(run2)
    key = sm.keys.run_states(run2)
    record = unpack(await redis.hget(key, hist2.state_id))
    record["in"] = {"__truncated__": 40_000, "preview": "{'value': ..."}
    await redis.hset(key, hist2.state_id, pack(record))
    with pytest.raises(RetryRefused, match="inputs truncated"):
        await sm.retry_state(run2, hist2.state_id)


async def test_retry_on_a_lane_other_than_lane_0(
    redis_url: str, namespace: str, sm: StateManager, tmp_path: Path
) -> None:
    """A run on lane n > 0: the retry, its records, its dead letter and its run keys all
    follow from the run id (one slot: one script call)."""
    from exospherehost.broker.keys import run_lane

    await sm.set_lanes(3)
    rt = flaky_runtime(redis_url, namespace)
    async with running(rt):
        run = ""
        for i in range(3):  # round robin: one of three consecutive runs is on lane n > 0
            d = tmp_path / str(i)
            d.mkdir()
            await upsert_flaky(sm, namespace, d)
            run = await sm.trigger("flaky", store={"n": 3})
            assert (await sm.wait(run, timeout=30)).status == "FAILED"
            if run_lane(run) != 0:
                break
        assert run_lane(run) != 0, "no run on another lane"
        letters = await sm.dead_letters()
        [mine] = [d for d in letters if d.run_id == run]
        [new] = await sm.retry_failed(run)
        final = await sm.wait(run, timeout=30)
        assert await sm.dead_letter(mine.id) is None
    assert final.status == "SUCCEEDED" and final.nodes["collect"].succeeded == 1, final
    assert (await sm.state(run, new)).status == "SUCCEEDED"


async def test_two_callers_that_read_the_same_record_make_one_retry(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """The script's own guard, without the client's early check: two plans built from the
    same read (as two racing callers build them) -> the second finds the first's retry,
    writes nothing and gets its id; a record changed since the read is not retried."""
    from exospherehost.client.retry import plan_retry

    rt = Runtime(namespace=namespace, name="p", nodes=[Square], redis_url=redis_url)
    nodes = one_square(namespace)
    async with running(rt):
        await sm.upsert_graph("one", nodes)
        run = await sm.trigger("one")
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
    [hist] = await sm.run_history(run)
    sid, key = hist.state_id, sm.keys.run_states(run)
    raw = await redis.hget(key, sid)
    assert raw is not None
    first, second = (plan_retry(run, "one", 1, sid, raw, None, "", new, 1) for new in ("N1", "N2"))
    broker = sm.broker.for_run(run)
    assert await broker.retry_state(run, first) == (1, "N1")
    assert await broker.retry_state(run, second) == (0, "N1")
    assert await redis.xlen(sm.keys.queue("Square")) == 1, "one state queued"
    status = await sm.status(run)
    assert status.status == "RUNNING" and status.open == 1, status

    changed = pack({**unpack(raw), "a": 9})
    await redis.hset(key, "other", changed)
    stale = plan_retry(run, "one", 1, "other", raw, None, "", "N3", 1)
    from exospherehost.broker.streams import RETRY_CHANGED

    assert await broker.retry_state(run, stale) == (RETRY_CHANGED, "")
    assert await redis.xlen(sm.keys.queue("Square")) == 1


async def test_a_uniting_state_retried_takes_each_branchs_newest_values(
    redis_url: str, namespace: str, sm: StateManager, tmp_path: Path
) -> None:
    """ALL_DONE fired without the failed branch; the branch retried succeeds (the unite
    does not fire again); then retrying the uniting state re-runs it with every branch,
    the re-run one included, once each."""
    rt = flaky_runtime(redis_url, namespace)
    async with running(rt):
        await upsert_flaky(sm, namespace, tmp_path, UnitesStrategyEnum.ALL_DONE)
        run = await sm.trigger("flaky", store={"n": BRANCHES})
        assert (await sm.wait(run, timeout=30)).status == "FAILED"
        await sm.retry_failed(run)
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
        graph = await sm.run_graph(run)
        [unite] = [s for s, d in graph.states.items() if d.identifier == "collect"]
        again = await sm.retry_state(run, unite)
        final = await sm.wait(run, timeout=30)
        results = await sm.results(run)
    collected = [r["outputs"]["values"] for r in results if r["identifier"] == "collect"]
    without = [v for v in range(BRANCHES) if v != FLAKY]
    assert collected == [without, list(range(BRANCHES))], collected
    assert final.status == "SUCCEEDED" and final.nodes["collect"].succeeded == 1, final
    detail = await sm.state(run, again)
    assert detail.retry_of == unite and detail.status == "SUCCEEDED"


async def test_a_counter_another_client_overwrote_refuses_the_retry_before_any_write(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """The script steps run counters with HINCRBY after its first write: a counter that is
    not an integer (a foreign client's HSET) would fail it half-way, leaving a queued state
    in a run that was never re-opened. It is checked first: refused, nothing written."""
    rt = Runtime(namespace=namespace, name="p", nodes=[Square], redis_url=redis_url)
    async with running(rt):
        await sm.upsert_graph("one", one_square(namespace))
        run = await sm.trigger("one")
        assert (await sm.wait(run, timeout=30)).status == "SUCCEEDED"
    [hist] = await sm.run_history(run)
    await redis.hset(sm.keys.run(run), "s:sq", "many")
    with pytest.raises(RetryRefused, match=r"field s:sq of .* holds many, not a count"):
        await sm.retry_state(run, hist.state_id)
    assert await redis.xlen(sm.keys.queue("Square")) == 0, "nothing queued"
    assert await redis.hget(sm.keys.run_states(run), ">" + hist.state_id) is None, "no link"
    assert await redis.hget(sm.keys.run(run), "status") == b"SUCCEEDED", "not re-opened"
    assert await redis.hget(sm.keys.run(run), "open") == b"0"
