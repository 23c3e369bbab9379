"""Issue 18 item 1: connection resets (what load balancers and NAT idle timeouts do) are
ridden out on both event loops. Under uvloop a reset idle connection raised
`RuntimeError: unable to perform operation on <TCPTransport closed=True>`, which killed the
settle task (its states then stayed claimed by the heartbeat) or the whole Runtime."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.exceptions import ResponseError

from exospherehost import StateManager
from tests.faults.proxy import fault_proxy
from tests.integration.helpers import ROOT, start_worker, stop_processes

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def _consumers(sm: StateManager, node: str) -> int:
    try:
        groups = await sm.client.xinfo_groups(sm.keys.queue(node))
    except ResponseError:  # no stream yet
        return 0
    return int(groups[0]["consumers"]) if groups else 0


async def _until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("hard", [True, False], ids=["reset", "close"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_resets_of_idle_connections_are_ridden_out(
    loop: str, hard: bool, redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with fault_proxy(redis_url) as proxy:
        env = {"EXO_TEST_NODES": "SampleNode", "EXO_TEST_GRACE": "5"}
        if extra := os.environ.get("EXO_TEST_WORKER_PATH"):  # e.g. another redis-py
            env["PYTHONPATH"] = f"{extra}:{ROOT}"
        if loop == "asyncio":
            env["EXO_TEST_LOOP"] = "asyncio"
        worker = start_worker(proxy.url, namespace, **env)
        try:
            await _until(lambda: _consumers(sm, "SampleNode"), "the worker joined its group")
            done = 0
            for wave in range(4):
                ids = await sm.enqueue_many(
                    "SampleNode", [{"name": f"w{wave}-{i}", "data": {}} for i in range(50)]
                )
                results = await sm.wait_for_states("SampleNode", ids, timeout=30)
                assert {r.status for r in results.values()} == {"SUCCEEDED"}
                done += len(results)
                # Let every connection go idle (the reader blocks, the settle lanes
                # wait), then reset them all.
                await asyncio.sleep(0.3)
                proxy.reset_all(hard)
            assert worker.poll() is None, "the worker died of a reset"
            ids = await sm.enqueue_many("SampleNode", [{"name": "last", "data": {}}])
            await sm.wait_for_states("SampleNode", ids, timeout=30)
            pending = await sm.pending("SampleNode")
            assert pending["pending"] == 0 and pending["length"] == 0, pending
        finally:
            # In a thread: the proxy runs on this loop and the stopping worker needs it.
            (out,) = await asyncio.to_thread(stop_processes, [worker])
        assert worker.returncode == 0, out
        assert "Task exception was never retrieved" not in out, out
        assert "runtime stopped cleanly" in out, out
    assert done == 200
