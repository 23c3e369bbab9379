"""The writes that start a graph run, as a value. `exospherehost.graph.runplan.plan_run` decides
them (envelope, store, counters); `Broker.start_runs` applies them with the start_run script
(a manual trigger: at most once per run id) and `Broker.cron_fire` with the cron_fire script
(a scheduled trigger, after winning the fire marker). Both write the same keys and values
(lua/_runstart.lua)."""

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

    def script_keys(self) -> list[str]:
        return [self.run_key, self.store_key, self.index_key, self.target_key]

    def script_args(self) -> list[Any]:
        """ARGV of start_run.lua, and the tail of cron_fire.lua's (lua/_runstart.lua)."""
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
