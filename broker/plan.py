"""Builder for the settle script's plan: which entries to ack and what each one emits.

Pure: it only collects keys and ops; `Broker.settle` sends it in one EVALSHA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exospherehost.broker.codec import packer

# Redis' Lua cmsgpack predates the msgpack bin types: bytes go as raw strings, which Lua
# strings hold byte for byte.
_pack_plan = packer(use_bin_type=False)
XADD, ZADD_DELAYED, RPUSH, RUN_STEP, GROUP_INIT, GROUP_STEP, RUN_OPEN = 1, 2, 3, 4, 5, 6, 7
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


class SettlePlan:
    __slots__ = ("_index", "items", "keys")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.items: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.items)

    def mark(self) -> int:
        return len(self.items)

    def rollback(self, mark: int) -> None:
        """Drop items added since `mark` (an outcome that failed half-way to plan)."""
        del self.items[mark:]

    def key(self, name: str) -> int:
        """1-based KEYS index of `name` (Lua arrays start at 1)."""
        idx = self._index.get(name)
        if idx is None:
            self.keys.append(name)
            idx = self._index[name] = len(self.keys)
        return idx

    def entry(self, stream: str, entry_id: bytes | str, ack: bool = True) -> list[list[Any]]:
        """Settle `entry_id` of `stream`; returns its op list for the emit helpers below.
        `ack=False`: the entry was acked already (by a call that failed part-way after its
        ack), the ops are written unconditionally."""
        ops: list[list[Any]] = []
        self.items.append([self.key(stream), entry_id if ack else "", ops])
        return ops

    def xadd(
        self, ops: list[list[Any]], stream: str, fields: dict[str, Any], maxlen: int = 0
    ) -> None:
        self.xadd_pairs(ops, stream, maxlen, [x for pair in fields.items() for x in pair])

    def xadd_pairs(
        self, ops: list[list[Any]], stream: str, maxlen: int, pairs: Sequence[Any]
    ) -> None:
        """`xadd` with the fields given flat: (f1, v1, f2, v2, ...)."""
        ops.append([XADD, self.key(stream), maxlen, *pairs])

    def delay(self, ops: list[list[Any]], zset: str, delay_ms: int, member: bytes) -> None:
        ops.append([ZADD_DELAYED, self.key(zset), max(0, int(delay_ms)), member])

    def rpush(self, ops: list[list[Any]], key: str, value: bytes) -> None:
        ops.append([RPUSH, self.key(key), value])

    def run_step(
        self,
        ops: list[list[Any]],
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
        open_at: int = 0,
    ) -> None:
        """Run bookkeeping of the entry (the last of its ops), and at `open_at` in its
        ops the change of the run's open count, which also checks that the run exists:
        if not, the ops from there on are skipped (ops before it, e.g. a dead letter,
        are written anyway)."""
        op: list[Any] = [
            RUN_STEP,
            self.key(run_key),
            self.key(events_key),
            run_id,
            open_delta,
            failed_delta,
            retention_s,
            self.key(history_key),
            history,
            len(expire_with_run),
        ]
        op += [self.key(k) for k in expire_with_run]
        for field, incr in counters.items():
            op += (field, incr)
        ops.append(op)
        ops.insert(open_at, [RUN_OPEN, op[1], open_delta])

    def group_init(
        self,
        ops: list[list[Any]],
        group_key: str,
        open_: int,
        strategy: str,
        env: bytes,
        unite_identifier: str,
    ) -> None:
        ops.append([GROUP_INIT, self.key(group_key), open_, strategy, env, unite_identifier])

    def group_step(
        self,
        ops: list[list[Any]],
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
        op: list[Any] = [
            GROUP_STEP,
            self.key(group_key),
            self.key(collected_key),
            self.key(unite_queue),
            self.key(run_key),
            open_delta,
            bad_delta,
            retention_s,
            len(outer_groups),
        ]
        op += [self.key(k) for k in outer_groups]
        op += collected
        ops.append(op)

    def encode(self) -> bytes:
        return _pack_plan(self.items)
