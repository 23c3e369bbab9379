"""Redis I/O of the transport: groups, batched reads, publishing and the Lua script calls.

Everything here is a thin, typed wrapper over one Redis round trip; decisions live elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import NoScriptError, ResponseError

from exospherehost.broker import fields as f
from exospherehost.broker.client import Redis, RedisClient, Script, StreamEntry, typed_client
from exospherehost.broker.codec import unpack
from exospherehost.broker.deadletters import DeadLetterReader
from exospherehost.broker.errors import InvalidArgument
from exospherehost.broker.errors import KeyRefused as KeyRefused  # old import path
from exospherehost.broker.keys import GROUP, Keys, lane_count_problem, lane_tags
from exospherehost.broker.plan import SettleFlags, SettlePlan
from exospherehost.broker.queues import QueueReader
from exospherehost.broker.registry import NodeRegistry
from exospherehost.broker.runs import RunsReader, StateRetry
from exospherehost.broker.runstart import RunStart
from exospherehost.broker.workers import WorkerBoard

if TYPE_CHECKING:
    from exospherehost.broker.lane import Lane

log = logging.getLogger("exospherehost.broker")


def stream_is_full(last_id: str) -> bool:
    """Whether a stream whose last-generated id is `last_id` can take no more `XADD *`
    (the scripts check the same: ms part 2^64-1 and a sequence near the top)."""
    ms, _, seq = last_id.partition("-")
    return ms == "18446744073709551615" and len(seq) >= 19


def run_start_keys(starts: Sequence[RunStart]) -> dict[str, str]:
    """The shared keys starting `starts` writes, with the type each must have (the run's
    own hash and store are new)."""
    wanted: dict[str, str] = {}
    for start in starts:
        wanted[start.index_key] = "zset"
        wanted[start.target_key] = "zset" if start.due_ms else "stream"
    return wanted


REDRIVE_REFUSED = -2
"""Broker.redrive's (and retry_state's) code for a call the script refused (nothing written)."""
RETRY_CHANGED = -3  # retry_state: the record changed since it was read (read it again)
RETRY_MISSING = -4  # retry_state: no such run

Entry = StreamEntry
"""(entry id, fields) of one state-stream entry (broker.client.StreamEntry)."""


@cache
def _lua(name: str) -> str:
    """A script's source; one with a `#!lua` line (the scripts that check before they
    write) gets the shared checks of lua/_checks.lua right after it, and a line
    `--@include NAME` is replaced by lua/NAME: a Redis script cannot import, and the shebang
    must stay the first line."""
    folder = resources.files(__package__ or "exospherehost.broker").joinpath("lua")
    source = "".join(
        folder.joinpath(line.removeprefix("--@include ").strip()).read_text()
        if line.startswith("--@include ")
        else line
        for line in folder.joinpath(name).read_text().splitlines(keepends=True)
    )
    shebang, _, body = source.partition("\n")
    if not shebang.startswith("#!lua"):
        return source
    return f"{shebang}\n{folder.joinpath('_checks.lua').read_text()}{body}"


def parse_read_reply(reply: Any, prefix: int) -> list[tuple[str, list[Entry]]]:
    """XREADGROUP's raw reply -> [(node, [(entry id, fields), ...]), ...]. RESP2 gives
    [[stream, entries], ...], RESP3 {stream: entries}; an entry is [id, [f1, v1, ...]]
    (its fields are nil if it was deleted while pending) or, if redis-py's callback did
    run after all, (id, {f: v})."""
    if not reply:
        return []
    out: list[tuple[str, list[Entry]]] = []
    for stream, raw in reply.items() if isinstance(reply, dict) else reply:
        entries: list[Entry] = []
        if raw is None:
            # Seen under load (issue: W2 stalls, benchmarks/README.md): a stream with a nil
            # entry list. Nothing to take from it; must not stop the reader. Anything Redis
            # put in our pending list for it is reclaimed after the visibility timeout.
            log.warning("XREADGROUP answered stream %r with no entry list; skipped", stream)
            continue
        for entry_id, flat in raw:
            if isinstance(flat, dict):
                entries.append((entry_id, flat))
            elif flat is None:
                entries.append((entry_id, {}))
            elif len(flat) == 2:  # the SDK's one-field envelope
                entries.append((entry_id, {flat[0]: flat[1]}))
            else:
                entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=False))))
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        out.append((name[prefix:], entries))
    return out


LANE_COUNT_FIELD = "count"
"""Field of Keys.lanes (a hash) holding the lane count k; absent: 1."""
LANE_TAG_FIELD = "tag:"
"""Prefix of the Keys.lanes fields naming every lane tag number ever configured."""


def parse_lanes(namespace: str, raw: Mapping[bytes, bytes]) -> tuple[int, list[int], set[int]]:
    """Keys.lanes' hash -> (k, the current lanes' tag numbers, every recorded tag number).
    Raises InvalidArgument naming the key when its count is not a valid lane count."""
    text = raw.get(LANE_COUNT_FIELD.encode())
    count: object = 1
    if text is not None:
        count = int(text) if text.isdigit() else text.decode("utf-8", "replace")
    if (problem := lane_count_problem(count)) is not None:
        raise InvalidArgument(
            f"exo:{{{namespace}}}:lanes field {LANE_COUNT_FIELD!r}: {problem} "
            f"(set it with StateManager.set_lanes or `exosphere lanes set`)"
        )
    assert isinstance(count, int)
    used = {0}
    prefix = LANE_TAG_FIELD.encode()
    for field in raw:
        if field.startswith(prefix) and field[len(prefix) :].isdigit():
            used.add(int(field[len(prefix) :]))
    return count, lane_tags(namespace, count), used


CANCELLED_KEEP_MS = 7 * 24 * 3600 * 1000
"""How long a cancelled run stays in the namespace's cancelled set (its states may still be
queued or delayed that long; the settle script drops them after that too)."""


class Broker:
    """One namespace's streams on one Redis connection pool, and the typed readers of
    what else the namespace holds (the SDK never sends a command itself).

    A Broker works on one lane (`lane`: its tag number, 0 = the plain tag `{ns}`, see
    broker/keys.py): its streams, scripts and per-state keys are that lane's. `on_lane`
    gives the Broker of another lane (sharing the client); `for_run` that of a run's lane.
    The readers of lane 0's Broker (what StateManager, `exosphere status`, the dashboard
    and metrics use) read across every lane in use."""

    def __init__(self, client: Redis | RedisClient, namespace: str, lane: int = 0) -> None:
        self.client = typed_client(client)
        self.keys = Keys(namespace, lane)
        self._lane_brokers: dict[int, Broker] = {lane: self}
        lanes = self.lane_keys if lane == 0 else None
        self.registry = NodeRegistry(self.client, self.keys)
        self.runs = RunsReader(self.client, self.keys, lanes)
        self.dead_letters = DeadLetterReader(self.client, self.keys, lanes)
        self.queues = QueueReader(self.client, self.keys, lanes)
        self.workers = WorkerBoard(self.client, self.keys)  # namespace-global records
        # register_script sends EVALSHA and falls back to EVAL on NOSCRIPT (e.g. after a
        # Redis restart flushed the script cache).
        self._settle = self.client.register_script(_lua("settle.lua"))
        self._promote = self.client.register_script(_lua("promote.lua"))
        self._reclaim = self.client.register_script(_lua("reclaim.lua"))
        self._heartbeat = self.client.register_script(_lua("heartbeat.lua"))
        self._redrive = self.client.register_script(_lua("redrive.lua"))
        self._publish = self.client.register_script(_lua("publish.lua"))
        self._retire = self.client.register_script(_lua("retire.lua"))
        self._cron_fire = self.client.register_script(_lua("cron_fire.lua"))
        self._start_run = self.client.register_script(_lua("start_run.lua"))
        self._cancel_run = self.client.register_script(_lua("cancel_run.lua"))
        self._retry_state = self.client.register_script(_lua("retry_state.lua"))
        self._store_set = self.client.register_script(_lua("store_set.lua"))
        self._store_incr = self.client.register_script(_lua("store_incr.lua"))
        self._store_cas = self.client.register_script(_lua("store_cas.lua"))
        self._reported: set[str] = set()  # problems the promote script reported, logged once

    # -- lanes --------------------------------------------------------------------------
    def on_lane(self, lane: int) -> Broker:
        """The Broker of lane (tag number) `lane` of the same namespace and client, cached."""
        broker = self._lane_brokers.get(lane)
        if broker is None:
            broker = Broker(self.client, self.keys.namespace, lane)
            broker._lane_brokers = self._lane_brokers
            broker._reported = self._reported
            self._lane_brokers[lane] = broker
        return broker

    def for_run(self, run_id: str) -> Broker:
        """The Broker of the lane run `run_id` lives on (its id says: Keys.for_run)."""
        return self.on_lane(self.keys.for_run(run_id).lane)

    async def lanes(self) -> tuple[int, list[int], set[int]]:
        """(k, the tag numbers of the current k lanes, every tag number ever configured:
        lanes of an older count may still hold states), in one HGETALL."""
        raw = await self.client.hgetall(self.keys.lanes())
        return parse_lanes(self.keys.namespace, raw)

    async def set_lanes(self, count: int) -> list[int]:
        """Give the namespace `count` lanes (recording their tag numbers with the count,
        in one HSET); returns their tag numbers. Lanes of the old count are not forgotten:
        Runtimes serve them while they hold anything, and the runs on them stay there."""
        if (problem := lane_count_problem(count)) is not None:
            raise InvalidArgument(problem)
        tags = lane_tags(self.keys.namespace, count)
        mapping: dict[str, int] = {LANE_COUNT_FIELD: count}
        mapping.update({f"{LANE_TAG_FIELD}{t}": 1 for t in tags if t})
        await self.client.hset(self.keys.lanes(), mapping=mapping)
        return tags

    async def lane_keys(self) -> list[Keys]:
        """The keys of every lane that may hold something (current or recorded), lane 0
        first; just lane 0's when the namespace has one lane (the usual case)."""
        _, current, used = await self.lanes()
        keys = self.keys.on_lane
        return [keys(t) for t in sorted(used.union(current))]

    async def lanes_to_serve(self, nodes: Sequence[str]) -> list[int]:
        """Tag numbers of the lanes a Runtime of `nodes` serves: the current ones, and
        those of an older count still holding a state of `nodes` (queued, pending or
        delayed). Current lanes set without their record (a hand-written count) are
        recorded here, so they are not forgotten when the count changes again."""
        _, current, used = await self.lanes()
        if unrecorded := [t for t in current if t not in used]:
            await self.client.hset(
                self.keys.lanes(), mapping={f"{LANE_TAG_FIELD}{t}": 1 for t in unrecorded}
            )
        old = sorted(used.difference(current))
        serve = list(current)
        if old and nodes:
            pipe = self.client.pipeline(transaction=False)
            for t in old:
                lane = self.keys.on_lane(t)
                for node in nodes:
                    pipe.xlen(lane.queue(node))  # settled entries are deleted: 0 = empty
                    pipe.zcard(lane.delayed(node))
            held = iter(await pipe.execute())
            for t in old:
                if sum(int(next(held)) + int(next(held)) for _ in nodes):
                    serve.append(t)
        return serve

    async def ensure_groups(self, nodes: Iterable[str]) -> None:
        """Create each node's stream and group from id 0, so entries added before any
        worker ran are delivered too."""
        for node in nodes:
            try:
                await self.client.xgroup_create(self.keys.queue(node), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def join(self, consumer: str, nodes: Iterable[str]) -> None:
        """Register the consumer on every stream at start, so monitoring sees a live worker
        before it has received anything."""
        for node in nodes:
            await self.client.execute_command(
                "XGROUP", "CREATECONSUMER", self.keys.queue(node), GROUP, consumer
            )

    async def retire(self, consumer: str, nodes: Iterable[str]) -> int:
        """Remove the consumer from streams where it holds nothing pending (clean stop);
        returns on how many streams it was kept because something is still pending."""
        kept = 0
        for node in nodes:
            kept += 1 - int(
                await self._retire(
                    keys=[self.keys.queue(node), self.keys.alive()], args=[GROUP, consumer]
                )
            )
        return kept

    async def read(
        self,
        consumer: str,
        nodes: Sequence[str],
        count: int,
        block_ms: int | None,
        lane: Lane | None = None,
    ) -> list[tuple[str, list[Entry]]]:
        """One XREADGROUP over all node streams: [(node, entries), ...]; through `lane`
        if given (the worker's reader), else the client."""
        streams = [self.keys.queue(n) for n in nodes]
        try:
            # The command name as bytes skips redis-py's reply callback (it matches names
            # as str); a lane has none. The raw nested lists are parsed below in one pass,
            # ~1 us per entry cheaper than the callback's per-entry tuple and dict building.
            reply = await (lane.call if lane is not None else self.client.execute_command)(
                b"XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count,
                *(("BLOCK", block_ms) if block_ms is not None else ()),
                "STREAMS", *streams, *(">" for _ in streams),
            )  # fmt: skip
        except ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            # A stream (and its group) was deleted under us, e.g. by DEL or FLUSHDB
            # (Redis answers NOGROUP, or UNBLOCKED to a read blocked on it): recreate
            # and carry on rather than stop serving every node.
            await self.ensure_groups(nodes)
            return []
        return parse_read_reply(reply, len(self.keys.queue("")))

    async def settle(self, plan: SettlePlan, lane: Lane | None = None) -> SettleFlags:
        """Run the settle script for the whole plan (one round trip; through `lane` if
        given, the worker's settler, else the client). One flag per entry:
        1 settled, 0 not pending any more (settled elsewhere), 2 acked but nothing emitted
        (its run does not exist), 3 acked but its ops failed part-way, 4 refused (not
        acked, nothing written); `errors` says why for 3 and 4."""
        if not plan.items:
            return SettleFlags([], {})
        if lane is None:
            flags = await self._settle(keys=plan.keys, args=[GROUP, plan.encode()])
        else:
            args = ("EVALSHA", self._settle.sha, len(plan.keys), *plan.keys, GROUP, plan.encode())
            try:
                flags = await lane.call(*args)
            except NoScriptError:  # e.g. Redis restarted and lost its script cache
                await lane.call("SCRIPT", "LOAD", self._settle.script)
                flags = await lane.call(*args)
        return SettleFlags.parse(cast(list[Any], flags))

    async def promote(self, nodes: Sequence[str], limit: int = 1000) -> tuple[int, int]:
        """Move due delayed states of `nodes` to their streams: (moved, next_due_ms or -1)."""
        keys: list[str] = []
        for n in nodes:
            keys += (self.keys.delayed(n), self.keys.queue(n))
        moved, next_due, *problems = cast(list[Any], await self._promote(keys=keys, args=[limit]))
        for p in problems:
            text = p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)
            if text not in self._reported:  # logged once: the promoter calls every 0.5 s
                self._reported.add(text)
                log.error("delayed states not promoted (they stay delayed): %s", text)
        return int(moved), int(next_due)

    async def reclaim(
        self,
        node: str,
        consumer: str,
        min_idle_ms: int,
        count: int = 100,
        *,
        suspects: int | None = None,
        suspect_from: int = 2,
        poison_at: int | None = None,
        scan: int | None = None,
    ) -> list[tuple[bytes, int, dict[bytes, bytes]]]:
        """Claim up to `count` entries of `node` idle longer than `min_idle_ms`, in id
        order: [(entry id, deliveries before this claim, fields)]. Of the entries
        delivered `suspect_from` times or more (suspects) at most `suspects` are claimed
        (default: no limit), except those delivered `poison_at` times or more, which are
        always claimed (to be dead-lettered). At most `scan` idle entries are examined
        (default: enough to look past a few hundred skipped suspects)."""
        no_limit = count + 1
        reply = await self._reclaim(
            keys=[self.keys.queue(node)],
            args=[
                GROUP,
                consumer,
                min_idle_ms,
                count,
                no_limit if suspects is None else suspects,
                suspect_from,
                2**31 if poison_at is None else poison_at,
                max(2 * count, 1000) if scan is None else scan,
            ],
        )
        out: list[tuple[bytes, int, dict[bytes, bytes]]] = []
        for entry_id, deliveries, flat in reply:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            out.append((entry_id, int(deliveries), fields))
        return out

    async def heartbeat(self, node: str, consumer: str, entry_ids: Sequence[bytes]) -> list[bytes]:
        """Reset the idle time of our pending entries; returns ids we no longer own."""
        if not entry_ids:
            return []
        lost = await self._heartbeat(
            keys=[self.keys.queue(node)], args=[GROUP, consumer, *entry_ids]
        )
        return list(lost)

    async def redrive(
        self,
        dead_id: bytes | str,
        node: str,
        run_id: str | None,
        identifier: str,
        fields: Mapping[bytes | str, bytes | str],
        state_id: str = "",
    ) -> tuple[int, str]:
        """Move a dead letter back to `node`'s stream with `fields`: (1, '') done, (0, '')
        already gone, (-1, '') its run expired, (REDRIVE_REFUSED, why) refused with nothing
        written, (1, why) redriven but re-opening its run failed part-way."""
        run_key = self.keys.run(run_id) if run_id else self.keys.dead()
        results_key = self.keys.run_results(run_id) if run_id else self.keys.dead()
        store_key = self.keys.run_store(run_id) if run_id else self.keys.dead()
        flat: list[bytes | str] = []
        for k, v in fields.items():
            flat += (k, v)
        history_key = self.keys.run_history(run_id) if run_id else self.keys.dead()
        states_key = self.keys.run_states(run_id) if run_id else self.keys.dead()
        keys = [
            self.keys.dead(),
            self.keys.queue(node),
            run_key,
            results_key,
            store_key,
            history_key,
            states_key,
        ]
        reply = await self._redrive(keys=keys, args=[dead_id, identifier, state_id, *flat])
        if not isinstance(reply, bytes | str):
            return int(reply), ""
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        if text.startswith("1 "):
            return 1, text[2:]
        return REDRIVE_REFUSED, text

    # -- starting runs ------------------------------------------------------------------
    async def start_run(self, start: RunStart) -> bool:
        """Start a run (StateManager.trigger); False when it was started already."""
        return await self.start_runs([start]) == 1

    async def cancel_run(self, run_id: str, retention_s: int) -> str:
        """Cancel a RUNNING run (cancel_run.lua): its status after the call, CANCELLED,
        SUCCEEDED / FAILED (it had finished) or MISSING."""
        k = self.keys.for_run(run_id)  # every key of a run is on its lane
        reply = await self._cancel_run(
            keys=[
                k.run(run_id),
                k.events(),
                k.run_history(run_id),
                k.run_results(run_id),
                k.run_store(run_id),
                k.run_states(run_id),
            ],
            args=[run_id, retention_s, f.CANCELLED_OPEN],
        )
        status = reply.decode() if isinstance(reply, bytes) else str(reply)
        if status == f.CANCELLED:
            # Not in the script: on a cluster with lanes the run's keys and this
            # namespace-wide set live in different slots. Losing this write only costs
            # executions (workers would not skip the run's states); nothing is emitted.
            now_ms = int(time.time() * 1000)
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.keys.cancelled(), {run_id: now_ms}, nx=True)
            pipe.zremrangebyscore(self.keys.cancelled(), "-inf", now_ms - CANCELLED_KEEP_MS)
            await pipe.execute()
        return status

    async def retry_state(self, run_id: str, retry: StateRetry) -> tuple[int, str]:
        """Re-run a settled state of a run (retry_state.lua): (1, new id) retried, (0, id)
        it had been retried already as `id`, (RETRY_CHANGED, '') its record changed since
        it was read, (RETRY_MISSING, '') no such run, (REDRIVE_REFUSED, why) refused."""
        k = self.keys.for_run(run_id)  # every key of a run is on its lane
        keys = [
            k.run(run_id),
            k.run_states(run_id),
            k.queue(retry.node),
            k.run_history(run_id),
            k.run_results(run_id),
            k.run_store(run_id),
            k.dead(),
        ]
        for unite, xid in retry.groups.items():
            keys += (k.group(run_id, unite, xid), k.collected(run_id, unite, xid))
        reply = await self._retry_state(
            keys=keys,
            args=[
                retry.state_id,
                retry.record,
                retry.new_id,
                retry.envelope,
                retry.counter,
                int(retry.failed),
                int(retry.bad),
                retry.pointer,
                retry.dead_id,
                *retry.groups,
            ],
        )
        if isinstance(reply, list):
            done, state = reply
            return int(done), state.decode() if isinstance(state, bytes) else str(state)
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        if text == "CHANGED":
            return RETRY_CHANGED, ""
        if text == "MISSING":
            return RETRY_MISSING, ""
        return REDRIVE_REFUSED, text

    async def dead_letter_of(self, run_id: str, state_id: str, low_ms: int, high_ms: int) -> str:
        """The entry id of the dead letter of state `state_id` of run `run_id` on the run's
        lane, written between `low_ms` and `high_ms` ("" when there is none), read in pages."""
        key, low = self.keys.for_run(run_id).dead(), f"{low_ms}-0"
        state, run = state_id.encode(), run_id.encode()
        state_field, run_field = f.DEAD_STATE.encode(), f.DEAD_RUN.encode()
        while True:
            page = await self.client.xrange(key, low, f"{high_ms}-0", count=500)
            for entry_id, fields in page:
                if fields.get(state_field) == state and fields.get(run_field) == run:
                    return entry_id.decode()
            if len(page) < 500:
                return ""
            low = "(" + page[-1][0].decode()

    async def cancelled_since(self, after_ms: int) -> list[tuple[str, int]]:
        """Runs cancelled after `after_ms` (ms since the epoch), oldest first."""
        raw = await self.client.zrangebyscore(
            self.keys.cancelled(), f"({after_ms}", "+inf", withscores=True
        )
        return [(r.decode(), int(score)) for r, score in raw]

    async def start_runs(self, starts: Sequence[RunStart], chunk: int = 500) -> int:
        """Start many runs, each at most once (start_run.lua skips a run whose hash exists:
        redis-py's retry re-sends a batch whose reply was lost, with the same run ids),
        in one pipelined round trip per chunk; returns how many were started now.

        The keys a chunk's runs share (run indexes, root streams or delayed sets) are
        checked first, once each, and a bad one refuses the chunk before anything is
        written (KeyRefused); each script checks its run's own keys."""
        started = 0
        for first in range(0, len(starts), chunk):
            part = starts[first : first + chunk]
            await self._check_keys(run_start_keys(part))
            pipe = self.client.pipeline(transaction=False)
            for start in part:
                await self._start_run(
                    keys=start.script_keys(), args=start.script_args(), client=pipe
                )
            for reply in await pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception):
                    if str(reply).startswith("start_run: "):  # its own check, nothing written
                        raise KeyRefused(f"{reply} ({started} runs before it started)")
                    raise reply  # e.g. OOM or READONLY: refused before any write
                started += int(reply)
        return started

    async def _check_keys(self, wanted: dict[str, str]) -> None:
        """Raise KeyRefused unless each key holds its wanted type (or nothing) and each
        stream still has entry ids left: one pipelined round trip (TYPE of each key, and
        XINFO STREAM of each that should be a stream; its error when the key is missing
        or of another type is read through TYPE)."""
        pipe = self.client.pipeline(transaction=False)
        for key, want in wanted.items():
            pipe.type(key)
            if want == "stream":
                pipe.execute_command("XINFO", "STREAM", key)
        replies = iter(await pipe.execute(raise_on_error=False))
        for key, want in wanted.items():
            raw = next(replies)
            have = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = next(replies) if want == "stream" else None
            if have not in ("none", want):
                raise KeyRefused(f"key {key} holds a {have}, not a {want}: nothing written")
            if have == "stream" and isinstance(info, list | dict):
                # A map (redis-py's reply callback, or RESP3) or the flat RESP2 list.
                fields = (
                    info
                    if isinstance(info, dict)
                    else dict(zip(info[::2], info[1::2], strict=True))
                )
                last = fields.get(b"last-generated-id", b"")
                if stream_is_full(last.decode() if isinstance(last, bytes) else str(last)):
                    raise KeyRefused(f"stream {key} has used up its entry ids: nothing written")

    async def cron_fire(
        self,
        start: RunStart,
        version: int,
        fire_ts: int,
        marker_ttl_s: int,
        late_s: int | None = None,
    ) -> int:
        """Start `start` only if no one fired its graph for `fire_ts` yet, `version` is
        still the graph's current one and, by Redis's clock, `fire_ts` is due and (with
        `late_s`) at most `late_s` late: 1 fired, 0 already fired, -1 stale version,
        -2 not due yet, -3 too late (see lua/cron_fire.lua). Keep `late_s` below
        `marker_ttl_s`: a marker must outlive every attempt at its fire time."""
        keys = [
            self.keys.cron_marker(start.graph, fire_ts),
            self.keys.graphs(),
            *start.script_keys(),
        ]
        late = -1 if late_s is None else late_s
        args = [marker_ttl_s, start.graph, version, fire_ts, late, *start.script_args()]
        return int(await self._cron_fire(keys=keys, args=args))

    # -- run stores ---------------------------------------------------------------------
    async def store_get(self, run_id: str, key: str) -> bytes | None:
        raw: bytes | None = await self.client.hget(self.keys.for_run(run_id).run_store(run_id), key)
        return raw

    async def store_all(self, run_id: str) -> dict[bytes, bytes]:
        raw: dict[bytes, bytes] = await self.client.hgetall(
            self.keys.for_run(run_id).run_store(run_id)
        )
        return raw

    async def store_set(self, run_id: str, values: dict[str, bytes]) -> bool:
        """Write encoded values to the run's store; False when the run does not exist."""
        flat: list[str | bytes] = []
        for k, v in values.items():
            flat += (k, v)
        lane = self.keys.for_run(run_id)
        keys = [lane.run(run_id), lane.run_store(run_id)]
        return int(await self._store_set(keys=keys, args=flat)) == 1

    async def store_incr(self, run_id: str, key: str, amount: int | float) -> bytes | None:
        """Add `amount` to a number in the run's store, atomically; the new value
        (msgpack), or None when the run does not exist."""
        lane = self.keys.for_run(run_id)
        keys = [lane.run(run_id), lane.run_store(run_id)]
        reply = await self._store_incr(keys=keys, args=[key, repr(amount)])
        return reply if isinstance(reply, bytes) else None

    async def store_cas(self, run_id: str, key: str, expected: bytes | None, value: bytes) -> int:
        """Set `key` to `value` if it holds `expected` (None: if it is absent): 1 written,
        0 it held something else, -1 the run does not exist."""
        lane = self.keys.for_run(run_id)
        keys = [lane.run(run_id), lane.run_store(run_id)]
        args: list[str | bytes] = [key, expected or b"", value, "1" if expected is None else "0"]
        return int(await self._store_cas(keys=keys, args=args))

    async def store_delete(self, run_id: str, key: str) -> bool:
        return int(await self.client.hdel(self.keys.for_run(run_id).run_store(run_id), key)) == 1

    async def collected(self, run_id: str, unite: str, target_state: str) -> list[Any]:
        """What the branches of a fan-in group left for the uniting state (decoded)."""
        raw = await self.client.lrange(
            self.keys.for_run(run_id).collected(run_id, unite, target_state), 0, -1
        )
        return [unpack(r) for r in raw]

    async def delay(self, node: str, envelopes: Sequence[bytes], due_ms: int) -> None:
        """Put envelopes in `node`'s delayed set, promoted to its stream at `due_ms`."""
        await self.client.zadd(self.keys.delayed(node), dict.fromkeys(envelopes, due_ms))

    async def publish(self, node: str, envelopes: Sequence[bytes], chunk: int = 2000) -> list[str]:
        """XADD many envelopes to `node`'s stream: one script call per chunk (redis-py
        spends ~30 us building and parsing each separate command; a script call carries
        thousands). Returns entry ids."""
        stream = self.keys.queue(node)
        ids: list[str] = []
        for start in range(0, len(envelopes), chunk):
            part = envelopes[start : start + chunk]
            reply = await self._publish(keys=[stream], args=list(part))
            ids += [i.decode() for i in reply]
        return ids

    # -- consumers ----------------------------------------------------------------------
    async def prune_consumers(self, node: str, keep: str, min_idle_ms: int) -> list[str]:
        """Record `keep` (the caller) alive, and remove the consumers of `node`'s group
        that hold no pending entry and were neither active nor recorded alive for
        `min_idle_ms`: dead workers. Returns their names."""
        removed = await self._prune_consumers_script(
            keys=[self.keys.queue(node), self.keys.alive()], args=[GROUP, min_idle_ms, keep]
        )
        return [r.decode() if isinstance(r, bytes) else str(r) for r in removed]

    @cached_property
    def _prune_consumers_script(self) -> Script:
        # Registered on first use (kept here, at the end, with its one caller).
        return self.client.register_script(_lua("prune_consumers.lua"))
