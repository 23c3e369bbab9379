"""W4's driver and table: every scenario of benchmarks/fairness.py on ours and on the
peers (benchmarks/peers_w4.py), interleaved scenario by scenario (`--workload w4`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks import peers_w4
from benchmarks.fairness import scenarios, w4_ours
from benchmarks.harness import Ctx, log


async def w4(
    ctx: Ctx,
    processes: Sequence[int],
    peers: Sequence[str],
    prefetch: Sequence[int | None],
    only: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Every W4 scenario on ours (once per `prefetch` setting) and on each peer that can
    express it, interleaved scenario by scenario."""
    rows: list[dict[str, Any]] = []
    for sc in scenarios(processes, only):
        for pf in prefetch:
            tag = "adaptive" if pf is None else f"prefetch{pf}"
            row = await w4_ours(ctx, sc, f"{sc.label}-{tag}", pf)
            row["system"] = "exospherehost"
            log(_line(row))
            rows.append(row)
        for system in peers:
            why = peers_w4.cannot(system, sc)
            if why:
                log(f"{system} {sc.label}: skipped ({why})")
                continue
            row = await peers_w4.run(ctx, system, sc, f"{system}-{sc.label}")
            row["system"] = system
            log(_line(row))
            rows.append(row)
    return rows


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['system']:>13} {r['scenario']:>13} P={r['processes']} C={r['concurrency']} "
        f"{r.get('prefetch', '')}: makespan {r['makespan_s']:.2f}s ideal {r['ideal_s']:.2f}s "
        f"({r['efficiency']:.0%}; fifo {r['fifo_efficiency']:.0%}) per worker {r['per_worker']}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| system | scenario | N | ms | P x C | stagger | makespan | ideal | efficiency "
        "| FIFO ideal (eff.) | states per worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        system = r["system"] + (
            f" (prefetch={r['prefetch']})" if r.get("prefetch") not in (None, "adaptive") else ""
        )
        out.append(
            f"| {system} | {r['scenario']} | {r['n']:,} | {r['shape']} | "
            f"{r['processes']} x {r['concurrency']} | {r['stagger_s']:g} s | "
            f"{r['makespan_s']:.2f} s | {r['ideal_s']:.2f} s | {r['efficiency']:.0%} | "
            f"{r['fifo_ideal_s']:.2f} s ({r['fifo_efficiency']:.0%}) | "
            f"{', '.join(str(c) for c in r['per_worker'])} |"
        )
    return "\n".join(out)
