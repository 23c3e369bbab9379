"""Crash tests: real worker processes killed with SIGKILL, hung, or killed by their input."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from exospherehost import GraphNodeModel, StateManager
from tests.integration.helpers import assert_step_runs_once, start_worker, stop_processes

pytestmark = [pytest.mark.slow, pytest.mark.cluster_too]  # cluster: issue 14


async def _exit_code(proc: subprocess.Popen[str], timeout: float) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def _line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read the process's output until a line containing `needle` appears."""

    def scan() -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            if needle in line:
                return line
        raise AssertionError(f"process ended without printing {needle!r}")

    return await asyncio.wait_for(asyncio.to_thread(scan), timeout)


async def test_kill_9_mid_batch_loses_nothing_and_transitions_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    n = 5000
    graph = [
        GraphNodeModel(
            node_name="Step1",
            namespace=namespace,
            identifier="one",
            inputs={"i": 0},
            next_nodes=["two"],
        ),
        GraphNodeModel(
            node_name="Step2",
            namespace=namespace,
            identifier="two",
            inputs={"i": "${{ one.outputs.i }}"},
        ),
    ]
    env = {"EXO_TEST_NODES": "Step1,Step2", "EXO_TEST_VISIBILITY": "1"}
    victim = start_worker(redis_url, namespace, EXO_TEST_CRASH_AFTER=str(n // 2), **env)
    try:
        await sm.upsert_graph("crash", graph, secrets={}, validation_timeout=30)
        runs = [await sm.trigger("crash", inputs={"i": k}) for k in range(n)]
        assert await _exit_code(victim, 60) == -9  # killed itself mid-batch
        in_flight = (await sm.pending("Step1"))["pending"] + (await sm.pending("Step2"))["pending"]
        assert in_flight >= 1, "the crash should leave read-but-unsettled states behind"
        survivor = start_worker(redis_url, namespace, **env)
        try:
            statuses = await sm.wait_all(runs, timeout=120)
        finally:
            outs = stop_processes([survivor])
        assert survivor.returncode == 0, outs
    finally:
        stop_processes([victim])
    await assert_step_runs_once(sm, runs, statuses)


async def test_reclaimed_state_of_a_hung_worker_settles_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    env = {"EXO_TEST_NODES": "Hang", "EXO_TEST_VISIBILITY": "1"}
    hung = start_worker(redis_url, namespace, EXO_TEST_HANG_S="4", **env)
    helper = None
    try:
        await _line(hung, "serving", 30)
        state = await sm.enqueue("Hang", {"i": 1})
        # Wait until the hung worker holds it, then start a healthy one.
        deadline = time.monotonic() + 10
        while (await sm.pending("Hang"))["pending"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        helper = start_worker(redis_url, namespace, EXO_TEST_HANG_S="0", **env)
        result = (await sm.wait_for_states("Hang", [state], timeout=20))[state]
        assert result.outputs["pid"] == helper.pid  # the healthy worker took it over
        # The hung worker wakes, finishes the same state and settles late: nothing emitted.
        await _line(hung, "late settles skipped", 20)
    finally:
        stop_processes([p for p in (hung, helper) if p is not None])
    outputs = await sm.outputs("Hang")
    assert [o.state_id for o in outputs] == [state]
    assert await sm.pending("Hang") == {"length": 0, "pending": 0, "delayed": 0}


async def test_poison_message_is_dead_lettered_after_the_delivery_limit(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    env = {"EXO_TEST_NODES": "Poison", "EXO_TEST_VISIBILITY": "0.5", "EXO_TEST_MAX_DELIVERIES": "3"}
    good = await sm.enqueue_many("Poison", [{"kill": False}] * 10)
    poison = await sm.enqueue("Poison", {"kill": True})
    good += await sm.enqueue_many("Poison", [{"kill": False}] * 10)
    deaths = 0
    worker = start_worker(redis_url, namespace, **env)
    try:
        while not await sm.dead_letters():
            try:
                code = await _exit_code(worker, 0.5)
            except TimeoutError:
                continue
            assert code == -9
            deaths += 1
            assert deaths <= 3, "the poison message should be dead-lettered by now"
            worker = start_worker(redis_url, namespace, **env)  # a supervisor restarts it
        results = await sm.wait_for_states("Poison", good, timeout=20)
        assert worker.poll() is None, "the last worker must survive"
    finally:
        stop_processes([worker])
    assert deaths == 3  # delivered 3 times, each killed a worker; the 4th refused it
    assert {r.status for r in results.values()} == {"SUCCEEDED"}
    [dead] = await sm.dead_letters()
    assert dead.state_id == poison and "poison message" in dead.error
    assert "delivered 3 times" in dead.error and dead.deliveries == 4
