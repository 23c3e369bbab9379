"""One worker process: `python -m examples.worker`.

Serves the example nodes from Redis (EXOSPHERE_REDIS_URL, and EXOSPHERE_API_KEY if the
server needs a password) in namespace EXOSPHERE_NAMESPACE (default "demo"), with
Prometheus metrics on EXOSPHERE_METRICS_PORT when it is set (docker-compose sets 9464).
Run as many
as the load needs: replicas share each node's consumer group. SIGTERM / SIGINT stop it
cleanly (in-flight states finish and are settled, the rest are released).
"""

from __future__ import annotations

import logging
import os

from examples.nodes import ALL
from exospherehost import Runtime

WORKER_NAME = "squares-worker"


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
    )
    namespace = os.environ.get("EXOSPHERE_NAMESPACE", "demo")
    # redis_url=None: Runtime reads EXOSPHERE_REDIS_URL and says so if it is unset.
    port = os.environ.get("EXOSPHERE_METRICS_PORT")
    Runtime(
        namespace=namespace,
        name=WORKER_NAME,
        nodes=ALL,
        metrics_port=int(port) if port else None,
    ).start()
    logging.getLogger("examples.worker").info("worker stopped cleanly")


if __name__ == "__main__":
    main()
