"""Batch-throughput benchmarks of the SDK on Redis Streams.

    .venv/bin/python -m benchmarks.bench [--workload LIST] [--n N] [--processes W[,W...]]
        [--repeat R] [--peers] [--redis-url URL] [--py-spy DIR]

Workloads (see benchmarks/README.md for the exact definitions):

- ``w1``: drain a backlog of N no-op states with W Runtime processes (states/s);
- ``w2``: drain N triggered runs of a 3-stage graph A -> B -> C (runs/s; each run is
  three states, so states/s is three times that);
- ``w3``: drain N triggered runs that each fan out to 100 branches and unite
  (runs/s; each run is 102 states);
- ``enqueue``: ``StateManager.enqueue_many`` of N states (states/s);
- ``latency``: end-to-end p50/p90/p99/max of single states enqueued one at a time at a
  steady 1,000/s, seen on the output stream by a blocking follower;
- ``memory``: Redis used_memory before and after 1,000,000 states went through W1.
- ``w4``: slow nodes (100 ms, 10/1,000 ms mixed, 1 s) and worker processes joining late:
  makespan against the ideal and the states each worker ran (benchmarks/fairness.py;
  ``--processes`` gives P, ``--w4-scenarios`` picks rows, ``--w4-prefetch`` compares
  read-ahead settings; ``--peers`` runs it on taskiq-redis and dramatiq too).

``all`` is enqueue,w1,w2,w3. ``--peers`` also runs w1/w2 on taskiq-redis and dramatiq
(the `peers` extra: pip install -e '.[peers]') in the same invocation, interleaved with ours.

Unless ``--redis-url`` is given a private redis-server is started (and stopped) for the
invocation; with ``--cluster`` a private 3-master Redis Cluster instead. ``--lanes K[,K...]``
gives each w1/w2 namespace K lanes (rows per K, interleaved), and every w1/w2 row reports
each master's share of the Redis commands. Every measurement uses a fresh namespace and
deletes its keys afterwards; nothing else on the server is touched (no FLUSHALL, ever).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from benchmarks import peers as peer_mod
from benchmarks.harness import Ctx, RawRedis, log
from benchmarks.report import (
    log_result,
    machine_info,
    markdown,
    peer_versions,
    source_fingerprint,
    summarise,
)
from benchmarks.workloads import ALL, DEFAULT_N, TABLES, WORKLOADS
from exospherehost.testing.cluster import PrivateCluster
from exospherehost.testing.server import PrivateServer

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _processes(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--processes takes positive integers, e.g. 1 or 1,2")
    return values


def _lanes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError("--lanes takes lane counts from 1 to 256, e.g. 1 or 1,3")
    return values


SCALING = ("w1", "w2")
"""The workloads --cluster and --lanes apply to."""


def _prefetches(text: str) -> list[int | None]:
    out: list[int | None] = []
    for v in (v.strip() for v in text.split(",") if v.strip()):
        if v == "adaptive":
            out.append(None)
        elif v.isdigit():
            out.append(int(v))
        else:
            raise argparse.ArgumentTypeError(f"--w4-prefetch takes adaptive or ints, got {v!r}")
    return out or [None]


def _workloads(text: str) -> list[str]:
    names: list[str] = []
    for name in (v.strip() for v in text.split(",") if v.strip()):
        if name == "all":
            names += [n for n in ALL if n not in names]
        elif name in WORKLOADS or name in TABLES:
            if name not in names:
                names.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown workload {name!r}; choose from {', '.join([*WORKLOADS, *TABLES, 'all'])}"
            )
    if not names:
        raise argparse.ArgumentTypeError("--workload is empty")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--workload",
        type=_workloads,
        default=list(ALL),
        help=f"comma-separated: {', '.join([*WORKLOADS, *TABLES])}, all (= {','.join(ALL)}; "
        "default)",
    )
    p.add_argument(
        "--w4-scenarios",
        type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
        default=None,
        help="w4: rows to run (fixed, mixed, mixed-nodes, mixed-stagger, slow-stagger, wide; "
        "default all)",
    )
    p.add_argument(
        "--w4-prefetch",
        type=_prefetches,
        default=[None],
        help="w4: Runtime(prefetch=...) settings to compare, e.g. adaptive,400 (400 = the "
        "fixed 4 x batch_size read-ahead of before; default adaptive)",
    )
    p.add_argument("--n", type=int, help=f"items per measurement (default {DEFAULT_N})")
    p.add_argument(
        "--processes", type=_processes, default=[1], help="worker processes, e.g. 1 or 1,2"
    )
    p.add_argument("--repeat", type=int, help="repeats per row (default 3; memory: 1)")
    p.add_argument("--redis-url", help="use this server instead of a private one")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="start a private 3-master Redis Cluster instead of a single server (w1, w2; "
        "with --redis-url: the URL is a node of a cluster)",
    )
    p.add_argument("--masters", type=int, default=3, help="--cluster: masters to start (default 3)")
    p.add_argument(
        "--lanes",
        type=_lanes,
        default=[1],
        help="w1/w2: the namespace's lane count before the workload, or a list like 1,3 "
        "(rows interleaved; default 1). w1's states, enqueued without a graph, stay on lane 0",
    )
    p.add_argument("--batch-size", type=int, default=100, help="Runtime(batch_size=...)")
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the workers' event loop (uvloop: what Runtime.start() uses when the `fast` "
        "extra is installed)",
    )
    p.add_argument(
        "--untuned-gc",
        action="store_true",
        help="workers with Runtime(tune_gc=False): CPython's default collector settings",
    )
    p.add_argument(
        "--state-records",
        choices=("full", "off"),
        default="full",
        help="workers with Runtime(state_records=...): 'off' writes no per-state records",
    )
    p.add_argument("--timeout", type=float, default=90.0, help="per measurement, seconds")
    p.add_argument("--branches", type=int, default=100, help="w3: fan-out per run")
    p.add_argument("--rate", type=float, default=1000.0, help="latency: offered states/s")
    p.add_argument(
        "--warmup", type=float, default=0.5, help="latency: seconds of load before measuring"
    )
    p.add_argument(
        "--output-maxlen",
        type=int,
        default=100_000,
        help="memory: the workers' Runtime(output_maxlen=...) (default: the Runtime's)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run w1/w2 on taskiq-redis and dramatiq (the `peers` extra)",
    )
    p.add_argument(
        "--peer-repeat",
        type=int,
        default=1,
        help="repeats of each peer row (default 1: a peer run takes 5-20 s)",
    )
    p.add_argument(
        "--dramatiq-threads", type=int, default=8, help="peers: dramatiq --threads (default 8)"
    )
    p.add_argument("--py-spy", type=Path, help="record a py-spy raw profile per worker here")
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--py-spy-lines",
        action="store_true",
        help="keep line numbers in py-spy profiles (default: aggregate by function)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement wait up to S seconds for other processes to go idle",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        p.error("--n must be positive")
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be positive")
    if args.branches < 1 or args.rate <= 0 or args.warmup < 0 or args.output_maxlen < 1:
        p.error("--branches, --rate and --output-maxlen must be positive")
    if args.peer_repeat < 1 or args.dramatiq_threads < 1:
        p.error("--peer-repeat and --dramatiq-threads must be positive")
    if args.masters < 1:
        p.error("--masters must be positive")
    scaled = args.cluster or args.lanes != [1]
    if scaled and [w for w in args.workload if w not in SCALING]:
        p.error("--cluster and --lanes apply to the w1 and w2 workloads only")
    if scaled and args.peers:
        p.error("--peers does not run with --cluster or --lanes")
    return args


async def _masters(client: RedisCluster) -> list[RawRedis]:
    """One plain client per master of the cluster `client` is connected to."""
    await client.initialize()
    return [
        aioredis.Redis(host=node.host, port=int(node.port), decode_responses=False)
        for node in sorted(client.get_primaries(), key=lambda n: (n.host, n.port))
    ]


async def run(args: argparse.Namespace, url: str, external: bool, kind: str) -> dict[str, Any]:
    client: RawRedis
    nodes: list[RawRedis] = []
    if args.cluster:
        client = RedisCluster.from_url(url, decode_responses=False)
        nodes = await _masters(client)
    else:
        client = aioredis.Redis.from_url(url, decode_responses=False)
    source_at_start = source_fingerprint()
    try:
        info = await (nodes[0] if nodes else client).info("server")
        # Cache the SDK's Lua scripts in the server (every master of a cluster) as a
        # long-running deployment has them, so no measurement pays the one-off NOSCRIPT ->
        # EVAL fallback. (Harmless on a shared server: SCRIPT LOAD only adds to the cache.)
        for script in resources.files("exospherehost.broker").joinpath("lua").iterdir():
            if script.name.endswith(".lua"):
                for node in nodes or [client]:
                    await node.script_load(script.read_text())
        ctx = Ctx(
            url=url,
            client=client,
            batch_size=args.batch_size,
            timeout=args.timeout,
            py_spy=args.py_spy,
            py_spy_rate=args.py_spy_rate,
            external=external,
            quiet_s=args.wait_quiet,
            py_spy_lines=args.py_spy_lines,
            branches=args.branches,
            rate=args.rate,
            warmup_s=args.warmup,
            output_maxlen=args.output_maxlen,
            dramatiq_threads=args.dramatiq_threads,
            loop=args.loop,
            untuned_gc=args.untuned_gc,
            state_records=args.state_records,
            cluster=args.cluster,
            nodes=nodes,
        )
        peers: list[str] = []
        unavailable: dict[str, str] = {}
        if args.peers:
            for system in peer_mod.PEERS:
                why = peer_mod.available(system)
                if why is None:
                    peers.append(system)
                else:
                    unavailable[system] = why
                    log(f"peer {system} skipped: {why}")
        rows: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []  # measurements that raised
        w4_rows: list[dict[str, Any]] = []
        for name in args.workload:
            if name == "w4":
                from benchmarks import w4

                w4_rows += await w4.w4(
                    ctx, args.processes, peers, args.w4_prefetch, args.w4_scenarios
                )
                continue
            n = args.n or DEFAULT_N[name]
            repeat = args.repeat or (1 if name == "memory" else 3)
            systems = ["exospherehost", *(peers if name in ("w1", "w2") else [])]
            counts = [1] if name == "enqueue" else args.processes
            lane_counts = args.lanes if name in SCALING else [1]
            runs: dict[tuple[int, int, str], list[dict[str, Any]]] = {
                (procs, k, system): []
                for procs in counts
                for k in lane_counts
                for system in systems
            }
            rounds = max(repeat, args.peer_repeat if peers and len(systems) > 1 else 0)
            for rep in range(rounds):
                # Interleaved (1 process: ours, taskiq, dramatiq; 2 processes: ours, ...;
                # then the next repeat): drift in the machine's speed then hits every
                # row alike, which matters for the ratios between rows.
                for procs in counts:
                    for k in lane_counts:
                        for system in systems:
                            if rep >= (repeat if system == "exospherehost" else args.peer_repeat):
                                continue
                            label = f"{name}-p{procs}-r{rep}"
                            if len(lane_counts) > 1 or k != 1:
                                label = f"{name}-p{procs}-k{k}-r{rep}"
                            try:
                                if system == "exospherehost":
                                    ctx.lanes = k
                                    result = await WORKLOADS[name](ctx, n, procs, label)
                                else:
                                    label = f"{system}-{label}"
                                    result = await peer_mod.peer_run(
                                        ctx, system, name, n, procs, label
                                    )
                            except Exception as exc:  # recorded; the other rows still run
                                log(f"{label}: FAILED: {exc!r}")
                                failures.append({"label": label, "error": repr(exc)})
                                continue
                            log_result(label, name, result)
                            runs[(procs, k, system)].append(result)
            rows += [
                summarise(name, procs, runs[(procs, k, s)], s)
                for procs in counts
                for k in lane_counts
                for s in systems
                if runs[(procs, k, s)]
            ]
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]),
            "machine": machine_info(str(info.get("redis_version", "?")), kind),
            "source": {
                **source_at_start,
                # Others may edit the tree while this runs: then the numbers mix versions.
                "changed_during_run": source_fingerprint() != source_at_start,
            },
            "config": {
                "batch_size": args.batch_size,
                "loop": args.loop,
                "untuned_gc": args.untuned_gc,
                "state_records": args.state_records,
                "repeat": args.repeat,
                "external_redis": external,
                "cluster_masters": len(nodes) if args.cluster else None,
                "lanes": args.lanes,
                "wait_quiet_s": args.wait_quiet,
                "branches": args.branches,
                "rate": args.rate,
                "output_maxlen": args.output_maxlen,
                "peers": peers,
                "peer_repeat": args.peer_repeat,
                "dramatiq_threads": args.dramatiq_threads,
                "peers_unavailable": unavailable,
                "peer_versions": peer_versions(peers),
            },
            "results": rows,
            "failures": failures,
            "w4": w4_rows,
        }
    finally:
        for node in nodes:
            await node.aclose()
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    server: PrivateServer | PrivateCluster | None = None
    if args.redis_url:
        url, kind = args.redis_url, "external"
    elif args.cluster:
        server = PrivateCluster(masters=args.masters)
        infos = server.start()
        url, kind = server.url, f"cluster of {len(infos)} masters ({infos[0].kind})"
        log(f"private {kind} at {', '.join(i.url for i in infos)}")
    else:
        server = PrivateServer()
        started = server.start()
        url, kind = started.url, started.kind
        log(f"private server {kind} at {url}")
    try:
        report = asyncio.run(run(args, url, server is None, kind))
    finally:
        if server is not None:
            server.stop()
    if report["results"]:
        print(markdown(report["results"], scaling=args.cluster or args.lanes != [1]))
    if report["w4"]:
        from benchmarks.w4 import markdown as w4_markdown

        print(w4_markdown(report["w4"]))
    if report["source"]["changed_during_run"]:
        log("warning: the SDK sources changed during the run; results mix versions")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.output}")
    if report["failures"]:
        log(f"{len(report['failures'])} measurement(s) failed: see 'failures' in the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
