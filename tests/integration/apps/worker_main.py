"""A Runtime process for e2e tests: python -m tests.integration.apps.worker_main URL NS.

Optional environment: EXO_TEST_VISIBILITY (seconds), EXO_TEST_MAX_DELIVERIES,
EXO_TEST_NODES (comma-separated node names; default all), EXO_TEST_GRACE (seconds),
EXO_TEST_LOOP=asyncio (asyncio's event loop; by default start() takes uvloop's when
installed)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from exospherehost import Runtime
from tests.integration.apps.nodes import ALL

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, namespace = sys.argv[1], sys.argv[2]
    wanted = os.environ.get("EXO_TEST_NODES")
    nodes = [n for n in ALL if not wanted or n.__name__ in wanted.split(",")]
    runtime = Runtime(
        namespace=namespace,
        name="e2e",
        nodes=nodes,
        redis_url=url,
        visibility_timeout=float(os.environ.get("EXO_TEST_VISIBILITY", "30")),
        max_deliveries=int(os.environ.get("EXO_TEST_MAX_DELIVERIES", "5")),
        grace_period=float(os.environ.get("EXO_TEST_GRACE", "30")),
    )
    if os.environ.get("EXO_TEST_LOOP") == "asyncio":

        async def serve() -> None:
            task = runtime.start()
            assert task is not None
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, runtime.stop)
            await task

        asyncio.run(serve())
    else:
        runtime.start()
    print("runtime stopped cleanly", flush=True)
