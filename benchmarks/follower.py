"""Latency follower: `python -m benchmarks.follower --url URL --stream KEY --ready-key K
--count N`, started by the harness's `latency` workload.

It XREADs `--stream` with BLOCK from the beginning and stamps every entry with
``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes) the moment the read
returns it, i.e. when the entry became visible to a blocked reader. It runs in its own
process so the producer's event loop can never delay a stamp. It signals readiness by
RPUSH to ``--ready-key`` after connecting, stops once it has seen ``--count`` entries (or
after ``--timeout`` seconds) and prints one JSON object: ``seen`` {state: stamp},
``statuses`` {status: count}, ``reads`` (XREAD calls that returned entries)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.follower", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--ready-key", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    # Untyped, as bench.RawRedis: redis-py types replies as bytes | str.
    client: Any = redis.Redis.from_url(args.url)
    client.ping()
    client.rpush(args.ready_key, os.getpid())
    seen: dict[str, float] = {}
    statuses: Counter[str] = Counter()
    reads = 0
    last: bytes | str = "0-0"
    clock = time.monotonic
    deadline = clock() + args.timeout
    while len(seen) < args.count and clock() < deadline:
        reply = client.xread({args.stream: last}, count=1000, block=1000)
        now = clock()
        if not reply:
            continue
        reads += 1
        for _, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                seen[fields[b"state"].decode()] = now
                statuses[fields[b"status"].decode()] += 1
    client.close()
    print(json.dumps({"seen": seen, "statuses": dict(statuses), "reads": reads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
