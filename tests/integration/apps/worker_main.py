"""A Runtime process for e2e tests: python -m tests.integration.apps.worker_main URL NS.

Optional environment: EXO_TEST_VISIBILITY (seconds), EXO_TEST_MAX_DELIVERIES,
EXO_TEST_NODES (comma-separated node names; default all), EXO_TEST_GRACE (seconds)."""

from __future__ import annotations

import logging
import os
import sys

from exospherehost import Runtime
from tests.integration.apps.nodes import ALL

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, namespace = sys.argv[1], sys.argv[2]
    wanted = os.environ.get("EXO_TEST_NODES")
    nodes = [n for n in ALL if not wanted or n.__name__ in wanted.split(",")]
    Runtime(
        namespace=namespace,
        name="e2e",
        nodes=nodes,
        redis_url=url,
        visibility_timeout=float(os.environ.get("EXO_TEST_VISIBILITY", "30")),
        max_deliveries=int(os.environ.get("EXO_TEST_MAX_DELIVERIES", "5")),
        grace_period=float(os.environ.get("EXO_TEST_GRACE", "30")),
    ).start()
    print("runtime stopped cleanly", flush=True)
