"""A discrete-event model of W4 (benchmarks/fairness.py) with the reader's real rule: P
workers, each with `C` executors, a FIFO job queue, the window of held states, and the
live `exospherehost.runtime.prefetch.Prefetch` deciding every read; a read or a settle
takes one fixed round trip, CPU costs nothing. It tells what a read-ahead rule can gain
apart from this VM's noise (what a real run loses beyond it is overhead, not order):

    .venv/bin/python -m benchmarks.w4model [--rtt 0.003] [--lead]

`--lead` models the reader's end prediction (Prefetch.due: a watched node's running
state counts as ended LEAD_S before its mean end); without it, states count as running
until they end. Prints the makespan of fixed, mixed and mixed-nodes at P = 1, 2, 4."""

from __future__ import annotations

import argparse
import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from benchmarks.fairness import Scenario
from exospherehost.runtime.prefetch import LEAD_S, Prefetch


@dataclass
class _Counters:
    executed: int = 0
    exec_seconds_sum: float = 0.0


@dataclass
class _Worker:
    pf: Prefetch
    stats: dict[str, _Counters]
    held: dict[str, int]
    queue: deque[tuple[str, float]] = field(default_factory=deque)
    running: dict[int, tuple[str, float]] = field(default_factory=dict)
    reading: bool = False
    dry: bool = False
    started: bool = False
    done: int = 0


def model(sc: Scenario, rtt: float, lead: bool, batch: int = 100) -> tuple[float, list[int]]:
    """(makespan, states per worker) of scenario `sc` in the model."""
    ms = sc.durations_ms()
    if sc.kind == "mixed-nodes":
        streams = {
            "Sleep": deque(m / 1000 for m in ms if m < 1000),
            "SleepLong": deque(m / 1000 for m in ms if m >= 1000),
        }
    else:
        streams = {"Sleep": deque(m / 1000 for m in ms)}
    nodes = list(streams)
    c = sc.concurrency
    events: list[tuple[float, int, str, tuple[Any, ...]]] = []
    seq = 0

    def push(t: float, kind: str, *args: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, args))

    workers = []
    for i in range(sc.processes):
        pf = Prefetch(nodes, c, batch, Prefetch.window(c, batch, None))
        workers.append(_Worker(pf, {n: _Counters() for n in nodes}, dict.fromkeys(nodes, 0)))
        push(i * sc.stagger_s, "start", i)
    end, job_ids = 0.0, 0

    def start_jobs(w: _Worker, i: int, t: float) -> None:
        nonlocal job_ids
        while w.queue and len(w.running) < c:
            node, d = w.queue.popleft()
            job_ids += 1
            w.running[job_ids] = (node, t)
            push(t + d, "finish", i, job_ids, node, d)

    def wake(w: _Worker, i: int, t: float) -> None:
        if w.reading or not w.started:
            return
        ending, due_at = 0, None
        if lead and w.running:
            watched = [r for r in w.running.values() if r[0] in w.pf.watched]
            ending, due_at = w.pf.due(watched, t)
        free = w.pf.limit - sum(w.held.values())
        reads = w.pf.plan(w.stats, free, len(w.running) - ending, len(w.queue), w.dry)
        if reads:
            w.reading = True
            push(t + rtt, "reply", i, reads, 0, 0)
        elif due_at is not None:
            push(max(due_at, t + rtt / 2), "wake", i)

    while events:
        t, _, kind, args = heapq.heappop(events)
        w = workers[args[0]]
        i = args[0]
        if kind == "start":
            w.started = True
            wake(w, i, t)
        elif kind == "wake":
            wake(w, i, t)
        elif kind == "reply":
            _, reads, k, got = args
            read_nodes, count = reads[k]
            for n in read_nodes:
                s = streams[n]
                for _ in range(min(count, len(s))):
                    w.queue.append((n, s.popleft()))
                    w.held[n] += 1
                    got += 1
            start_jobs(w, i, t)
            if k + 1 < len(reads):
                push(t + rtt, "reply", i, reads, k + 1, got)
                continue
            w.reading, w.dry = False, not got
            if got:
                wake(w, i, t)
            elif any(streams.values()):
                push(t + rtt, "wake", i)  # a blocking read that others' streams wake
        elif kind == "finish":
            _, job, node, d = args
            del w.running[job]
            st = w.stats[node]
            st.executed += 1
            st.exec_seconds_sum += d
            w.done += 1
            end = max(end, t)
            start_jobs(w, i, t)
            push(t + rtt, "settled", i, node)
            wake(w, i, t)  # the reader is woken as the settle is sent
        elif kind == "settled":
            w.held[args[1]] -= 1
            wake(w, i, t)
    return end, [w.done for w in workers]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt", type=float, default=0.003, help="one read or settle, seconds")
    ap.add_argument("--lead", action="store_true", help="model the end prediction")
    a = ap.parse_args()
    print(f"round trip {a.rtt * 1000:g} ms, end prediction {'on' if a.lead else 'off'}")
    for kind in ("fixed", "mixed", "mixed-nodes"):
        spans = [model(Scenario(kind, 2000, p, 32, 0.0), a.rtt, a.lead)[0] for p in (1, 2, 4)]
        print(f"{kind:>12}: P=1,2,4 " + " / ".join(f"{s:.2f} s" for s in spans))
    stagger = model(Scenario("mixed-stagger", 2000, 4, 32, 1.0), a.rtt, a.lead)[0]
    print(f"mixed-stagger: P=4 {stagger:.2f} s (LEAD_S {LEAD_S * 1000:g} ms)")


if __name__ == "__main__":
    main()
