"""Every Redis key name, as a function, and the lane rule.

A namespace has k lanes (1 by default; `exo:{ns}:lanes` holds k). Lane 0 is the plain hash
tag `{ns}`; any other lane is a tag `{ns/n}` for a tag number n >= 1 (see `lane_tag`).
Namespace-global keys (nodes, graphs, secrets, the lane count) are always under `{ns}`;
per-state keys (queues, delayed sets, outputs, dead letters, the alive set, events, runs and
everything of a run, run indexes, cron markers) are under their lane's tag. A run lives on
one lane, so every script's keys share one hash tag and one Redis Cluster slot (a script
with keys in two slots is refused with CROSSSLOT).

Why tag numbers and not lane indexes in key names: lane L of k lanes aims at slot
slot(ns) + L*16384/k, so the tag of "lane 1" depends on k. Naming keys (and run ids) by the
tag number n makes a run's keys derivable from its run id alone, whatever k is now or was
when it started, and lanes of two counts that aim at the same slot (lane 1 of 2 and lane 2
of 4) are one and the same lane.
"""

from __future__ import annotations

import re
from binascii import crc_hqx
from functools import lru_cache

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


SLOTS = 16384
"""Hash slots of a Redis Cluster."""


def tag_slot(tag: str) -> int:
    """The Redis Cluster slot of every key whose hash tag is `tag`: CRC16 (XMODEM, as
    binascii.crc_hqx with 0) mod 16384; the same as redis.crc.key_slot. Pure, no I/O."""
    return crc_hqx(tag.encode(), 0) % SLOTS


LANE_WINDOW = 8
"""A lane's tag lands within this many slots after its target slot (see lane_tag)."""

MAX_LANES = 256
"""Most lanes a namespace may have."""

RUN_LANE_SEP = "."
"""A run id `<id>.<n>` lives on the lane of tag number n; one without it on lane 0."""


def lane_count_problem(value: object) -> str | None:
    """Why `value` cannot be a namespace's lane count, or None when it can."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_LANES:
        return None
    return f"lane count {value!r} is not valid: use an integer from 1 to {MAX_LANES}"


def lane_target(namespace: str, index: int, count: int) -> int:
    """The slot lane `index` of `count` aims at: slot(ns) + index * 16384 // count."""
    base = tag_slot(namespace)
    return (base + index * SLOTS // count) % SLOTS


@lru_cache(maxsize=4096)
def lane_tag(namespace: str, index: int, count: int) -> int:
    """The tag number of lane `index` of `count`: 0 for lane 0 (the plain tag `{ns}`); else
    the smallest n >= 1 whose tag `ns/n` hashes (CRC16, as Redis Cluster) to a slot s with
    0 <= (s - target) mod 16384 < LANE_WINDOW, target = lane_target(ns, index, count). CRC16
    of consecutive suffixes clusters in slot space; searching for the slot spreads the
    lanes evenly over the masters. ~16384 / LANE_WINDOW tries on average, cached."""
    if index == 0:
        return 0
    if not 0 < index < count:
        raise KeyNameError(f"lane {index} does not exist with {count} lanes")
    target = lane_target(namespace, index, count)
    n = 0
    while True:
        n += 1
        slot = tag_slot(f"{namespace}/{n}")
        if (slot - target) % SLOTS < LANE_WINDOW:
            return n


def lane_tags(namespace: str, count: int) -> list[int]:
    """The tag numbers of the `count` lanes of `namespace`, lane 0 (tag 0) first."""
    problem = lane_count_problem(count)
    if problem is not None:
        raise KeyNameError(problem)
    return [lane_tag(namespace, i, count) for i in range(count)]


def run_lane(run_id: str) -> int:
    """The tag number of the lane a run lives on, read from its id (0: no lane part)."""
    head, sep, tail = run_id.rpartition(RUN_LANE_SEP)
    if sep and head and tail.isdigit() and tail[0] != "0":
        return int(tail)
    return 0


class Keys:
    """Key names of one namespace on one lane (tag number `lane`, 0: the plain tag). Cheap
    to build; methods are pure string formatting. `base` is the namespace-global prefix
    `exo:{ns}`, `lane_base` that of the lane's per-state keys (the same on lane 0)."""

    __slots__ = ("_lanes", "base", "lane", "lane_base", "namespace")

    def __init__(self, namespace: str, lane: int = 0) -> None:
        self.namespace = check_name("namespace", namespace)
        if not isinstance(lane, int) or isinstance(lane, bool) or lane < 0:
            raise KeyNameError(f"lane tag number {lane!r} is not valid: use an integer >= 0")
        self.base = f"exo:{{{namespace}}}"
        self.lane = lane
        self.lane_base = self.base if lane == 0 else f"exo:{{{namespace}/{lane}}}"
        self._lanes: dict[int, Keys] = {lane: self}

    def on_lane(self, lane: int) -> Keys:
        """The keys of the same namespace on lane (tag number) `lane`, cached."""
        keys = self._lanes.get(lane)
        if keys is None:
            keys = self._lanes[lane] = Keys(self.namespace, lane)
            keys._lanes = self._lanes
        return keys

    def for_run(self, run_id: str) -> Keys:
        """The keys of the lane run `run_id` lives on (its id says which)."""
        return self.on_lane(run_lane(run_id))

    def new_run_id(self, unique: str) -> str:
        """A run id on this lane, from a unique id without RUN_LANE_SEP (ids.new_id)."""
        return unique if self.lane == 0 else f"{unique}{RUN_LANE_SEP}{self.lane}"

    def lanes(self) -> str:
        """Hash: `count` -> the namespace's lane count k (absent: 1), and `tag:<n>` for
        every lane tag number ever configured (Broker.set_lanes). Namespace-global."""
        return f"{self.base}:lanes"

    def queue(self, node: str) -> str:
        """Stream of states waiting for `node` (consumer group GROUP)."""
        return f"{self.lane_base}:q:{node}"

    def delayed(self, node: str) -> str:
        """Sorted set of states for `node` due later (score = due time, ms since epoch)."""
        return f"{self.lane_base}:delayed:{node}"

    def output(self, node: str) -> str:
        """Stream of results of graphless states of `node`."""
        return f"{self.lane_base}:out:{node}"

    def dead(self) -> str:
        """Dead-letter stream of the namespace."""
        return f"{self.lane_base}:dead"

    def alive(self) -> str:
        """Sorted set of the namespace's consumers by when each last said it was alive
        (Redis time, ms): see broker/lua/prune_consumers.lua."""
        return f"{self.lane_base}:alive"

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
        return f"{self.lane_base}:events"

    def nodes(self) -> str:
        """Hash node name -> registered schema (JSON)."""
        return f"{self.base}:nodes"

    def graphs(self) -> str:
        """Hash graph name -> current version number."""
        return f"{self.base}:graphs"

    def retired_graphs(self) -> str:
        """Set of graph names deleted (force) while runs of them were in flight: their run
        indexes stay, so namespace-wide run listings still find those runs."""
        return f"{self.base}:graphs:retired"

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
        return f"{self.lane_base}:run:{run_id}"

    def run_results(self, run_id: str) -> str:
        """List of msgpack results of the run's leaf states."""
        return f"{self.lane_base}:run:{run_id}:results"

    def run_history(self, run_id: str) -> str:
        """List of msgpack records, one per settled outcome of the run's states."""
        return f"{self.lane_base}:run:{run_id}:history"

    def run_states(self, run_id: str) -> str:
        """Hash of the run's per-state records (StateManager.state / run_graph): field
        `<state id>` -> msgpack record of its last settle; field `^<state id>` -> msgpack
        [parent state id, created ms], written by the parent's settle. Expires with the run."""
        return f"{self.lane_base}:run:{run_id}:states"

    def run_store(self, run_id: str) -> str:
        """Hash store key -> msgpack value: the run's key-value store (nodes read and write
        it through `BaseNode.store`); expires with the run."""
        return f"{self.lane_base}:run:{run_id}:store"

    def group(self, run_id: str, unite: str, target_state: str) -> str:
        """Hash of one fan-in group: open members, bad branches, the uniting envelope."""
        return f"{self.lane_base}:run:{run_id}:g:{unite}:{target_state}"

    def collected(self, run_id: str, unite: str, target_state: str) -> str:
        """List of what each branch reaching the uniting node left for its inputs."""
        return f"{self.lane_base}:run:{run_id}:g:{unite}:{target_state}:c"

    def runs(self, graph: str) -> str:
        """Sorted set run id -> creation time, per graph (run listing)."""
        return f"{self.lane_base}:runs:{graph}"

    def cron_marker(self, graph: str, fire_ts: int) -> str:
        """String set (NX, with an expiry) by the one scheduler that fires `graph`'s cron
        run for fire time `fire_ts` (seconds since the epoch, UTC); value = the run id."""
        return f"{self.lane_base}:cron:{graph}:{fire_ts}"
