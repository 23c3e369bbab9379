"""The writes that start a graph run, as a value. `exospherehost.graph.runplan.plan_run` decides
them (envelope, store, counters); `Broker.start_run` applies them in one MULTI (a manual
trigger) and `Broker.cron_fire` in the cron_fire script (a scheduled trigger, after winning
the fire marker). Both write exactly the same keys and values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RUN_INDEX_SIZE = 10_000
"""Newest runs kept in a graph's run index (bounded memory; runs themselves expire)."""


@dataclass(frozen=True, slots=True)
class RunStart:
    run_id: str
    graph: str
    run_key: str  # hash: status and counters
    run_fields: dict[str, str | int]
    store_key: str  # hash: the run's store (written only when `store` is non-empty)
    store: dict[str, bytes]  # key -> msgpack value
    index_key: str  # sorted set: the graph's runs by creation time
    created_ms: int
    target_key: str  # the root node's stream, or its delayed set when `due_ms`
    due_ms: int  # 0: XADD now; otherwise ZADD with this score
    envelope: bytes  # the root state's msgpack envelope

    def write(self, pipe: Any) -> None:
        """Queue the writes on a (transactional) redis-py pipeline."""
        pipe.hset(self.run_key, mapping=self.run_fields)
        if self.store:
            pipe.hset(self.store_key, mapping=self.store)
        pipe.zadd(self.index_key, {self.run_id: self.created_ms})
        pipe.zremrangebyrank(self.index_key, 0, -RUN_INDEX_SIZE - 1)
        if self.due_ms:
            pipe.zadd(self.target_key, {self.envelope: self.due_ms})
        else:
            pipe.xadd(self.target_key, {"_exo": self.envelope})

    def script_keys(self) -> list[str]:
        return [self.run_key, self.store_key, self.index_key, self.target_key]

    def script_args(self) -> list[Any]:
        """ARGV tail of cron_fire.lua (see the script's header)."""
        args: list[Any] = [
            self.run_id,
            self.created_ms,
            RUN_INDEX_SIZE,
            self.envelope,
            self.due_ms,
            len(self.run_fields),
        ]
        for k, v in self.run_fields.items():
            args += (k, v)
        for k, b in self.store.items():
            args += (k, b)
        return args
