"""Summarise py-spy raw (collapsed-stack) profiles: top functions by self and total time.

    .venv/bin/python -m benchmarks.profile_summary /tmp/prof/w1-*.txt [--top 25]

Each input line is ``frame;frame;...;leaf COUNT`` (``py-spy record --format raw``); a
frame is ``function (file:line)``. With ``--function`` the line is the function's first
line, so one function is one frame. Self time is charged to the leaf frame: the Python
function that was running, including time spent inside C code it called (hiredis,
msgpack, pydantic-core, the Lua round trip's socket calls)."""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

GROUPS = (
    ("exospherehost/", "exospherehost"),
    ("broker/", "broker"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio"),
    ("pydantic", "pydantic"),
    ("msgpack", "msgpack"),
)


def frame_key(frame: str) -> str:
    """``function (file)`` without the line number."""
    m = _FRAME.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def group_of(frame: str) -> str:
    for needle, name in GROUPS:
        if needle in frame:
            return name
    return "other"


PHASES: tuple[tuple[str, str], ...] = (
    # (frame prefix, phase); a sample goes to the first match walking from its leaf up.
    ("Broker.read (", "read: XREADGROUP + reply parsing (redis-py)"),
    ("decode (broker/codec.py)", "read: envelope decode (msgpack)"),
    ("Worker._accept (", "read: accept bookkeeping"),
    ("Worker._reader (", "read: other"),
    ("NodeSpec.parse_inputs (", "execute: Inputs validation (pydantic)"),
    ("NodeSpec.outputs (", "execute: Outputs model_dump"),
    ("execute (exospherehost/runtime/execution.py)", "execute: Secrets validation + other"),
    ("Queue.get (", "execute: queue hand-off (asyncio)"),
    ("Worker._executor (", "execute: other"),
    ("plan_settle (", "settle: planning (Python)"),
    ("Broker.settle (", "settle: plan msgpack + EVALSHA call (redis-py)"),
    ("Worker._settler (", "settle: bookkeeping after the call"),
    ("promote (exospherehost/runtime/upkeep/", "background tasks"),
    ("Reclaimer.run (", "background tasks"),
    ("heartbeat (exospherehost/runtime/upkeep/", "background tasks"),
)
"""Phases of the Runtime's worker loop (exospherehost/runtime/worker.py) for `--phases`."""


_NODE_BODY = re.compile(r"^\w+\.execute \((?!exospherehost/)")
"""A node's own `execute` (called by exospherehost/runtime/execution.py), e.g.
`Noop.execute (...)`."""


def phase_of(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        if _NODE_BODY.match(frame):
            return "execute: node body (builds Outputs)"
        for prefix, phase in PHASES:
            if frame.startswith(prefix):
                return phase
    return "event loop: select, callbacks, socket I/O"


def load(paths: Iterable[Path]) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for path in paths:
        for line in path.read_text().splitlines():
            m = _LINE.match(line)
            if m:
                stacks.append(([frame_key(f) for f in m["stack"].split(";")], int(m["count"])))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int, phases: bool = False) -> str:
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples"
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        groups[group_of(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
    out = [f"{total} samples (CPU-active only; idle waits are not sampled)", ""]
    out += ["| self % | function (file) |", "|---:|---|"]
    out += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in own.most_common(top)]
    out += ["", "| total % | function (file) |", "|---:|---|"]
    out += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in incl.most_common(top)]
    out += ["", "| self % | code |", "|---:|---|"]
    out += [f"| {100 * c / total:.1f} | {g} |" for g, c in groups.most_common()]
    if phases:
        by_phase: Counter[str] = Counter()
        for frames, count in stacks:
            by_phase[phase_of(frames)] += count
        out += ["", "| % | worker phase |", "|---:|---|"]
        out += [f"| {100 * c / total:.1f} | {ph} |" for ph, c in sorted(by_phase.items())]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_summary")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--phases", action="store_true", help="add a Runtime worker-phase table")
    args = p.parse_args(argv)
    print(summarise(load(args.files), args.top, args.phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
