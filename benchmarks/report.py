"""What a benchmark invocation reports: per-measurement log lines, the per-row summaries
(medians over repeats), the Markdown tables on stdout, and the machine, SDK source and
peer versions the JSON results record."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, log
from benchmarks.workloads import UNIT


def source_fingerprint() -> dict[str, str]:
    """sha256 of the SDK sources measured (the tree changes; numbers belong to a version)."""
    digest = hashlib.sha256()
    newest = 0.0
    # The SDK lives in subpackages (graph/, runtime/, client/ ...); exospherehost/broker is
    # a symlink to broker/, hashed once under its real path.
    sdk = [
        p for p in ROOT.glob("exospherehost/**/*.py") if p.relative_to(ROOT).parts[1] != "broker"
    ]
    for paths in (sdk, ROOT.glob("broker/*.py"), ROOT.glob("broker/lua/*.lua")):
        for path in sorted(paths):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
            newest = max(newest, path.stat().st_mtime)
    return {
        "sdk_sha256": digest.hexdigest()[:16],
        "sdk_newest_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(newest)),
    }


def machine_info(server_version: str, server_kind: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_version": server_version,
        "redis_server": server_kind,
    }


def _median_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Per-field medians of a dict-valued result field (e.g. latency_ms) over repeats."""
    fields = runs[0][key].keys()
    return {f: statistics.median(r[key][f] for r in runs) for f in fields}


def summarise(
    workload: str, processes: int, runs: list[dict[str, Any]], system: str = "exospherehost"
) -> dict[str, Any]:
    rates = [r["rate"] for r in runs]
    median = statistics.median(rates)
    row: dict[str, Any] = {
        "system": system,
        "workload": workload,
        "n": runs[0]["n"],
        "processes": processes if workload != "enqueue" else None,
        "unit": UNIT[workload],
        "median_rate": round(median, 1),
        "min_rate": min(rates),
        "max_rate": max(rates),
        "median_seconds": round(statistics.median(r["seconds"] for r in runs), 4),
    }
    for cpu in (
        "worker_cpu",
        "redis_cpu",
        "harness_cpu",
        "other_cpu",
        "steal_cpu",
        "worker_us_per_item",
        "redis_us_per_item",
        "worker_us_per_state",
        "redis_us_per_state",
    ):
        values = [r[cpu] for r in runs if cpu in r]
        if values:
            row[cpu] = statistics.median(values)
    if "lanes" in runs[0]:
        row["lanes"] = runs[0]["lanes"]
    if "masters" in runs[0]:
        # By rank, busiest master first: each repeat's fresh namespace (and its lanes)
        # lands on other masters, so "master 1" is not the same role twice.
        masters = [sorted(r["masters"], key=lambda m: -m["calls"]) for r in runs]
        row["masters"] = [
            {
                "rank": i + 1,
                **{
                    key: statistics.median(m[i][key] for m in masters)
                    for key in ("calls_share", "top_level_share", "cpu_share", "redis_cpu")
                },
            }
            for i in range(len(masters[0]))
        ]
    if workload == "w2":
        row["median_states_per_s"] = round(3 * median, 1)
        if "trigger_rate" in runs[0]:
            row["median_trigger_rate"] = statistics.median(r["trigger_rate"] for r in runs)
    if workload == "w3":
        row["branches"] = runs[0]["branches"]
        row["median_states_per_s"] = round((runs[0]["branches"] + 2) * median, 1)
    if workload == "latency":
        row["offered_rate"] = runs[0]["offered_rate"]
        for key in ("latency_ms", "probe_latency_ms", "producer_late_ms"):
            row[key] = _median_of(runs, key)
        row["worst_p99_ms"] = max(r["latency_ms"]["p99"] for r in runs)
    if workload == "memory":
        for key in ("delta", "ratio", "delta_no_output", "ratio_no_output", "enqueue_s"):
            row[key] = statistics.median(r[key] for r in runs)
        for key in ("before", "peak", "after", "after_no_output"):
            row[key] = _median_of(runs, key)
        row["output_maxlen"] = runs[0]["output_maxlen"]
        row["output_stream_len"] = runs[0]["output_stream_len"]
    row["repeats"] = runs
    return row


def _other(r: dict[str, Any]) -> str:
    return f"{r['other_cpu'] + r.get('steal_cpu', 0):.2f}" if "other_cpu" in r else "-"


def _shares(row: dict[str, Any], key: str) -> str:
    masters = row.get("masters")
    if not masters:
        return "1.00"
    return " / ".join(f"{m[key]:.2f}" for m in masters)


def scaling_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of --cluster / --lanes rows: lanes, rates and each master's share of the
    Redis command calls (scripts' commands included) and of Redis CPU (medians by rank,
    busiest master first)."""
    out = [
        "| workload | N | lanes | procs | median | min | max | unit | worker CPU "
        "| redis CPU (all masters) | per-master share of commands, busiest first "
        "| per-master share of Redis CPU | per-master Redis CPU (cores) | other CPU |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|---:|"
    ]

    def num(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    for r in rows:
        if r["workload"] not in ("w1", "w2"):
            continue
        out.append(
            f"| {r['workload']} | {r['n']:,} | {r.get('lanes', 1)} | {r['processes']} "
            f"| {r['median_rate']:,.0f} | {r['min_rate']:,.0f} | {r['max_rate']:,.0f} "
            f"| {r['unit']} | {num(r, 'worker_cpu')} | {num(r, 'redis_cpu')} "
            f"| {_shares(r, 'calls_share')} | {_shares(r, 'cpu_share')} "
            f"| {_shares(r, 'redis_cpu') if r.get('masters') else num(r, 'redis_cpu')} "
            f"| {_other(r)} |"
        )
    out.append("")
    return "\n".join(out)


def markdown(rows: list[dict[str, Any]], scaling: bool = False) -> str:
    """Results tables. CPU columns are medians over the repeats: `worker CPU` / `redis CPU`
    in cores, `µs/item` CPU time per item, `other` what other processes (plus hypervisor
    steal) used meanwhile: a large value marks a disturbed measurement. `scaling` (the
    --cluster / --lanes rows) prints scaling_markdown's table as well."""

    def num(row: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        return format(row[key], fmt) if key in row else "-"

    out: list[str] = [scaling_markdown(rows)] if scaling else []
    throughput = [r for r in rows if r["workload"] not in ("latency", "memory")]
    if throughput:
        out.append(
            "| system | workload | N | procs | median | min | max | unit | ÷ 1 proc | median s "
            "| worker CPU | worker µs/item | redis CPU | redis µs/item | other CPU |\n"
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        single = {(r["system"], r["workload"]): r for r in throughput if r["processes"] == 1}
        for r in throughput:
            one = single.get((r["system"], r["workload"]))
            scale = "-"
            if one is not None and r["processes"] not in (None, 1):
                scale = f"{r['median_rate'] / one['median_rate']:.2f}x"
            procs = "-" if r["processes"] is None else str(r["processes"])
            unit = r["unit"]
            if "median_states_per_s" in r:
                unit += f" (= {r['median_states_per_s']:,.0f} states/s)"
            out.append(
                f"| {r['system']} | {r['workload']} | {r['n']:,} | {procs} "
                f"| {r['median_rate']:,.0f} | {r['min_rate']:,.0f} | {r['max_rate']:,.0f} "
                f"| {unit} | {scale} | {r['median_seconds']:.3f} | {num(r, 'worker_cpu')} "
                f"| {num(r, 'worker_us_per_item', '.1f')} | {num(r, 'redis_cpu')} "
                f"| {num(r, 'redis_us_per_item', '.1f')} | {_other(r)} |"
            )
        out.append("")
    peers = [s for s in dict.fromkeys(r["system"] for r in throughput) if s != "exospherehost"]
    ours = {
        (r["workload"], r["processes"]): r for r in throughput if r["system"] == "exospherehost"
    }
    if peers:
        head = "| workload | procs | exospherehost |"
        rule = "|---|---:|---:|"
        for p in peers:
            head += f" {p} | ours ÷ {p} |"
            rule += "---:|---:|"
        out += [head, rule]
        for key, mine in ours.items():
            theirs = {
                r["system"]: r
                for r in throughput
                if (r["workload"], r["processes"]) == key and r["system"] != "exospherehost"
            }
            if not theirs:
                continue
            line = f"| {key[0]} | {key[1]} | {mine['median_rate']:,.0f} {mine['unit']} |"
            for p in peers:
                if p in theirs:
                    ratio = mine["median_rate"] / theirs[p]["median_rate"]
                    line += f" {theirs[p]['median_rate']:,.0f} | {ratio:.1f}x |"
                else:
                    line += " - | - |"
            out.append(line)
        out.append("")
    lat = [r for r in rows if r["workload"] == "latency"]
    if lat:
        out.append(
            "| latency | procs | offered /s | achieved /s | p50 ms | p90 ms | p99 ms "
            "| p99.9 ms | max ms | worst p99 ms | probe p50 / p99 ms | worker CPU | other CPU |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        )
        for r in lat:
            ms, probe = r["latency_ms"], r["probe_latency_ms"]
            out.append(
                f"| {r['n']:,} states | {r['processes']} | {r['offered_rate']:,.0f} "
                f"| {r['median_rate']:,.0f} | {ms['p50']:.2f} | {ms['p90']:.2f} "
                f"| {ms['p99']:.2f} | {ms['p999']:.2f} | {ms['max']:.2f} "
                f"| {r['worst_p99_ms']:.2f} | {probe['p50']:.2f} / {probe['p99']:.2f} "
                f"| {num(r, 'worker_cpu')} | {_other(r)} |"
            )
        out.append("")
    mem = [r for r in rows if r["workload"] == "memory"]
    if mem:
        out.append(
            "| memory | procs | output_maxlen | before | peak (backlog) | after "
            "| delta | after ÷ before | after, output stream deleted | delta | after ÷ before "
            "| drain states/s |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )

        def mb(v: float) -> str:
            return f"{v / 1e6:,.2f} MB"

        for r in mem:
            out.append(
                f"| {r['n']:,} states | {r['processes']} | {r['output_maxlen']:,} "
                f"| {mb(r['before']['used_memory'])} | {mb(r['peak']['used_memory'])} "
                f"| {mb(r['after']['used_memory'])} | {mb(r['delta'])} | {r['ratio']:.3f}x "
                f"| {mb(r['after_no_output']['used_memory'])} | {mb(r['delta_no_output'])} "
                f"| {r['ratio_no_output']:.3f}x | {r['median_rate']:,.0f} |"
            )
        out.append("")
    return "\n".join(out)


def log_result(label: str, name: str, result: dict[str, Any]) -> None:
    noise = ""
    if "other_cpu" in result:
        noise = f" (other CPU {result['other_cpu']:.2f}, steal {result['steal_cpu']:.2f} cores)"
    what = f"{result['rate']:,.0f} {UNIT[name]} in {result['seconds']:.3f}s"
    if name == "latency":
        ms = result["latency_ms"]
        what = f"p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms, max {ms['max']:.2f} ms"
    elif name == "memory":
        what = (
            f"used_memory {result['before']['used_memory']:,} -> "
            f"{result['after']['used_memory']:,} (x{result['ratio']:.3f}), "
            f"{result['after_no_output']['used_memory']:,} without the output stream; " + what
        )
    log(f"{label}: {what}{noise}")


def peer_versions(peers: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("taskiq", "taskiq-redis", "dramatiq") if peers else ():
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out
