"""The read side of graph runs as stored: the run hash (Keys.run), the events stream, the
results and history lists and the per-graph run index, parsed into frozen records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker.client import RedisClient
from exospherehost.broker.codec import unpack
from exospherehost.broker.errors import CorruptRecord
from exospherehost.broker.keys import Keys

# Counter prefix of the run hash -> the IdentifierCounts attribute it counts.
_COUNTERS = {
    f.CREATED: "created",
    f.SUCCEEDED_COUNT: "succeeded",
    f.FAILED_COUNT: "failed",
    f.PRUNED_COUNT: "pruned",
    f.RETRIED_COUNT: "retried",
    f.SKIPPED_COUNT: "skipped",
}


@dataclass(frozen=True, slots=True)
class IdentifierCounts:
    """The counters of one graph node (identifier) of a run."""

    created: int = 0
    succeeded: int = 0
    failed: int = 0
    pruned: int = 0
    retried: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run hash, parsed."""

    graph: str
    status: str  # RUNNING | SUCCEEDED | FAILED
    open: int
    created_ms: int
    finished_ms: int | None
    counts: dict[str, IdentifierCounts]  # identifier -> counters
    notes: dict[str, str]  # identifier -> why a unite did not fire

    @classmethod
    def parse(cls, raw: dict[bytes, bytes], where: str = "the run hash") -> RunRecord:
        """Raises CorruptRecord naming `where` and the field when the hash holds what the
        scripts never write (a hand edit, a foreign client)."""
        try:
            h = {k.decode(): v.decode() for k, v in raw.items()}
        except UnicodeDecodeError as exc:
            raise CorruptRecord(f"{where} holds bytes that are not UTF-8 ({exc})") from None

        def num(field: str, value: str) -> int:
            try:
                return int(value)
            except ValueError:
                raise CorruptRecord(
                    f"{where} field {field!r} is {value[:40]!r}, not an integer"
                ) from None

        counters: dict[str, dict[str, int]] = {}
        notes: dict[str, str] = {}
        for key, value in h.items():
            kind, sep, ident = key.partition(":")
            if not sep:
                continue
            prefix = kind + sep
            if prefix == f.WHY:
                notes[ident] = value
                continue
            c = counters.setdefault(ident, {})
            if prefix in _COUNTERS:
                c[_COUNTERS[prefix]] = num(key, value)
        return cls(
            h.get(f.RUN_GRAPH, ""),
            h.get(f.RUN_STATUS, f.RUNNING),
            num(f.RUN_OPEN, h.get(f.RUN_OPEN, "0")),
            num(f.RUN_CREATED_MS, h.get(f.RUN_CREATED_MS, "0")),
            num(f.RUN_FINISHED_MS, h[f.RUN_FINISHED_MS]) if f.RUN_FINISHED_MS in h else None,
            {ident: IdentifierCounts(**c) for ident, c in counters.items()},
            notes,
        )


@dataclass(frozen=True, slots=True)
class RunEvent:
    """An entry of the events stream: a run finished."""

    entry_id: str
    run_id: str


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One settled outcome of a state of a run."""

    state_id: str
    identifier: str
    node: str
    status: str  # SUCCEEDED | FAILED | PRUNED | RETRYING
    attempt: int
    error: str
    time_ms: int

    @classmethod
    def parse(cls, raw: bytes) -> HistoryRecord:
        d = unpack(raw)
        return cls(
            d[f.HIST_STATE],
            d[f.HIST_IDENTIFIER] or "",
            d[f.HIST_NODE],
            d[f.HIST_STATUS],
            int(d[f.HIST_ATTEMPT]),
            d[f.HIST_ERROR],
            int(d[f.HIST_TIME_MS]),
        )


# -- a per-state record (Keys.run_states field `<state id>`), msgpack map keys -----------
REC_NODE = "n"
REC_IDENTIFIER = "id"
REC_STATUS = "s"  # SUCCEEDED | FAILED | PRUNED | RETRYING
REC_ATTEMPT = "a"  # 1-based
REC_INPUTS = "in"
REC_OUTPUTS = "out"  # a map, or a list of maps (a fan-out)
REC_ERROR = "err"
REC_PRUNED = "pr"  # the data the node pruned with
REC_QUEUED_MS = "q"  # when this attempt's entry was queued (its stream entry id)
REC_STARTED_MS = "st"  # 0: never executed
REC_FINISHED_MS = "fin"
REC_WORKER = "w"  # the Runtime consumer that settled it
REC_GROUPS = "gr"  # fan-in groups it is a member of: uniting identifier -> target state
REC_UNITE = "u"  # a uniting state: the target state of its group
REC_CTX = "c"  # what its descendants reference (the envelope's ctx), when not empty
REC_PATH = "p"  # its fan-out indices from the root, when not empty
REC_PARENT_PREFIX = f.STATE_PARENT  # field `^<state id>` -> msgpack [parent, created ms]
REC_RETRIED_PREFIX = f.STATE_RETRIED_AS  # field `><state id>` -> the state retried from it
REC_RETRY_OF_PREFIX = f.STATE_RETRY_OF  # field `<<state id>` -> the state it is a retry of
TRUNCATED = "__truncated__"
"""A field whose msgpack was over the per-field cap is stored as
{TRUNCATED: its size in bytes, "preview": the start of its text}."""
RECORD_FIELD_MAX = 16_384
"""Bytes of msgpack one field of a state record (RECORD_FIELDS) may take; a larger one is
stored as a truncation marker (TRUNCATED)."""
RECORD_FIELDS = (REC_INPUTS, REC_OUTPUTS, REC_ERROR, REC_PRUNED, REC_CTX)
"""The fields the per-field cap applies to (the others are small by construction)."""


@dataclass(frozen=True, slots=True)
class StateRetry:
    """What retry_state.lua needs to re-run one settled state (client/retry.py plans it
    from the state's record)."""

    state_id: str  # the incarnation retried: its record must still be `record`
    record: bytes
    new_id: str
    envelope: bytes  # the new incarnation's `_exo` field
    node: str
    counter: str  # the run-hash counter of its outcome, undone (e.g. "f:work")
    failed: bool  # it failed: the run's `failed` is undone
    bad: bool  # failed or pruned: a bad member of its fan-in groups
    pointer: bytes  # parent pointer of the new state (b"" for none)
    dead_id: str  # its dead letter's entry id on the run's lane, deleted ("" none)
    groups: dict[str, str]  # fan-in groups it is a member of: uniting identifier -> target


@dataclass(slots=True)
class StateLinks:
    """The retry links of a run's states (fields `>` and `<` of its states hash)."""

    retried_as: dict[str, str] = field(default_factory=dict)  # state -> its retry
    retry_of: dict[str, str] = field(default_factory=dict)  # retry -> the state it re-ran


LaneKeys = Callable[[], Awaitable[list[Keys]]]
"""The keys of every lane of a namespace in use (Broker.lane_keys)."""


class RunsReader:
    """A run's keys come from its id (Keys.for_run: the lane is part of the id); the
    events stream is that of `keys`' lane; with `lanes` (lane 0's reader), run listings
    cover every lane."""

    __slots__ = ("_client", "_lanes", "keys")

    def __init__(self, client: RedisClient, keys: Keys, lanes: LaneKeys | None = None) -> None:
        self._client = client
        self.keys = keys
        self._lanes = lanes

    async def _lane_keys(self) -> list[Keys]:
        return [self.keys] if self._lanes is None else await self._lanes()

    async def run(self, run_id: str) -> RunRecord | None:
        """The run's hash, or None when it does not exist (unknown, or expired)."""
        key = self.keys.for_run(run_id).run(run_id)
        raw = await self._client.hgetall(key)
        return RunRecord.parse(raw, f"run {run_id}'s hash {key}") if raw else None

    async def graph_of(self, run_id: str) -> tuple[str, int] | None:
        """(graph, version) the run pinned, or None when it does not exist."""
        graph, version = await self._client.execute_command(
            "HMGET", self.keys.for_run(run_id).run(run_id), f.RUN_GRAPH, f.RUN_VERSION
        )
        return None if graph is None else (graph.decode(), int(version or 0))

    async def statuses(self, run_ids: Sequence[str]) -> list[str | None]:
        """The status of each run (None: no such run), in one pipelined round trip."""
        pipe = self._client.pipeline(transaction=False)
        for_run = self.keys.for_run
        for r in run_ids:
            pipe.hget(for_run(r).run(r), f.RUN_STATUS)
        return [None if st is None else st.decode() for st in await pipe.execute()]

    async def events_tail(self) -> str:
        """The id of the newest run event, or "0" when there is none."""
        tail = await self._client.xrevrange(self.keys.events(), count=1)
        return tail[0][0].decode() if tail else "0"

    async def events(self, after: str, count: int, block_ms: int) -> list[RunEvent]:
        """Run events after entry id `after`, waiting up to `block_ms` for one."""
        reply = await self._client.xread({self.keys.events(): after}, count=count, block=block_ms)
        run_field = f.EVENT_RUN.encode()
        return [
            RunEvent(entry_id.decode(), fields.get(run_field, b"").decode())
            for _, entries in reply or ()
            for entry_id, fields in entries
        ]

    async def results(self, run_id: str) -> list[Any]:
        """The decoded results of the run's leaf states, in settle order."""
        key = self.keys.for_run(run_id).run_results(run_id)
        return [unpack(r) for r in await self._client.lrange(key, 0, -1)]

    async def history(self, run_id: str) -> list[HistoryRecord]:
        raw = await self._client.lrange(self.keys.for_run(run_id).run_history(run_id), 0, -1)
        return [HistoryRecord.parse(r) for r in raw]

    async def state_raw(
        self, run_id: str, state_id: str
    ) -> tuple[bytes | None, bytes | None, str | None, str | None]:
        """A state's record and parent pointer as stored (msgpack), the incarnation
        retry_state made of it and the state it is a retry of, each None when absent; one
        round trip."""
        key = self.keys.for_run(run_id).run_states(run_id)
        rec, ptr, retried_as, retry_of = await self._client.execute_command(
            "HMGET",
            key,
            state_id,
            REC_PARENT_PREFIX + state_id,
            REC_RETRIED_PREFIX + state_id,
            REC_RETRY_OF_PREFIX + state_id,
        )
        return (
            rec,
            ptr,
            None if retried_as is None else retried_as.decode(),
            None if retry_of is None else retry_of.decode(),
        )

    async def state_records(
        self, run_id: str, links: StateLinks | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        """Every record of the run's states and every parent pointer (child -> [parent,
        created ms]), read in HSCAN pages (a large run does not block Redis in one call);
        with `links`, the retry links go there."""
        key = self.keys.for_run(run_id).run_states(run_id)
        records: dict[str, dict[str, Any]] = {}
        parents: dict[str, list[Any]] = {}
        cursor = 0
        while True:
            cursor, page = await self._client.execute_command("HSCAN", key, cursor, "COUNT", 1000)
            cursor = int(cursor)
            for raw_name, value in page.items():
                name = raw_name.decode()
                head = name[:1]
                if head == REC_PARENT_PREFIX:
                    parents[name[1:]] = unpack(value)
                elif head == REC_RETRIED_PREFIX:
                    if links is not None:
                        links.retried_as[name[1:]] = value.decode()
                elif head == REC_RETRY_OF_PREFIX:
                    if links is not None:
                        links.retry_of[name[1:]] = value.decode()
                else:
                    records[name] = unpack(value)
            if cursor == 0:
                return records, parents

    async def run_ids(self, graph: str, offset: int, count: int) -> list[str]:
        """Run ids of `graph`, newest first (over every lane: the newest offset + count of
        each lane's index, merged by creation time)."""
        lanes = await self._lane_keys()
        if len(lanes) == 1:
            ids = await self._client.zrevrange(lanes[0].runs(graph), offset, offset + count - 1)
            return [r.decode() for r in ids]
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            pipe.zrevrange(keys.runs(graph), 0, offset + count - 1, withscores=True)
        merged = [(score, r.decode()) for part in await pipe.execute() for r, score in part]
        merged.sort(reverse=True)  # equal times by run id descending, as one index orders them
        return [r for _, r in merged[offset : offset + count]]

    async def created_between(
        self, graph: str, since_ms: int | None, until_ms: int | None, start: int, num: int
    ) -> list[tuple[str, int]]:
        """(run id, created ms) of `graph`'s runs created in [since, until], newest first,
        `num` of them from the `start`-th; over every lane (the newest start + num of each
        lane's index, merged; equal times by run id descending, as one index orders them)."""
        lanes = await self._lane_keys()
        top, bottom = (
            "+inf" if until_ms is None else until_ms,
            "-inf" if since_ms is None else since_ms,
        )
        if len(lanes) == 1:
            raw = await self._client.zrevrangebyscore(
                lanes[0].runs(graph), top, bottom, start=start, num=num, withscores=True
            )
            return [(r.decode(), int(score)) for r, score in raw]
        pipe = self._client.pipeline(transaction=False)
        for keys in lanes:
            pipe.zrevrangebyscore(
                keys.runs(graph), top, bottom, start=0, num=start + num, withscores=True
            )
        merged = [(r.decode(), int(score)) for part in await pipe.execute() for r, score in part]
        merged.sort(key=lambda rs: (rs[1], rs[0]), reverse=True)
        return merged[start : start + num]

    async def count_between(self, graph: str, since_ms: int | None, until_ms: int | None) -> int:
        """How many of `graph`'s runs were created in [since, until] (expired ones included
        until they are met and forgotten), over every lane."""
        lo, hi = "-inf" if since_ms is None else since_ms, "+inf" if until_ms is None else until_ms
        total = 0
        for keys in await self._lane_keys():
            total += await self._client.zcount(keys.runs(graph), lo, hi)
        return total

    async def forget(self, graph: str, run_ids: Sequence[str]) -> None:
        """Drop `run_ids` from `graph`'s run index (their runs expired)."""
        by_lane: dict[int, list[str]] = {}
        for r in run_ids:
            by_lane.setdefault(self.keys.for_run(r).lane, []).append(r)
        for lane, ids in by_lane.items():
            await self._client.zrem(self.keys.on_lane(lane).runs(graph), *ids)
