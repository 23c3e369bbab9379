"""What a Runtime or client must know about the server before it trusts it with states.

A job queue cannot work on a Redis that evicts keys: with an `allkeys-*` policy Redis deletes
streams, run hashes and dead letters when memory runs short, and runs vanish without a trace
(issue 17: 175,740 of 199,500 runs gone under allkeys-lru, and no line said so). Only
`noeviction` keeps what was accepted; memory pressure then shows as refused writes, which
the SDK reports and retries. BullMQ makes the same check."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError

from exospherehost.broker.client import RedisClient
from exospherehost.broker.connection import cluster_of

SAFE_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class Memory:
    policy: str  # maxmemory-policy
    used: int  # bytes
    limit: int  # maxmemory in bytes; 0 = no limit

    @property
    def used_ratio(self) -> float | None:
        """used / maxmemory, or None without a limit."""
        return self.used / self.limit if self.limit else None

    def summary(self) -> str:
        """One line for people, e.g. `Redis memory: 12.3 MiB used of 30.0 MiB maxmemory
        (41%), policy noeviction`."""
        ratio = self.used_ratio
        limit = (
            f" of {human_bytes(self.limit)} maxmemory ({ratio:.0%})"
            if ratio is not None
            else " (no maxmemory: Redis may use all the host's memory)"
        )
        return f"Redis memory: {human_bytes(self.used)} used{limit}, policy {self.policy}"

    def as_dict(self) -> dict[str, object]:
        """For JSON (`exosphere status --json`, the dashboard's overview)."""
        return _json(self)


@dataclass(frozen=True, slots=True)
class ClusterMemory:
    """`Memory` of every master of a Redis Cluster (name "host:port" -> its INFO memory).
    maxmemory is per master, and a namespace's states sit on one master (its slot), so
    the master nearest its limit is the one that refuses writes first: `used_ratio` is
    the fullest master's, and the summary names each."""

    masters: tuple[tuple[str, Memory], ...]

    @property
    def used(self) -> int:
        return sum(m.used for _, m in self.masters)

    @property
    def limit(self) -> int:
        """The masters' maxmemory added up, 0 when any has none (no bound in all)."""
        limits = [m.limit for _, m in self.masters]
        return 0 if 0 in limits else sum(limits)

    @property
    def used_ratio(self) -> float | None:
        ratios = [r for _, m in self.masters if (r := m.used_ratio) is not None]
        return max(ratios) if ratios else None

    @property
    def policy(self) -> str:
        """The masters' maxmemory-policy, or each master's when they differ."""
        policies = {m.policy for _, m in self.masters}
        if len(policies) == 1:
            return policies.pop()
        return ", ".join(f"{m.policy} on {name}" for name, m in self.masters)

    def summary(self) -> str:
        """One line, e.g. `Redis memory (3 masters): 4.6 MiB used; 127.0.0.1:7101 1.5 MiB
        of 64.0 MiB maxmemory (2%), ...; policy noeviction`."""
        each = ", ".join(
            f"{name} {human_bytes(m.used)}"
            + (
                f" of {human_bytes(m.limit)} maxmemory ({ratio:.0%})"
                if (ratio := m.used_ratio) is not None
                else " (no maxmemory)"
            )
            for name, m in self.masters
        )
        return (
            f"Redis memory ({len(self.masters)} masters): {human_bytes(self.used)} used; "
            f"{each}; policy {self.policy}"
        )

    def as_dict(self) -> dict[str, object]:
        """As Memory.as_dict (the totals; used_ratio the fullest master's), and per master."""
        return {
            **_json(self),
            "masters": {
                name: {k: v for k, v in m.as_dict().items() if k != "summary"}
                for name, m in self.masters
            },
        }


def _json(m: Memory | ClusterMemory) -> dict[str, object]:
    """The fields both memory views give as JSON."""
    ratio = m.used_ratio
    return {
        "used_bytes": m.used,
        "maxmemory_bytes": m.limit,
        "used_ratio": None if ratio is None else round(ratio, 4),
        "policy": m.policy,
        "summary": m.summary(),
    }


def _memory(info: Mapping[str, Any]) -> Memory:
    return Memory(
        policy=str(info.get("maxmemory_policy", SAFE_POLICY)),
        used=int(info.get("used_memory", 0)),
        limit=int(info.get("maxmemory", 0)),
    )


def human_bytes(n: int) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 30.0 MiB, 2.0 GiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def eviction_problem(policy: str) -> tuple[bool, str] | None:
    """None when `policy` keeps every key; else (fatal, why). Fatal: `allkeys-*` evicts any
    key (queues, runs, dead letters). Not fatal: `volatile-*` evicts only keys with a TTL,
    which here are finished runs (their status, results and history may go before
    run_retention), never a queue."""
    if policy == SAFE_POLICY:
        return None
    if policy.startswith("volatile-"):
        return False, (
            f"Redis maxmemory-policy is {policy}: under memory pressure it evicts finished "
            f"runs (status, results, history) before their retention ends; set it to "
            f"{SAFE_POLICY} (CONFIG SET maxmemory-policy {SAFE_POLICY}, or in redis.conf)"
        )
    return True, (
        f"Redis maxmemory-policy is {policy}: under memory pressure it deletes queued "
        f"states, running runs and dead letters without a trace, so a job queue cannot run "
        f"on it; set it to {SAFE_POLICY} (CONFIG SET maxmemory-policy {SAFE_POLICY}, or in "
        f"redis.conf), or set EXOSPHERE_ALLOW_EVICTION=1 to start anyway"
    )


async def memory(client: RedisClient) -> Memory:
    """INFO memory (allowed where CONFIG is not, e.g. managed Redis and per-namespace ACL
    users with +info)."""
    return _memory(await client.info("memory"))


async def cluster_memory(cluster: RedisCluster) -> ClusterMemory:
    """INFO memory of every master of `cluster` (a plain INFO reaches one node only)."""
    primaries = sorted(cluster.get_primaries(), key=lambda n: (n.host, n.port))
    infos = await asyncio.gather(*(cluster.info("memory", target_nodes=n) for n in primaries))
    return ClusterMemory(tuple((n.name, _memory(i)) for n, i in zip(primaries, infos, strict=True)))


def _risk(policy: str) -> int:
    """How much `policy` may evict: 0 nothing, 1 finished runs, 2 anything."""
    found = eviction_problem(policy)
    return 0 if found is None else 2 if found[0] else 1


async def eviction_check(client: RedisClient) -> tuple[bool, str] | None:
    """`eviction_problem` of the server's maxmemory-policy; on a Redis Cluster, of the
    master whose policy evicts most (naming it): a namespace's lanes land on every
    master, and its lane count may change while a Runtime serves it."""
    cluster = await cluster_of(client)
    if cluster is None:
        return eviction_problem((await memory(client)).policy)
    masters = (await cluster_memory(cluster)).masters
    name, worst = max(masters, key=lambda m: _risk(m[1].policy))
    verdict = eviction_problem(worst.policy)
    if verdict is None:
        return None
    fatal, why = verdict
    return fatal, f"on Redis Cluster master {name}: {why}"


async def memory_view(client: RedisClient) -> dict[str, Any]:
    """`memory(client).as_dict()` for views (`exosphere status`, the dashboard); on a Redis
    Cluster every master's (`ClusterMemory`), not the one node a plain INFO reaches. A
    user the ACL denies INFO gets the same keys with None values and a summary saying so,
    instead of an error that would hide everything else."""
    try:
        cluster = await cluster_of(client)
        if cluster is not None:
            return (await cluster_memory(cluster)).as_dict()
        return (await memory(client)).as_dict()
    except NoPermissionError:
        return {
            "used_bytes": None,
            "maxmemory_bytes": None,
            "used_ratio": None,
            "policy": None,
            "summary": "Redis memory: unknown (this user may not run INFO)",
        }
