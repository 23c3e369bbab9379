"""Settle planning alone, without Redis: W2's batches (A -> B -> C, 100 states per batch,
a third of each node) planned and encoded many times, CPU per state. For A/B of planning
changes between two trees without the noise of a whole drain (run it from each tree's
root, interleaved):

    .venv/bin/python -m benchmarks.planbench [--batches 2000] [--records full|off]

Prints µs per state for `plan_settle` and for `plan.encode()` (the msgpack of the plan
that the settle call sends), the best of `--rounds` rounds (the least disturbed)."""

from __future__ import annotations

import argparse
import time

from exospherehost.broker.codec import Envelope, encode
from exospherehost.broker.keys import Keys
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.models import GraphNodeModel
from exospherehost.runtime.outcomes import Completed, Job
from exospherehost.runtime.settle import SettleConfig, plan_settle

NS = "bench-plan"


def chain() -> CompiledGraph:
    def node(name: str, ident: str, x: object, nxt: str | None) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=name,
            namespace=NS,
            identifier=ident,
            inputs={"x": x},
            next_nodes=[nxt] if nxt else None,
        )

    nodes = [
        node("A", "a", 0, "b"),
        node("B", "b", "${{ a.outputs.x }}", "c"),
        node("C", "c", "${{ b.outputs.x }}", None),
    ]
    return CompiledGraph.build("chain", 1, nodes)


def batch(keys: Keys, size: int, base: int) -> list[Completed]:
    """`size` outcomes, the nodes in turn, as a W2 worker settles them mid-drain."""
    out: list[Completed] = []
    for i in range(size):
        ident, node = (("a", "A"), ("b", "B"), ("c", "C"))[i % 3]
        x = base + i
        ctx = {} if ident == "a" else {"a": {"x": x}} if ident == "b" else {"b": {"x": x}}
        env = Envelope(f"s{x}", {"x": x}, f"run{x}", "chain", 1, ident, ctx)
        entry = f"{1_700_000_000_000 + x}-0".encode()
        job = Job(node, keys.queue(node), entry, {b"_exo": encode(env)}, env)
        job.started = time.time()
        out.append(Completed(job, [{"x": x + 1}], False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", default="full")
    a = ap.parse_args()
    keys = Keys(NS)
    cfg = SettleConfig(
        keys=keys, graphs={("chain", 1): chain()}, worker="w:host:1:abc", state_records=a.records
    )
    batches = [batch(keys, a.size, i * a.size) for i in range(50)]
    best_plan = best_enc = float("inf")
    for _ in range(a.rounds):
        t_plan = t_enc = 0.0
        for k in range(a.batches):
            b = batches[k % len(batches)]
            t0 = time.perf_counter()
            plan = plan_settle(b, cfg)
            t1 = time.perf_counter()
            plan.encode()
            t2 = time.perf_counter()
            t_plan += t1 - t0
            t_enc += t2 - t1
        states = a.batches * a.size
        best_plan = min(best_plan, t_plan / states * 1e6)
        best_enc = min(best_enc, t_enc / states * 1e6)
    size = len(plan_settle(batches[0], cfg).encode())
    print(
        f"plan_settle {best_plan:.2f} us/state, encode {best_enc:.2f} us/state, "
        f"plan {size / a.size:.0f} B/state (records {a.records})"
    )


if __name__ == "__main__":
    main()
