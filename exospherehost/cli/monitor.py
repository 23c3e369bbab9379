"""`exosphere status`: queue figures and throughput of every node stream."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import click
from redis.exceptions import NoPermissionError

from exospherehost.broker.client import RedisClient, typed_client
from exospherehost.broker.serverinfo import memory_view
from exospherehost.cli._common import Settings, age, namespace_option, pass_settings, run, table
from exospherehost.cli._common import to_json as _to_json
from exospherehost.client.statemanager import StateManager
from exospherehost.config import resolve

COLUMNS = (
    "NODE",
    "BACKLOG",
    "PENDING",
    "CONSUMERS",
    "LAG",
    "OLDEST",
    "DELAYED",
    "IN/S",
    "DONE/S",
    "NOTE",
)

NOT_SERVED = "no worker serves this"


class _Monitor:
    """Samples node streams; keeps the previous counters to turn them into rates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.managers: dict[str, StateManager] = {}
        # (namespace, node) -> (monotonic time, entries added, entries removed)
        self.prev: dict[tuple[str, str], tuple[float, int, int]] = {}
        self.clock = time.monotonic
        self._client: RedisClient | None = None  # for INFO memory (server-wide)
        self._closing = contextlib.AsyncExitStack()

    async def memory(self) -> dict[str, Any]:
        """Redis memory used vs maxmemory, and the policy (INFO memory)."""
        if self._client is None:
            client = resolve(self.settings.redis_url, self.settings.key).client()
            self._closing.push_async_callback(client.aclose)
            self._client = typed_client(client)
        return await memory_view(self._client)

    async def namespaces(self) -> list[str]:
        if self.settings.namespace:
            return [self.settings.namespace]
        return await StateManager.namespaces(self.settings.redis_url, self.settings.key)

    async def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ns in await self.namespaces():
            sm = self.managers.get(ns)
            if sm is None:
                sm = self.managers[ns] = StateManager(
                    ns, self.settings.redis_url, self.settings.key
                )
            try:
                stats = await sm.node_stats()
            except NoPermissionError:
                if self.settings.namespace:
                    raise  # asked for by name: say why it cannot be shown
                continue  # an ACL user that may not read it: show the others
            counters = await sm.broker.queues.counters(list(stats))
            now = self.clock()
            nodes = {}
            for node, s in stats.items():
                row = {
                    # Settled entries are deleted: the stream is backlog + pending.
                    "backlog": max(0, s["length"] - s["pending"]),
                    "pending": s["pending"],
                    "consumers": s["consumers"],  # live workers only
                    "consumers_total": s["consumers_total"],
                    "registered": s["registered"],
                    "lag": s["lag"],
                    "oldest_pending_ms": s["oldest_pending_ms"] if s["pending"] else None,
                    "delayed": s["delayed"],
                    "in_per_s": None,
                    "done_per_s": None,
                }
                row["note"] = _note(row)
                if node in counters:
                    c = counters[node]
                    row.update(self._rates((ns, node), now, c.added, c.length))
                nodes[node] = row
            dead = await sm.broker.dead_letters.count()
            out[ns] = {"dead_letters": dead, "nodes": nodes}
        return out

    def _rates(self, key: tuple[str, str], now: float, added: int, length: int) -> dict[str, Any]:
        # Queue streams are never trimmed, so added - length = entries deleted, and an
        # entry is deleted exactly when a settle removes it: that is the DONE counter.
        removed = added - length
        prev, self.prev[key] = self.prev.get(key), (now, added, removed)
        if prev is None or now <= prev[0] or added < prev[1] or removed < prev[2]:
            return {}  # first sample, or the stream was deleted and re-created
        dt = now - prev[0]
        return {
            "in_per_s": round((added - prev[1]) / dt, 1),
            "done_per_s": round((removed - prev[2]) / dt, 1),
        }

    async def close(self) -> None:
        for sm in self.managers.values():
            await sm.close()
        await self._closing.aclose()


def _note(row: dict[str, Any]) -> str | None:
    """What an operator must know about a stream: nobody serves it (no Runtime registered
    its node, or none is alive while states wait), or dead workers' consumers linger."""
    waiting = row["backlog"] + row["pending"] + row["delayed"] > 0
    if not row["registered"]:
        return f"{NOT_SERVED} (node not registered)"
    if row["consumers"] == 0 and waiting:
        return f"{NOT_SERVED} (no live worker)"
    gone = row["consumers_total"] - row["consumers"]
    if gone > 0:
        return f"not counted: {gone} consumer(s) of dead workers"
    return None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(snapshot: dict[str, Any], where: str, redis_memory: dict[str, Any] | None = None) -> str:
    tail = f"\n\n{redis_memory['summary']}" if redis_memory else ""
    if not snapshot:
        return f"no namespace on {where} has registered nodes{tail}"
    blocks = []
    for ns, data in snapshot.items():
        rows = [
            [
                node,
                r["backlog"],
                r["pending"],
                r["consumers"],
                r["lag"],
                age(r["oldest_pending_ms"]),
                r["delayed"],
                _rate(r["in_per_s"]),
                _rate(r["done_per_s"]),
                r["note"] or "",
            ]
            for node, r in data["nodes"].items()
        ]
        head = f"namespace {ns}   dead letters: {data['dead_letters']}"
        body = table(COLUMNS, rows) if rows else "(no node streams)"
        blocks.append(f"{head}\n{body}")
    return "\n\n".join(blocks) + tail


@click.command(short_help="Queue figures and throughput per node.")
@namespace_option
@click.option("-w", "--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between two samples; the rates are measured over it.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="With --watch: stop after this many refreshes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each sample as one line of JSON.")
@pass_settings
def status(
    settings: Settings, watch: bool, interval: float, count: int | None, as_json: bool
) -> None:
    """Queue figures of each node stream (registered nodes, and every other queue stream
    found in the namespace): of the namespace, or of every namespace with registered
    nodes when none is given.

    \b
    BACKLOG    states on the stream not yet handed to a worker
    PENDING    handed to a worker, not yet settled
    CONSUMERS  live workers in the node's consumer group (read lately, or their
               Runtime's worker record is fresh): a killed worker's consumer stops
               counting within a minute
    NOTE       "no worker serves this": a stream of a node no Runtime registered
               (e.g. a typo'd enqueue), or with states waiting and no live worker
    LAG        entries the group has yet to read, as Redis reports it
    OLDEST     time since the oldest pending state was handed out
    DELAYED    states waiting for their due time (retries, delays, requeues)
    IN/S       states added to the stream per second (new, successors, retries)
    DONE/S     states settled per second (succeeded, failed, retried, pruned,
               dead-lettered, or released on shutdown), by every worker together

    The rates are measured between two samples --interval apart, so a single status
    takes that long. Dead letters are counted per namespace, whose nodes share one
    dead-letter stream. The last line is Redis's memory used vs its maxmemory, and its
    maxmemory-policy (INFO memory; server-wide; on a Redis Cluster every master's).
    """
    tty = sys.stdout.isatty() and not as_json

    async def main() -> None:
        monitor = _Monitor(settings)
        try:
            await monitor.sample()  # the baseline of the first rates
            shown = 0
            while True:
                await asyncio.sleep(interval)
                snapshot = await monitor.sample()
                mem = await monitor.memory()
                if as_json:
                    sample = {"time": time.time(), "namespaces": snapshot, "redis_memory": mem}
                    click.echo(_to_json(sample, None))
                else:
                    if watch and tty:
                        click.clear()
                    if watch:
                        stamp = time.strftime("%H:%M:%S")
                        click.echo(f"{stamp}  every {interval:g}s (Ctrl-C to stop)\n")
                    click.echo(render(snapshot, settings.where(), mem))
                    if watch and not tty:
                        click.echo()
                shown += 1
                if not watch or (count is not None and shown >= count):
                    return
        finally:
            await monitor.close()

    with contextlib.suppress(KeyboardInterrupt):  # how --watch ends
        run(settings, main)
