"""Every Redis key name, as a function. All keys of a namespace share the hash tag `{ns}`,
so every script's keys live in one Redis Cluster slot (scripts with keys in two slots are
refused with CROSSSLOT)."""

from __future__ import annotations

import re

from exospherehost.broker.errors import KeyNameError as KeyNameError  # old import path

# Re-exported: the worker, the settle planner and the codec import it from here.
from exospherehost.broker.fields import ENVELOPE_FIELD as ENVELOPE_FIELD

GROUP = "exo"
"""The one consumer group on every state stream; every Runtime process is a consumer."""

NODES_PATTERN = "exo:{*}:nodes"
"""SCAN pattern of every namespace's node registry (Keys.nodes); the namespace is the part
between the braces."""

NAME_ALPHABET = "A-Z a-z 0-9 _ . -"
"""What namespaces, node (class) names, graph names and node identifiers may contain."""

# fullmatch, not `^...$` with match: `$` also matches before a final newline ("ok\n").
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


def name_problem(kind: str, value: object) -> str | None:
    """Why `value` cannot be a `kind` (a name that goes into key names), or None when it
    can: 1-200 characters from NAME_ALPHABET. No braces, which would break the `{ns}` hash
    tag; no ':', which separates key parts; ASCII only, so every client spells it alike."""
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return f"{kind} {value!r} is not valid: use 1-200 characters from {NAME_ALPHABET}"


def check_name(kind: str, value: str) -> str:
    """`value` when it is a valid `kind` (see name_problem); else raise KeyNameError."""
    problem = name_problem(kind, value)
    if problem is not None:
        raise KeyNameError(problem)
    return value


class Keys:
    """Key names of one namespace. Cheap to build; methods are pure string formatting."""

    __slots__ = ("base", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = check_name("namespace", namespace)
        self.base = f"exo:{{{namespace}}}"

    def queue(self, node: str) -> str:
        """Stream of states waiting for `node` (consumer group GROUP)."""
        return f"{self.base}:q:{node}"

    def delayed(self, node: str) -> str:
        """Sorted set of states for `node` due later (score = due time, ms since epoch)."""
        return f"{self.base}:delayed:{node}"

    def output(self, node: str) -> str:
        """Stream of results of graphless states of `node`."""
        return f"{self.base}:out:{node}"

    def dead(self) -> str:
        """Dead-letter stream of the namespace."""
        return f"{self.base}:dead"

    def alive(self) -> str:
        """Sorted set of the namespace's consumers by when each last said it was alive
        (Redis time, ms): see broker/lua/prune_consumers.lua."""
        return f"{self.base}:alive"

    def cancelled(self) -> str:
        """Sorted set run id -> when it was cancelled (ms): workers drop the states of these
        runs before executing them (the settle script drops what they emit regardless)."""
        return f"{self.base}:cancelled"

    def worker(self, consumer: str) -> str:
        """String (JSON, with an expiry) a Runtime process rewrites every few seconds: who
        it is and its counters (see broker/workers.py)."""
        return f"{self.base}:worker:{consumer}"

    def workers(self) -> str:
        """Sorted set consumer -> when its worker record was last written (ms, its clock):
        the index of Keys.worker records, kept for an hour after a worker's last word."""
        return f"{self.base}:workers"

    def throughput(self, minute: int) -> str:
        """Hash of one minute's per-node counters (minute = epoch seconds // 60), fields
        `{10 s slot}:{done|failed}:{node}`; expires after 20 minutes."""
        return f"{self.base}:tput:{minute}"

    def events(self) -> str:
        """Capped stream of run events (run finished), for waiters and dashboards."""
        return f"{self.base}:events"

    def nodes(self) -> str:
        """Hash node name -> registered schema (JSON)."""
        return f"{self.base}:nodes"

    def graphs(self) -> str:
        """Hash graph name -> current version number."""
        return f"{self.base}:graphs"

    def graph_seq(self) -> str:
        """Hash graph name -> last version number handed out (a graph's first version
        counts from Redis's clock in µs: see GraphStore.next_version)."""
        return f"{self.base}:graphseq"

    def graph(self, name: str, version: int) -> str:
        """Immutable msgpack of one version of a graph template (runs pin their version)."""
        return f"{self.base}:graph:{name}:{version}"

    def secrets(self, name: str) -> str:
        """Hash of a graph's secrets as stored before secrets were kept per version (read
        only as a fallback for versions upserted then; see version_secrets)."""
        return f"{self.base}:secrets:{name}"

    def version_secrets(self, name: str, version: int) -> str:
        """Hash secret name -> Fernet token: the secrets of one version of a graph (runs
        pinned to the version see them). Persistent while the version is current; given an
        expiry when a newer version replaces it (GraphStore.old_secrets_ttl_s)."""
        return f"{self.base}:secrets:{name}:{version}"

    def secrets_sweep(self) -> str:
        """String set (NX, with an expiry) by the one Runtime that sweeps the namespace's
        replaced secrets this period (GraphStore.keep_live_secrets)."""
        return f"{self.base}:secretsweep"

    def secret_versions(self, name: str) -> str:
        """Sorted set of the versions of a graph that stored secrets (score = version),
        so an upsert can find and expire the older ones."""
        return f"{self.base}:secretversions:{name}"

    def run(self, run_id: str) -> str:
        """Hash of a run's bookkeeping: status, open state count, per-identifier counters."""
        return f"{self.base}:run:{run_id}"

    def run_results(self, run_id: str) -> str:
        """List of msgpack results of the run's leaf states."""
        return f"{self.base}:run:{run_id}:results"

    def run_history(self, run_id: str) -> str:
        """List of msgpack records, one per settled outcome of the run's states."""
        return f"{self.base}:run:{run_id}:history"

    def run_store(self, run_id: str) -> str:
        """Hash store key -> msgpack value: the run's key-value store (nodes read and write
        it through `BaseNode.store`); expires with the run."""
        return f"{self.base}:run:{run_id}:store"

    def group(self, run_id: str, unite: str, target_state: str) -> str:
        """Hash of one fan-in group: open members, bad branches, the uniting envelope."""
        return f"{self.base}:run:{run_id}:g:{unite}:{target_state}"

    def collected(self, run_id: str, unite: str, target_state: str) -> str:
        """List of what each branch reaching the uniting node left for its inputs."""
        return f"{self.base}:run:{run_id}:g:{unite}:{target_state}:c"

    def runs(self, graph: str) -> str:
        """Sorted set run id -> creation time, per graph (run listing)."""
        return f"{self.base}:runs:{graph}"

    def cron_marker(self, graph: str, fire_ts: int) -> str:
        """String set (NX, with an expiry) by the one scheduler that fires `graph`'s cron
        run for fire time `fire_ts` (seconds since the epoch, UTC); value = the run id."""
        return f"{self.base}:cron:{graph}:{fire_ts}"
