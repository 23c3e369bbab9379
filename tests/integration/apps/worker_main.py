"""A Runtime process for e2e tests: python -m tests.integration.apps.worker_main URL NS."""

from __future__ import annotations

import logging
import sys

from exospherehost import Runtime
from tests.integration.apps.nodes import ALL

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, namespace = sys.argv[1], sys.argv[2]
    Runtime(namespace=namespace, name="e2e", nodes=ALL, redis_url=url).start()
    print("runtime stopped cleanly", flush=True)
