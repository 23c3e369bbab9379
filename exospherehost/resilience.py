"""One outage log per Runtime: every loop that talks to Redis reports failures and
recoveries here, so an outage is logged once (and its end once), not once per loop or
per attempt."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("exospherehost.worker")


class OutageLog:
    def __init__(self) -> None:
        self.since: float | None = None

    def down(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("Redis unavailable (%s); retrying with backoff", exc)

    def up(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1fs", time.monotonic() - self.since)
            self.since = None
