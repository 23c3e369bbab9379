"""Pure settle planning: a batch of outcomes -> one SettlePlan (one script call).

Every decision about where a finished state goes (successors, results, retry, dead letter,
run bookkeeping) is made here, without I/O, so it is testable without Redis. The one for
a failure (retry, or dead letter and why) is also recorded on its outcome (`Failed.fate`):
the stats and the failure log read it there instead of deciding again."""

from __future__ import annotations

import dataclasses
import time
import traceback as tb
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker import fields as f
from exospherehost.broker import runs as rec
from exospherehost.broker.codec import Envelope, decode, encode, encode_successor, pack
from exospherehost.broker.keys import Keys
from exospherehost.broker.plan import DeadLetterRecord, SettlePlan
from exospherehost.errors import SizeLimitExceeded
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.graph.retry import retry_delay_ms
from exospherehost.ids import new_id
from exospherehost.limits import SizeLimits, biggest, envelope_parts
from exospherehost.models import RetryPolicyModel
from exospherehost.runtime.outcomes import (
    Completed,
    DeadLettered,
    Failed,
    Job,
    Malformed,
    Outcome,
    Pruned,
    Released,
    Requeued,
    Retry,
)

STATE_RECORD_LEVELS = ("full", "off")
"""Runtime(state_records=...): "full" writes a record of every settle of a graph state
(StateManager.state / run_graph); "off" writes none."""

RECORD_FIELD_MAX = rec.RECORD_FIELD_MAX

_PREVIEW_CHARS = 200


@dataclass(slots=True)
class SettleConfig:
    keys: Keys
    graphs: dict[tuple[str, int], CompiledGraph]
    default_retry: RetryPolicyModel = field(default_factory=RetryPolicyModel)
    output_maxlen: int = 100_000
    run_retention_s: int = 86_400
    dead_maxlen: int = 100_000  # cap of the dead-letter stream (MAXLEN ~); 0: none
    worker: str = ""  # the consumer name, in state records
    state_records: str = "full"  # STATE_RECORD_LEVELS
    record_field_max: int = RECORD_FIELD_MAX
    clock: Callable[[], float] = time.time
    limits: SizeLimits = field(default_factory=SizeLimits.from_env)


@dataclass(frozen=True, slots=True)
class _End:
    """How a graph state ended without success: its history status, its run counter."""

    status: str
    counter: str
    failed: int  # added to the run's failed count (a failed run ends FAILED)


_PRUNED = _End(f.PRUNED, f.PRUNED_COUNT, 0)
_FAILED = _End(f.FAILED, f.FAILED_COUNT, 1)


def plan_settle(
    outcomes: Iterable[Outcome], cfg: SettleConfig, max_deliveries: int = 0
) -> SettlePlan:
    """One plan for `outcomes`. `max_deliveries` (0: no limit) is the poison limit: a
    state released at shutdown after that many deliveries without a settle (counted
    across its releases) is dead-lettered instead of released once more. Each Failed
    outcome gets the plan's decision for it in its `fate`."""
    planner = _Planner(cfg)
    plan = planner.plan
    for outcome in outcomes:
        if isinstance(outcome, Released) and max_deliveries > 0:
            outcome = _poisoned(outcome, max_deliveries)
        mark = plan.mark()
        try:
            planner.outcome(outcome)
        except Exception as exc:
            # E.g. an output msgpack cannot carry. Only this state is affected: it is
            # settled as a permanent failure with the reason, the batch goes on.
            plan.rollback(mark)
            if isinstance(outcome, Malformed):
                raise
            if isinstance(exc, SizeLimitExceeded):
                reason = str(exc)  # names the state, the field and the sizes already
            else:
                reason = f"cannot settle {type(outcome).__name__}: {exc}"
            instead = Failed(outcome.job, reason, tb.format_exc(), permanent=True)
            planner.outcome(instead)
            if isinstance(outcome, Failed):
                outcome.fate = instead.fate
    return plan


def released_envelope(job: Job) -> bytes:
    """The entry a released state goes back as: always one envelope field, so it keeps its
    state id (a plain entry's id is its state id; the envelope's `f` flag keeps its string
    inputs coerced as before) and a bounded size whatever its field count, and it carries
    the deliveries so far (the new entry's Redis count starts at 0 again). Decoded afresh
    from the fields read: execution may have changed `job.env` (a unite's inputs)."""
    env = decode(job.entry_id, job.fields)
    env.deliveries += job.deliveries
    return encode(env)


def deliveries_so_far(job: Job) -> int:
    """Times the state was handed to a worker without being settled: this entry's
    deliveries plus those carried over from entries it was released from."""
    return job.env.deliveries + job.deliveries


def _poisoned(released: Released, max_deliveries: int) -> Released | Failed:
    total = deliveries_so_far(released.job)
    if total < max_deliveries:
        return released
    reason = (
        f"delivered {total} times without being settled: its worker stopped or died "
        f"each time before it finished (poison message)"
    )
    return Failed(released.job, reason, "", permanent=True, executed=False)


def as_failure(outcome: Outcome, reason: str) -> Failed | None:
    """A state whose settle was refused, as a permanent failure with the reason (dead
    letter + run bookkeeping); None for a malformed entry (its settle is one already)."""
    if isinstance(outcome, Malformed):
        return None
    return Failed(outcome.job, reason, "", permanent=True)


def plan_dead_letters(
    failures: Iterable[tuple[Outcome, str]], cfg: SettleConfig, *, acked: bool
) -> SettlePlan:
    """Last resort: only a dead letter per state (no run bookkeeping, no outputs), for
    states whose settle failed or was refused. `acked`: their entries were acked by the
    failed call already, so the dead letters are written without an ack."""
    planner = _Planner(cfg)
    plan = planner.plan
    for outcome, reason in failures:
        if isinstance(outcome, Malformed):
            plan.entry(outcome.stream, outcome.entry_id, ack=not acked)
            plan.dead_letter(
                cfg.keys.dead(), planner.malformed_letter(outcome, reason), cfg.dead_maxlen
            )
        else:
            job = outcome.job
            plan.entry(job.stream, job.entry_id, ack=not acked)
            plan.dead_letter(cfg.keys.dead(), planner.job_letter(job, reason, ""), cfg.dead_maxlen)
    return plan


def _capped(record: dict[str, Any], cap: int) -> bytes:
    """msgpack of `record`, any of its RECORD_FIELDS over `cap` bytes (or that msgpack
    cannot carry) replaced by a marker {TRUNCATED: its size in bytes (0: not packable),
    "preview": its first characters}. One pack when the whole record fits (the usual case)."""
    try:
        packed = pack(record)
    except TypeError:
        packed = b""
    if packed and len(packed) <= cap:
        return packed
    for name in rec.RECORD_FIELDS:
        if name in record:
            value = record[name]
            try:
                size = len(pack(value))
            except TypeError:
                size = 0
            if size == 0 or size > cap:
                text = value if isinstance(value, str) else repr(value)
                record[name] = {rec.TRUNCATED: size, "preview": text[:_PREVIEW_CHARS]}
    return pack(record)


def _policy(env: Envelope, cfg: SettleConfig) -> RetryPolicyModel:
    graph = cfg.graphs.get((env.graph or "", env.graph_version)) if env.run_id else None
    return graph.retry_policy if graph is not None else cfg.default_retry


class _Planner:
    """Plans outcomes into one SettlePlan under one config: the config and the plan are
    what every step shares, so they live here instead of in each step's parameters."""

    __slots__ = ("cfg", "keys", "now_ms", "plan", "state_limit")

    def __init__(self, cfg: SettleConfig) -> None:
        self.cfg = cfg
        self.keys = cfg.keys
        self.plan = SettlePlan()
        self.state_limit = cfg.limits.state_bytes  # looked up once per plan, not per state
        # One clock reading per plan (a batch is planned in about a millisecond): the
        # time of its records, history lines and dead letters.
        self.now_ms = int(cfg.clock() * 1000)

    def outcome(self, outcome: Outcome) -> None:
        plan = self.plan
        if isinstance(outcome, Malformed):
            plan.entry(outcome.stream, outcome.entry_id)
            plan.dead_letter(
                self.keys.dead(),
                self.malformed_letter(outcome, outcome.reason),
                self.cfg.dead_maxlen,
            )
            return
        job = outcome.job
        plan.entry(job.stream, job.entry_id)
        env = job.env
        if isinstance(outcome, Completed):
            self.completed(outcome)
        elif isinstance(outcome, Failed):
            self.failed(outcome)
        elif isinstance(outcome, Pruned):
            if env.run_id is None:
                data = pack(outcome.data)
                if len(data) > self.state_limit:
                    raise self.too_big(job, "its prune data", len(data), [("data", outcome.data)])
                self.output(job, f.PRUNED, f.OUT_DATA, data)
            else:
                self.ended(job, _PRUNED, str(outcome.data), pruned=outcome.data)
        elif isinstance(outcome, Requeued):
            # Settled: deliveries carried from earlier releases start afresh.
            member = encode(dataclasses.replace(env, deliveries=0) if env.deliveries else env)
            plan.delay(self.keys.delayed(job.node), outcome.delay_ms, member)
        elif isinstance(outcome, Released):
            plan.queue(job.stream, released_envelope(job))

    def completed(self, done: Completed) -> None:
        job, env, keys, plan = done.job, done.job.env, self.keys, self.plan
        outputs: Any = done.outputs if done.fanout else done.outputs[0]
        if env.run_id is None:
            data = pack(outputs)
            size = len(data)
            if size > self.state_limit:
                raise self.too_big(job, "what it returned", size, _output_parts(done.outputs))
            self.output(job, f.SUCCEEDED, f.OUT_OUTPUTS, data)
            plan.size += size
            return
        state_limit = self.state_limit
        emitted = 0  # bytes of envelopes and results this state emits: at most settle_bytes
        graph = self.cfg.graphs[(env.graph or "", env.graph_version)]
        ident = env.identifier or ""
        completion = graph.complete(
            ident, env.state_id, env.ctx, env.groups, env.path, done.outputs, done.fanout
        )
        counters: dict[str, int] = {f.SUCCEEDED_COUNT + ident: 1}
        children: list[str] = []  # the successors' state ids
        run_id, graph_name, version = env.run_id, env.graph, env.graph_version
        for succ, grp in completion.successors:
            child = succ.node
            child_id = new_id()
            data = encode_successor(
                child_id,
                succ.inputs,
                run_id,
                graph_name,
                version,
                child.identifier,
                succ.ctx,
                grp,
                succ.path,
            )
            size = len(data)
            emitted += size
            if size > state_limit:
                raise self.too_big(
                    job,
                    f"the state it emits for node {child.node_name} (identifier "
                    f"{child.identifier})",
                    size,
                    envelope_parts(succ.inputs, succ.ctx),
                )
            plan.queue(keys.queue(child.node_name), data)
            children.append(child_id)
            created = f.CREATED + child.identifier
            counters[created] = counters.get(created, 0) + 1
        for step in completion.groups:
            # Group ops go before the run step: a firing unite re-opens the run first.
            unite = graph.nodes[step.unite]
            gkey = keys.group(env.run_id, step.unite, step.xid)
            if step.init is not None:
                u_env = Envelope(
                    new_id(),
                    {},
                    env.run_id,
                    env.graph,
                    env.graph_version,
                    step.unite,
                    step.init,
                    groups=step.outer,
                    path=list(env.path),
                    unite=step.xid,
                )
                strategy = graph.unites[step.unite].strategy.value
                data = encode(u_env)
                emitted += len(data)
                if len(data) > state_limit:
                    raise self.too_big(
                        job,
                        f"the uniting state it opens ({step.unite})",
                        len(data),
                        envelope_parts({}, u_env.ctx),
                    )
                plan.group_init(gkey, 0, strategy, data, step.unite)
            plan.group_step(
                group_key=gkey,
                collected_key=keys.collected(env.run_id, step.unite, step.xid),
                unite_queue=keys.queue(unite.node_name),
                run_key=keys.run(env.run_id),
                open_delta=step.open_delta,
                bad_delta=0,
                retention_s=self.cfg.run_retention_s,
                outer_groups=[keys.group(env.run_id, o, x) for o, x in step.outer.items()],
                collected=(collected := [pack(c) for c in step.collected]),
            )
            emitted += sum(map(len, collected))
        if self.cfg.state_records != "off":
            self.record(job, f.SUCCEEDED, rec.REC_OUTPUTS, outputs, children)
        if completion.leaf:
            result = {
                f.RESULT_IDENTIFIER: ident,
                f.RESULT_STATE: env.state_id,
                f.RESULT_OUTPUTS: outputs,
            }
            data = pack(result)
            size = len(data)
            emitted += size
            if size > state_limit:
                raise self.too_big(job, "its result", size, _output_parts(done.outputs))
            plan.rpush(keys.run_results(env.run_id), data)
        if emitted > self.cfg.limits.settle_bytes:
            raise self.too_big(
                job,
                f"everything it emits ({len(completion.successors)} states)",
                emitted,
                _output_parts(done.outputs),
                "settle_bytes",
            )
        plan.size += emitted
        self.run_step(
            env,
            open_delta=len(completion.successors) - 1,
            counters=counters,
            history=self.history(job, f.SUCCEEDED),
        )

    def too_big(
        self,
        job: Job,
        what: str,
        size: int,
        parts: list[tuple[str, Any]],
        attr: str = "state_bytes",
    ) -> SizeLimitExceeded:
        """The error failing a state whose outputs do not fit (deterministic: the state
        is dead-lettered without retries, its run ends FAILED); it names the state, what
        does not fit, the sizes and the biggest fields."""
        env = job.env
        ident = f", identifier {env.identifier}" if env.identifier else ""
        return self.cfg.limits.exceeded(
            f"node {job.node} (state {env.state_id}{ident}):",
            what,
            size,
            attr,
            "biggest: " + biggest(parts),
        )

    def failed(self, failed: Failed) -> None:
        """Another attempt unless the failure is permanent or the retry budget of the
        state's graph version (or the Runtime default) is spent; else a dead letter. The
        decision goes on the outcome once its ops are planned (none if they raise)."""
        job, env = failed.job, failed.job.env
        policy = _policy(env, self.cfg)
        if not failed.permanent and env.attempt < policy.max_retries:
            env2 = Envelope(
                env.state_id,
                env.inputs,
                env.run_id,
                env.graph,
                env.graph_version,
                env.identifier,
                env.ctx,
                env.attempt + 1,
                env.foreign,
                env.groups,
                env.path,
                env.unite,
            )
            delay = retry_delay_ms(policy, env.attempt + 1)
            self.plan.delay(self.keys.delayed(job.node), delay, encode(env2))
            if env.run_id is not None:
                if self.cfg.state_records != "off":
                    self.record(job, "RETRYING", rec.REC_ERROR, failed.error)
                self.run_step(
                    env,
                    open_delta=0,
                    counters={f"{f.RETRIED_COUNT}{env.identifier}": 1},
                    history=self.history(job, "RETRYING", failed.error),
                )
            failed.fate = Retry(env.attempt + 2, policy.max_retries + 1, delay)
            return
        self.plan.dead_letter(
            self.keys.dead(),
            self.job_letter(job, failed.error, failed.traceback),
            self.cfg.dead_maxlen,
        )
        if env.run_id is None:
            self.output(job, f.FAILED, f.OUT_ERROR, failed.error)
        else:
            self.ended(job, _FAILED, failed.error, error=failed.error)
        failed.fate = DeadLettered.PERMANENT if failed.permanent else DeadLettered.RETRIES_SPENT

    def ended(
        self,
        job: Job,
        end: _End,
        note: str,
        *,
        error: str = "",
        pruned: dict[str, Any] | None = None,
    ) -> None:
        """A graph state ended without success (pruned, or failed for good): its fan-in
        groups lose a member and the run one open state. A dead letter already in the
        entry is written even if the run no longer exists (the run's ops start after it)."""
        env = job.env
        self.plan.run_ops_start_here()
        self.ended_in_groups(env)
        if self.cfg.state_records != "off":
            if pruned is not None:
                self.record(job, end.status, rec.REC_PRUNED, pruned)
            else:
                self.record(job, end.status, rec.REC_ERROR, error)
        self.run_step(
            env,
            open_delta=-1,
            failed=end.failed,
            counters={f"{end.counter}{env.identifier}": 1},
            history=self.history(job, end.status, note),
        )

    def ended_in_groups(self, env: Envelope) -> None:
        """A state failed for good or was pruned: its groups lose a member and count it bad
        (an ALL_SUCCESS unite then does not fire; an ALL_DONE one still does)."""
        keys = self.keys
        graph = self.cfg.graphs.get((env.graph or "", env.graph_version))
        run_id = env.run_id or ""
        for unite_id, xid in env.groups.items():
            if graph is None or unite_id not in graph.nodes:
                continue
            self.plan.group_step(
                group_key=keys.group(run_id, unite_id, xid),
                collected_key=keys.collected(run_id, unite_id, xid),
                unite_queue=keys.queue(graph.nodes[unite_id].node_name),
                run_key=keys.run(run_id),
                open_delta=-1,
                bad_delta=1,
                retention_s=self.cfg.run_retention_s,
                outer_groups=[
                    keys.group(run_id, o, env.groups.get(o, ""))
                    for o in graph.nodes[unite_id].groups
                ],
                collected=[],
            )

    def record(
        self, job: Job, status: str, name: str, detail: Any, children: Sequence[str] = ()
    ) -> None:
        """The state's record (field `<state id>` of the run's states hash), and a parent
        pointer for each successor it created; one HSET among the entry's run ops, so it
        is written only if the run exists. `name`, `detail`: its outputs, error or prune
        data (one field, given as a pair: no dict to merge per state)."""
        env, cfg = job.env, self.cfg
        now = self.now_ms
        record: dict[str, Any] = {
            rec.REC_NODE: job.node,
            rec.REC_IDENTIFIER: env.identifier,
            rec.REC_STATUS: status,
            rec.REC_ATTEMPT: env.attempt + 1,
            rec.REC_INPUTS: env.inputs,
            # When it was queued: the ms part of its entry id.
            rec.REC_QUEUED_MS: int(ms) if (ms := job.entry_id.partition(b"-")[0]).isdigit() else 0,
            rec.REC_STARTED_MS: int(job.started * 1000),
            rec.REC_FINISHED_MS: now,
            rec.REC_WORKER: cfg.worker,
            name: detail,
        }
        if env.groups:
            record[rec.REC_GROUPS] = env.groups
        if env.unite is not None:
            record[rec.REC_UNITE] = env.unite
        # ctx and path complete the envelope: StateManager.retry_state rebuilds the state
        # from its record.
        if env.ctx:
            record[rec.REC_CTX] = env.ctx
        if env.path:
            record[rec.REC_PATH] = env.path
        packed = _capped(record, cfg.record_field_max)
        pairs: list[Any] = [env.state_id, packed]
        size = len(packed)
        if children:
            pointer = pack([env.state_id, now])
            for child in children:
                pairs += (rec.REC_PARENT_PREFIX + child, pointer)
            size += len(children) * (len(pointer) + 24)
        self.plan.size += size  # counted towards settle_bytes (the worker splits a call)
        self.plan.hset_pairs(self.keys.run_states(env.run_id or ""), pairs)

    def history(self, job: Job, status: str, error: str = "") -> bytes:
        """One line of the run's history (the run step appends it only if the run exists)."""
        env = job.env
        record = {
            f.HIST_STATE: env.state_id,
            f.HIST_IDENTIFIER: env.identifier,
            f.HIST_NODE: job.node,
            f.HIST_STATUS: status,
            f.HIST_ATTEMPT: env.attempt + 1,
            f.HIST_ERROR: error,
            f.HIST_TIME_MS: self.now_ms,
        }
        return pack(record)

    def run_step(
        self,
        env: Envelope,
        *,
        open_delta: int,
        counters: dict[str, int],
        history: bytes,
        failed: int = 0,
    ) -> None:
        keys, run_id = self.keys, env.run_id or ""
        self.plan.run_step(
            run_key=keys.run(run_id),
            events_key=keys.events(),
            run_id=run_id,
            open_delta=open_delta,
            failed_delta=failed,
            retention_s=self.cfg.run_retention_s,
            history_key=keys.run_history(run_id),
            history=history,
            # Only a step closing more states than it opens can end the run; the others
            # leave these KEYS out (fewer keys per settle call to send and to look up).
            expire_with_run=(
                [keys.run_results(run_id), keys.run_store(run_id), keys.run_states(run_id)]
                if open_delta < 0
                else []
            ),
            counters=counters,
        )

    def output(self, job: Job, status: str, field: str, value: bytes | str) -> None:
        """The result of a graphless state on its node's output stream (capped). The hot
        path of a drain: fields go straight into the op, no dict in between."""
        maxlen = self.cfg.output_maxlen
        if maxlen == 0:
            return  # fire-and-forget: the Runtime keeps no results of graphless states
        fields = (f.OUT_STATE, job.env.state_id, f.OUT_STATUS, status, field, value)
        self.plan.xadd_pairs(self.keys.output(job.node), maxlen, fields)

    def job_letter(self, job: Job, error: str, traceback: str) -> DeadLetterRecord:
        env = job.env
        return DeadLetterRecord(
            node=job.node,
            state=env.state_id,
            run=env.run_id or "",
            identifier=env.identifier or "",
            attempts=env.attempt + 1,
            deliveries=job.deliveries + env.deliveries,
            error=error,
            traceback=traceback,
            time_ms=self.now_ms,
            entry=job.entry_id,
            original=pack(job.fields),
        )

    def malformed_letter(self, malformed: Malformed, error: str) -> DeadLetterRecord:
        """A dead letter of an entry that never decoded: no envelope to take ids from."""
        return DeadLetterRecord(
            node=malformed.node,
            state=malformed.entry_id.decode(),
            run="",
            identifier="",
            attempts=0,
            deliveries=malformed.deliveries,
            error=error,
            traceback="",
            time_ms=self.now_ms,
            entry=malformed.entry_id,
            original=pack(malformed.fields),
        )


def _output_parts(outputs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    if len(outputs) == 1:
        return [("outputs", outputs[0])]
    return [(f"outputs[{i}]", out) for i, out in enumerate(outputs[:100])]
