"""A Runtime process for the reclaim tests: python -m tests.integration.apps.reclaim_main URL NS.

Serves `Nap` only. Optional environment: EXO_TEST_VISIBILITY and EXO_TEST_GRACE (seconds)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from pydantic import BaseModel

from exospherehost import BaseNode, Runtime


class Nap(BaseNode):
    """Sleeps (awaiting: the event loop goes on) for `seconds`; records the process."""

    class Inputs(BaseModel):
        seconds: float
        i: int = 0

    class Outputs(BaseModel):
        i: int
        pid: int

    async def execute(self) -> Outputs:
        await asyncio.sleep(self.inputs.seconds)
        return self.Outputs(i=self.inputs.i, pid=os.getpid())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    url, namespace = sys.argv[1], sys.argv[2]
    Runtime(
        namespace=namespace,
        name="reclaim",
        nodes=[Nap],
        redis_url=url,
        visibility_timeout=float(os.environ.get("EXO_TEST_VISIBILITY", "30")),
        grace_period=float(os.environ.get("EXO_TEST_GRACE", "30")),
    ).start()
    print("runtime stopped cleanly", flush=True)
