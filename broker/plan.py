"""Builder for the settle script's plan: which entries to ack and what each one emits.

Pure: it only collects keys and ops; `Broker.settle` sends it in one EVALSHA. Each op is
the flat list settle.lua reads (its code, then its fields in the order the script's
header names them); the op methods of `SettlePlan` are the only place that lays them out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker.codec import packer
from exospherehost.broker.keys import ENVELOPE_FIELD

# Redis' Lua cmsgpack predates the msgpack bin types: bytes go as raw strings, which Lua
# strings hold byte for byte.
_pack_plan = packer(use_bin_type=False)
# Op codes: settle.lua's OP_* constants (tests/unit/test_plan_wire.py holds them equal).
XADD, ZADD_DELAYED, RPUSH, RUN_STEP, GROUP_INIT, GROUP_STEP, RUN_OPEN, HSET = 1, 2, 3, 4, 5, 6, 7, 8
MAX_XADD_FIELDS = 3000
"""Most fields one script XADD can take: Lua's `unpack` fits ~8000 values on its C stack.
Plans only ever XADD a handful (entries travel as one `_exo` envelope field); the settle
script refuses an op above this instead of failing half-way."""

# Settle results, one per plan item (see settle.lua).
LATE, APPLIED, ORPHANED, FAILED, REFUSED = 0, 1, 2, 3, 4


class SettleFlags(list[int]):
    """One flag per plan item; `errors[i]` says why item i FAILED (acked, but its ops
    stopped part-way on an error) or was REFUSED (untouched and still pending)."""

    def __init__(self, flags: list[int], errors: dict[int, str]) -> None:
        super().__init__(flags)
        self.errors = errors

    @classmethod
    def parse(cls, reply: list[Any]) -> SettleFlags:
        if set(map(type, reply)) <= {int}:  # the usual reply: flags only (C-speed check)
            return cls(reply, {})
        flags: list[int] = []
        errors: dict[int, str] = {}
        for i, r in enumerate(reply):
            if isinstance(r, bytes | str):
                text = r.decode("utf-8", "replace") if isinstance(r, bytes) else r
                code, _, why = text.partition(" ")
                flags.append(int(code))
                errors[i] = why
            else:
                flags.append(int(r))
        return cls(flags, errors)


@dataclass(slots=True)
class DeadLetterRecord:
    """The fields of one dead-letter stream entry (exospherehost.client.deadletters reads
    them back), in the order they are written."""

    node: str
    state: str
    run: str
    identifier: str
    attempts: int
    deliveries: int  # counted across releases at shutdown too (the envelope carries them)
    error: str
    traceback: str
    time_ms: int
    entry: bytes  # the source entry's id
    original: bytes  # msgpack of the source entry's fields

    def pairs(self) -> tuple[Any, ...]:
        return (
            f.DEAD_NODE, self.node, f.DEAD_STATE, self.state, f.DEAD_RUN, self.run,
            f.DEAD_IDENTIFIER, self.identifier, f.DEAD_ATTEMPTS, self.attempts,
            f.DEAD_DELIVERIES, self.deliveries, f.DEAD_ERROR, self.error,
            f.DEAD_TRACEBACK, self.traceback, f.DEAD_TIME_MS, self.time_ms,
            f.DEAD_ENTRY, self.entry, f.DEAD_ORIGINAL, self.original,
        )  # fmt: skip


class SettlePlan:
    """The plan of one settle call: `keys` (the script's KEYS) and `items`, one per entry
    to settle, `[source stream's KEYS index, entry id, ops]`. `entry` begins an item; the
    op methods after it add to that item, in the order the script runs them."""

    __slots__ = ("_index", "_ops", "_run_from", "items", "keys", "size")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.items: list[list[Any]] = []
        self._ops: list[list[Any]] = []  # the ops of the item begun last
        self._run_from = 0  # where its run ops start (see run_ops_start_here)
        self.size = 0  # bytes of envelopes and results planned (the planner counts them)

    def __len__(self) -> int:
        return len(self.items)

    def mark(self) -> int:
        return len(self.items)

    def rollback(self, mark: int) -> None:
        """Drop items added since `mark` (an outcome that failed half-way to plan)."""
        del self.items[mark:]

    def key(self, name: str) -> int:
        """1-based KEYS index of `name` (Lua arrays start at 1)."""
        index = self._index
        idx = index.get(name)
        if idx is None:
            keys = self.keys
            keys.append(name)
            idx = index[name] = len(keys)
        return idx

    def entry(self, stream: str, entry_id: bytes | str, ack: bool = True) -> None:
        """Begin the item settling `entry_id` of `stream`. `ack=False`: the entry was acked
        already (by a call that failed part-way after its ack), its ops are written
        unconditionally."""
        self._ops = []
        self._run_from = 0
        self.items.append([self.key(stream), entry_id if ack else "", self._ops])

    def xadd(self, stream: str, fields: dict[str, Any], maxlen: int = 0) -> None:
        self.xadd_pairs(stream, maxlen, [x for pair in fields.items() for x in pair])

    def xadd_pairs(self, stream: str, maxlen: int, pairs: Sequence[Any]) -> None:
        """`xadd` with the fields given flat: (f1, v1, f2, v2, ...)."""
        self._ops.append([XADD, self.key(stream), maxlen, *pairs])

    def queue(self, stream: str, envelope: bytes) -> None:
        """A state entry on a node's stream: one envelope field, whatever its inputs."""
        self._ops.append([XADD, self.key(stream), 0, ENVELOPE_FIELD, envelope])

    def dead_letter(self, stream: str, record: DeadLetterRecord, maxlen: int = 0) -> None:
        """A dead letter; `maxlen` > 0 caps the dead stream near it (XADD MAXLEN ~: the
        oldest letters go first; 0: no cap)."""
        self.xadd_pairs(stream, maxlen, record.pairs())

    def delay(self, zset: str, delay_ms: int, member: bytes) -> None:
        self._ops.append([ZADD_DELAYED, self.key(zset), max(0, int(delay_ms)), member])

    def rpush(self, key: str, value: bytes) -> None:
        self._ops.append([RPUSH, self.key(key), value])

    def hset_pairs(self, key: str, pairs: Sequence[Any]) -> None:
        """HSET KEYS[key] f1 v1 ... (the per-state records of a run); the script chunks
        long ones. Among the run ops: skipped if the run does not exist."""
        self._ops.append([HSET, self.key(key), *pairs])

    def run_ops_start_here(self) -> None:
        """The item's ops added from now on need its run; those before (a dead letter)
        are written even if the run no longer exists. By default all of them need it."""
        self._run_from = len(self._ops)

    def run_step(
        self,
        *,
        run_key: str,
        events_key: str,
        run_id: str,
        open_delta: int,
        failed_delta: int,
        retention_s: int,
        history_key: str,
        history: bytes,
        expire_with_run: Sequence[str],
        counters: dict[str, int],
    ) -> None:
        """Run bookkeeping of the item (the last of its ops), and where its run ops start
        (`run_ops_start_here`) the change of the run's open count, which also checks
        that the run exists: if not, the ops from there on are skipped. The open-count
        op is placed now, not when the run ops start, so that KEYS keep their order."""
        key = self.key
        run = key(run_key)
        op: list[Any] = [
            RUN_STEP,
            run,
            key(events_key),
            run_id,
            open_delta,
            failed_delta,
            retention_s,
            key(history_key),
            history,
            len(expire_with_run),
        ]
        for k in expire_with_run:
            op.append(key(k))
        for field, incr in counters.items():
            op += (field, incr)
        ops = self._ops
        ops.append(op)
        ops.insert(self._run_from, [RUN_OPEN, run, open_delta])

    def group_init(
        self, group_key: str, open_: int, strategy: str, env: bytes, unite_identifier: str
    ) -> None:
        self._ops.append([GROUP_INIT, self.key(group_key), open_, strategy, env, unite_identifier])

    def group_step(
        self,
        *,
        group_key: str,
        collected_key: str,
        unite_queue: str,
        run_key: str,
        open_delta: int,
        bad_delta: int,
        retention_s: int,
        outer_groups: Sequence[str],
        collected: Sequence[bytes],
    ) -> None:
        key = self.key
        op: list[Any] = [
            GROUP_STEP,
            key(group_key),
            key(collected_key),
            key(unite_queue),
            key(run_key),
            open_delta,
            bad_delta,
            retention_s,
            len(outer_groups),
        ]
        op += [key(k) for k in outer_groups]
        op += collected
        self._ops.append(op)

    def encode(self) -> bytes:
        return _pack_plan(self.items)
