"""Failed executions in the worker's log: each once, with what happens next, rate-limited.

An operator's first question when a queue misbehaves is "what is failing, and why": the
dead letters answer it later, the log must answer it now (`docker compose logs -f worker`).
A failure storm must not flood the log either, so each node gets at most `burst` lines per
`window` seconds; what is held back is counted and said in the node's next line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exospherehost.runtime.outcomes import DeadLettered, Failed, Malformed, Outcome, Retry


@dataclass(slots=True)
class _Window:
    started: float
    lines: int = 0
    held_back: int = 0


class FailureLog:
    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = 10,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def report(self, settled: Iterable[Outcome]) -> None:
        """Log the failures among outcomes whose settle was applied, with what settle
        planning decided for them (`Failed.fate`)."""
        for outcome in settled:
            if isinstance(outcome, Failed):
                self._line(outcome.job.node, *self._failed(outcome))
            elif isinstance(outcome, Malformed):
                text = (
                    f"{outcome.node} entry {outcome.entry_id.decode(errors='replace')} "
                    f"is malformed and was dead-lettered: {outcome.reason}"
                )
                self._line(outcome.node, logging.ERROR, text)

    def _failed(self, failed: Failed) -> tuple[int, str]:
        env = failed.job.env
        where = f"{failed.job.node} state {env.state_id}"
        if env.run_id is not None:
            where += f" of run {env.run_id} (graph {env.graph!r}, identifier {env.identifier!r})"
        attempt = env.attempt + 1
        text = f"{where} failed on attempt {attempt}: {failed.error}"
        fate = failed.fate
        if isinstance(fate, Retry):
            return logging.WARNING, f"{text}; retrying (attempt {fate.attempt} of {fate.attempts})"
        if isinstance(fate, DeadLettered):
            return logging.ERROR, f"{text}; dead-lettered ({fate.value})"
        return logging.ERROR, text  # not planned: nothing to say about what comes next

    def _line(self, node: str, level: int, text: str) -> None:
        now = self.clock()
        window = self._windows.get(node)
        if window is None or now - window.started >= self.window_s:
            held = window.held_back if window is not None else 0
            window = self._windows[node] = _Window(now)
            if held:
                text += f" (and {held} more {node} failures not logged in the last window)"
        if window.lines >= self.burst:
            window.held_back += 1
            return
        window.lines += 1
        self.log.log(level, "%s", text)
