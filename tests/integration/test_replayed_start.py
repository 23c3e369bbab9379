"""Issue 18 item 2: starting runs is idempotent. When the reply to a trigger's write is lost
(the writes ran; the connection dropped before the answer), the client's retry sends the
same run ids again: each run must still start once, with one root state."""

from __future__ import annotations

import pytest

from exospherehost import Runtime, StateManager
from exospherehost.broker.keys import Keys
from tests.faults.proxy import fault_proxy
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import running, squares_graph

pytestmark = pytest.mark.redis


async def test_a_lost_trigger_reply_starts_each_run_once(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    registrar = Runtime(
        namespace=namespace, name="reg", nodes=[Split, Square, Label], redis_url=redis_url
    )
    async with running(registrar):
        await sm.upsert_graph("g", squares_graph(namespace), validation_timeout=10)
    # No worker now: the root states stay on the stream, where they can be counted.
    keys = Keys(namespace)
    async with fault_proxy(redis_url) as proxy:
        through = StateManager(namespace, redis_url=proxy.url)
        try:
            proxy.lose_reply_to = keys.run("").encode()  # the first write of a run
            runs = await through.trigger_many("g", [{} for _ in range(10)])
        finally:
            await through.close()
    assert proxy.lost == 1, "the proxy never saw the run writes: the test tests nothing"
    assert len(set(runs)) == 10
    assert await sm.client.xlen(keys.queue("Split")) == 10, "a replayed start added root states"
    for run in runs:
        assert await sm.client.exists(keys.run(run)) == 1
