"""Re-running settled states of a run: StateManager.retry_state / retry_failed.

A retry makes a new incarnation of a settled state (SUCCEEDED, FAILED or PRUNED) from its
per-state record: the same node, inputs, context, fan-in groups and branch, a new state id,
a fresh retry budget. One script (broker/lua/retry_state.lua) queues it, links the two
(`><old>` / `<<new>` in the run's states hash), re-opens the run and undoes what the old
incarnation had counted. A state is retried at most once: calling it again, concurrently
or later, returns the incarnation made; to re-run that one, retry it in turn. A succeeded
state's successors are emitted again when its new incarnation succeeds.

`plan_retry` is the pure part (record -> what the script writes); RetryMixin does the reads
and the call."""

from __future__ import annotations

import time
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker import runs as rec
from exospherehost.broker.codec import Envelope, encode, pack, unpack
from exospherehost.broker.keys import check_name
from exospherehost.broker.runs import StateLinks, StateRetry
from exospherehost.broker.streams import (
    REDRIVE_REFUSED,
    RETRY_MISSING,
    Broker,
)
from exospherehost.errors import InvalidArgument, RetryRefused, RunNotFound
from exospherehost.ids import new_id

SETTLED = {
    f.SUCCEEDED: f.SUCCEEDED_COUNT,
    f.FAILED: f.FAILED_COUNT,
    "PRUNED": f.PRUNED_COUNT,
}
"""A record status a retry can re-run -> the run-hash counter its outcome is in."""

_ATTEMPTS = 20
"""Times retry_state reads again when the record changed under it (a redrive settled in
between)."""

_DEAD_WINDOW_MS = 10 * 60 * 1000
"""Around a failed state's finish time, where its dead letter is looked for (the worker's
clock stamps the record, Redis's the dead letter's id)."""


def plan_retry(
    run_id: str,
    graph: str,
    version: int,
    state_id: str,
    raw: bytes,
    raw_pointer: bytes | None,
    dead_id: str,
    new_state: str,
    now_ms: int,
) -> StateRetry:
    """What retry_state.lua writes to re-run state `state_id` from its record `raw`;
    raises RetryRefused naming why the record cannot rebuild it."""
    record: dict[str, Any] = unpack(raw)
    what = f"state {state_id} of run {run_id}"
    status = record.get(rec.REC_STATUS)
    if status not in SETTLED:
        raise RetryRefused(
            f"cannot retry {what}: it is {status} (in flight); a state is retried once it "
            f"has settled (SUCCEEDED, FAILED or PRUNED)"
        )
    for key, name in ((rec.REC_INPUTS, "inputs"), (rec.REC_CTX, "context")):
        value = record.get(key)
        if isinstance(value, dict) and rec.TRUNCATED in value:
            raise RetryRefused(
                f"cannot retry {what}: its record holds its {name} truncated "
                f"({value[rec.TRUNCATED]} bytes of msgpack, over the {rec.RECORD_FIELD_MAX} "
                f"byte cap of a record field), so it cannot be rebuilt; trigger a new run instead"
            )
    inputs, ctx = record.get(rec.REC_INPUTS), record.get(rec.REC_CTX) or {}
    groups, path = record.get(rec.REC_GROUPS) or {}, record.get(rec.REC_PATH) or []
    node, ident = record.get(rec.REC_NODE), record.get(rec.REC_IDENTIFIER)
    if not (isinstance(inputs, dict) and isinstance(node, str) and isinstance(ident, str)):
        raise RetryRefused(f"cannot retry {what}: its record is not one this SDK wrote")
    env = Envelope(
        new_state,
        inputs,
        run_id,
        graph,
        version,
        ident,
        ctx,
        groups=dict(groups),
        path=list(path),
        unite=record.get(rec.REC_UNITE),
    )
    pointer = b""
    if raw_pointer is not None:
        pointer = pack([unpack(raw_pointer)[0], now_ms])  # a sibling of what it retries
    return StateRetry(
        state_id=state_id,
        record=raw,
        new_id=new_state,
        envelope=encode(env),
        node=node,
        counter=SETTLED[status] + ident,
        failed=status == f.FAILED,
        bad=status != f.SUCCEEDED,
        pointer=pointer,
        dead_id=dead_id,
        groups=dict(groups),
    )


class RetryMixin:
    """StateManager.retry_state / retry_failed; needs `broker`."""

    broker: Broker

    async def retry_state(self, run_id: str, state_id: str) -> str:
        """Re-run a settled state of a run (SUCCEEDED, FAILED or PRUNED) with its original
        inputs, as a new state with a fresh retry budget; its successors are emitted again
        when it succeeds. Re-opens the run (RUNNING again; a failure it counted is undone;
        a fan-in group whose unite did not fire because of it is decided again). Returns
        the new state's id. Exactly once: a state is retried at most once, however often
        and however concurrently this is called; later calls return the same new id. To
        re-run it again, retry that new state. Raises RunNotFound, or RetryRefused saying
        why (not settled yet, run cancelled, no record to rebuild it from)."""
        check_name("run id", run_id)
        if not isinstance(state_id, str) or not state_id:
            raise InvalidArgument(f"state_id must be a non-empty string, got {state_id!r}")
        broker = self.broker.for_run(run_id)
        for _ in range(_ATTEMPTS):
            head = await self._run_head(broker, run_id)
            raw, raw_pointer, retried_as, _ = await broker.runs.state_raw(run_id, state_id)
            if retried_as is not None:
                return retried_as
            if raw is None or unpack(raw).get(rec.REC_STATUS) not in SETTLED:
                raise RetryRefused(
                    f"cannot retry state {state_id} of run {run_id}: "
                    + (
                        "it has not settled yet (it is queued, running or due for a retry)"
                        if raw is not None or raw_pointer is not None
                        else "it has no record (not a state of this run, or the run's "
                        "Runtimes keep none: Runtime(state_records='off'))"
                    )
                )
            record = unpack(raw)
            dead_id = ""
            if record.get(rec.REC_STATUS) == f.FAILED:
                dead_id = await self._dead_letter_of(broker, run_id, state_id, record)
            plan = plan_retry(
                run_id, *head, state_id, raw, raw_pointer, dead_id, new_id(), _now_ms()
            )
            done, got = await broker.retry_state(run_id, plan)
            if done in (0, 1):
                return got  # made now (1), or by a call that won the race (0)
            if done == RETRY_MISSING:
                raise RunNotFound(f"run {run_id!r} not found (unknown, or expired after retention)")
            if done == REDRIVE_REFUSED:
                raise RetryRefused(f"cannot retry state {state_id} of run {run_id}: {got}")
            # RETRY_CHANGED: settled again (a redrive) since it was read: read again.
        raise RetryRefused(
            f"cannot retry state {state_id} of run {run_id}: its record kept changing under "
            f"{_ATTEMPTS} attempts (settles racing); try again"
        )

    async def retry_failed(self, run_id: str) -> list[str]:
        """Retry every FAILED state of a run not retried yet (retry_state each): the ids of
        the new states, [] when nothing failed. Concurrent calls retry each failed state
        once (a call that finds it retried already leaves it out)."""
        check_name("run id", run_id)
        broker = self.broker.for_run(run_id)
        await self._run_head(broker, run_id)
        links = StateLinks()
        records, _ = await broker.runs.state_records(run_id, links)
        failed = sorted(
            sid
            for sid, r in records.items()
            if r.get(rec.REC_STATUS) == f.FAILED and sid not in links.retried_as
        )
        return [await self.retry_state(run_id, sid) for sid in failed]

    async def _run_head(self, broker: Broker, run_id: str) -> tuple[str, int]:
        """(graph, version) of the run; RunNotFound when it does not exist."""
        head = await broker.runs.graph_of(run_id)
        if head is None:
            raise RunNotFound(f"run {run_id!r} not found (unknown, or expired after retention)")
        return head

    async def _dead_letter_of(
        self, broker: Broker, run_id: str, state_id: str, record: dict[str, Any]
    ) -> str:
        """The entry id of a failed state's dead letter on its run's lane ("" when it is
        gone: redriven, deleted or trimmed), looked for around the record's finish time."""
        finished = int(record.get(rec.REC_FINISHED_MS) or 0)
        return await broker.dead_letter_of(
            run_id, state_id, max(0, finished - _DEAD_WINDOW_MS), finished + _DEAD_WINDOW_MS
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
