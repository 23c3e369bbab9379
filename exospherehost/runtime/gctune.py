"""Garbage-collector settings for a process that serves nodes at a high rate.

Every state allocates a few short-lived containers (the decoded envelope, the inputs and
outputs, the plan). With CPython's defaults the collector then runs a generation-0 pass
every 700 allocations and, every few thousand passes, walks the whole heap, including
every module, class and pydantic schema loaded at start, none of which will ever be
garbage. In the W1 drain that was about 2 us of the ~14 us each state cost. Freezing what
exists once the Runtime is set up takes it out of every later pass (gc.freeze, made for
this), and a larger generation-0 threshold makes passes rarer; reference counting still
frees acyclic garbage at once, so only cyclic garbage waits a little longer.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000


def tune_for_throughput(gen0: int = GEN0_THRESHOLD) -> None:
    """Collect the young generations, freeze the survivors, raise the generation-0
    threshold to `gen0` (never lowers it; leaves a disabled collector, threshold 0,
    alone). Process-wide: the Runtime calls it only in processes it owns (blocking
    `start()`) unless told to.

    Not a full collection: it walks the whole heap (~27 ms for a Runtime's imports, and
    found nothing the young ones had not), just before the first read, which delayed every
    worker's start (W4 fixed 100 ms P = 4: 89-90.5 % of ideal with it, 92.5-93.2 % without,
    benchmarks/README.md). What the old generation holds of start-up garbage stays frozen:
    a one-off, bounded by what was imported."""
    gc.collect(1)
    gc.freeze()
    first, second, third = gc.get_threshold()
    if 0 < first < gen0:
        gc.set_threshold(gen0, second, third)
