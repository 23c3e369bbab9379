"""Pure settle planning: a batch of outcomes -> one SettlePlan (one script call).

Every decision about where a finished state goes (successors, results, retry, dead letter,
run bookkeeping) is made here, without I/O, so it is testable without Redis."""

from __future__ import annotations

import dataclasses
import time
import traceback as tb
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from exospherehost.broker.codec import Envelope, decode, encode, pack
from exospherehost.broker.keys import ENVELOPE_FIELD, Keys
from exospherehost.broker.plan import SettlePlan
from exospherehost.graph.compiled import CompiledGraph
from exospherehost.graph.retry import retry_delay_ms
from exospherehost.ids import new_id
from exospherehost.models import RetryPolicyModel
from exospherehost.runtime.outcomes import (
    Completed,
    Failed,
    Job,
    Malformed,
    Outcome,
    Pruned,
    Released,
    Requeued,
)


@dataclass(slots=True)
class SettleConfig:
    keys: Keys
    graphs: dict[tuple[str, int], CompiledGraph]
    default_retry: RetryPolicyModel = field(default_factory=RetryPolicyModel)
    output_maxlen: int = 100_000
    run_retention_s: int = 86_400
    clock: Callable[[], float] = time.time


def plan_settle(
    outcomes: Iterable[Outcome], cfg: SettleConfig, max_deliveries: int = 0
) -> SettlePlan:
    """One plan for `outcomes`. `max_deliveries` (0: no limit) is the poison limit: a
    state released at shutdown after that many deliveries without a settle (counted
    across its releases) is dead-lettered instead of released once more."""
    plan = SettlePlan()
    for outcome in outcomes:
        if isinstance(outcome, Released) and max_deliveries > 0:
            outcome = _poisoned(outcome, max_deliveries)
        mark = plan.mark()
        try:
            _plan_one(plan, outcome, cfg)
        except Exception as exc:
            # E.g. an output msgpack cannot carry. Only this state is affected: it is
            # settled as a permanent failure with the reason, the batch goes on.
            plan.rollback(mark)
            if isinstance(outcome, Malformed):
                raise
            reason = f"cannot settle {type(outcome).__name__}: {exc}"
            _plan_one(plan, Failed(outcome.job, reason, tb.format_exc(), permanent=True), cfg)
    return plan


def _plan_one(plan: SettlePlan, outcome: Outcome, cfg: SettleConfig) -> None:
    if isinstance(outcome, Malformed):
        ops = plan.entry(outcome.stream, outcome.entry_id)
        _dead_letter(
            plan,
            ops,
            cfg,
            outcome.node,
            outcome.entry_id,
            outcome.fields,
            None,
            outcome.reason,
            "",
            outcome.deliveries,
        )
        return
    job = outcome.job
    ops = plan.entry(job.stream, job.entry_id)
    env = job.env
    if isinstance(outcome, Completed):
        _completed(plan, ops, outcome, cfg)
    elif isinstance(outcome, Failed):
        _failed(plan, ops, outcome, cfg)
    elif isinstance(outcome, Pruned):
        if env.run_id is None:
            _output(plan, ops, cfg, job, "PRUNED", "data", pack(outcome.data))
        else:
            _ended(plan, ops, cfg, job, "PRUNED", "p", str(outcome.data))
    elif isinstance(outcome, Requeued):
        # Settled: deliveries carried from earlier releases start afresh.
        member = encode(dataclasses.replace(env, deliveries=0) if env.deliveries else env)
        plan.delay(ops, cfg.keys.delayed(job.node), outcome.delay_ms, member)
    elif isinstance(outcome, Released):
        plan.xadd_pairs(ops, job.stream, 0, (ENVELOPE_FIELD, released_envelope(job)))


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
    return Failed(released.job, reason, "", permanent=True)


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
    plan = SettlePlan()
    for outcome, reason in failures:
        if isinstance(outcome, Malformed):
            ops = plan.entry(outcome.stream, outcome.entry_id, ack=not acked)
            _dead_letter(
                plan, ops, cfg, outcome.node, outcome.entry_id, outcome.fields, None,
                reason, "", outcome.deliveries,
            )  # fmt: skip
        else:
            job = outcome.job
            ops = plan.entry(job.stream, job.entry_id, ack=not acked)
            _dead_letter(
                plan, ops, cfg, job.node, job.entry_id, job.fields, job.env, reason, "",
                job.deliveries,
            )  # fmt: skip
    return plan


def _completed(plan: SettlePlan, ops: list[list[Any]], done: Completed, cfg: SettleConfig) -> None:
    job, env = done.job, done.job.env
    outputs: Any = done.outputs if done.fanout else done.outputs[0]
    if env.run_id is None:
        _output(plan, ops, cfg, job, "SUCCEEDED", "outputs", pack(outputs))
        return
    graph = cfg.graphs[(env.graph or "", env.graph_version)]
    ident = env.identifier or ""
    completion = graph.complete(
        ident, env.state_id, env.ctx, env.groups, env.path, done.outputs, done.fanout
    )
    counters: dict[str, int] = {f"s:{ident}": 1}
    for succ, grp in completion.successors:
        child = succ.node
        nxt = Envelope(
            new_id(),
            succ.inputs,
            env.run_id,
            env.graph,
            env.graph_version,
            child.identifier,
            succ.ctx,
            0,
            False,
            grp,
            list(succ.path),
        )
        plan.xadd_pairs(ops, cfg.keys.queue(child.node_name), 0, (ENVELOPE_FIELD, encode(nxt)))
        created = f"c:{child.identifier}"
        counters[created] = counters.get(created, 0) + 1
    for step in completion.groups:
        # Group ops go before the run step: a firing unite re-opens the run first.
        unite = graph.nodes[step.unite]
        gkey = cfg.keys.group(env.run_id, step.unite, step.xid)
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
            plan.group_init(ops, gkey, 0, strategy, encode(u_env), step.unite)
        plan.group_step(
            ops,
            group_key=gkey,
            collected_key=cfg.keys.collected(env.run_id, step.unite, step.xid),
            unite_queue=cfg.keys.queue(unite.node_name),
            run_key=cfg.keys.run(env.run_id),
            open_delta=step.open_delta,
            bad_delta=0,
            retention_s=cfg.run_retention_s,
            outer_groups=[cfg.keys.group(env.run_id, o, x) for o, x in step.outer.items()],
            collected=[pack(c) for c in step.collected],
        )
    if completion.leaf:
        result = {"identifier": ident, "state": env.state_id, "outputs": outputs}
        plan.rpush(ops, cfg.keys.run_results(env.run_id), pack(result))
    _run_step(
        plan,
        ops,
        cfg,
        env,
        open_delta=len(completion.successors) - 1,
        counters=counters,
        history=_history(cfg, job, "SUCCEEDED"),
    )


def _ended(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    job: Job,
    status: str,
    counter: str,
    note: str,
    failed: int = 0,
) -> None:
    """A graph state ended without success (pruned, or failed for good): its fan-in
    groups lose a member and the run one open state. A dead letter already in `ops` is
    written even if the run no longer exists (the run's ops start after it)."""
    env = job.env
    open_at = len(ops)
    _ended_in_groups(plan, ops, cfg, env)
    _run_step(
        plan,
        ops,
        cfg,
        env,
        open_delta=-1,
        failed=failed,
        counters={f"{counter}:{env.identifier}": 1},
        history=_history(cfg, job, status, note),
        open_at=open_at,
    )


def _ended_in_groups(
    plan: SettlePlan, ops: list[list[Any]], cfg: SettleConfig, env: Envelope
) -> None:
    """A state failed for good or was pruned: its groups lose a member and count it bad
    (an ALL_SUCCESS unite then does not fire; an ALL_DONE one still does)."""
    graph = cfg.graphs.get((env.graph or "", env.graph_version))
    run_id = env.run_id or ""
    for unite_id, xid in env.groups.items():
        if graph is None or unite_id not in graph.nodes:
            continue
        plan.group_step(
            ops,
            group_key=cfg.keys.group(run_id, unite_id, xid),
            collected_key=cfg.keys.collected(run_id, unite_id, xid),
            unite_queue=cfg.keys.queue(graph.nodes[unite_id].node_name),
            run_key=cfg.keys.run(run_id),
            open_delta=-1,
            bad_delta=1,
            retention_s=cfg.run_retention_s,
            outer_groups=[
                cfg.keys.group(run_id, o, env.groups.get(o, ""))
                for o in graph.nodes[unite_id].groups
            ],
            collected=[],
        )


def _failed(plan: SettlePlan, ops: list[list[Any]], failed: Failed, cfg: SettleConfig) -> None:
    job, env = failed.job, failed.job.env
    if will_retry(failed, cfg):
        policy = _policy(env, cfg)
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
        plan.delay(ops, cfg.keys.delayed(job.node), delay, encode(env2))
        if env.run_id is not None:
            _run_step(
                plan,
                ops,
                cfg,
                env,
                open_delta=0,
                counters={f"r:{env.identifier}": 1},
                history=_history(cfg, job, "RETRYING", failed.error),
            )
        return
    _dead_letter(
        plan,
        ops,
        cfg,
        job.node,
        job.entry_id,
        job.fields,
        env,
        failed.error,
        failed.traceback,
        job.deliveries,
    )
    if env.run_id is None:
        _output(plan, ops, cfg, job, "FAILED", "error", failed.error)
    else:
        _ended(plan, ops, cfg, job, "FAILED", "f", failed.error, failed=1)


def _policy(env: Envelope, cfg: SettleConfig) -> RetryPolicyModel:
    graph = cfg.graphs.get((env.graph or "", env.graph_version)) if env.run_id else None
    return graph.retry_policy if graph is not None else cfg.default_retry


def will_retry(failed: Failed, cfg: SettleConfig) -> bool:
    """Whether a failure gets another attempt (else it is dead-lettered): not permanent and
    the retry budget of the state's graph version (or the Runtime default) not spent."""
    return (
        not failed.permanent and failed.job.env.attempt < _policy(failed.job.env, cfg).max_retries
    )


def retry_budget(failed: Failed, cfg: SettleConfig) -> int:
    """How many retries the state's graph version (or the Runtime default) allows."""
    return _policy(failed.job.env, cfg).max_retries


def _history(cfg: SettleConfig, job: Job, status: str, error: str = "") -> bytes:
    """One line of the run's history (the run step appends it only if the run exists)."""
    env = job.env
    record = {
        "state": env.state_id,
        "identifier": env.identifier,
        "node": job.node,
        "status": status,
        "attempt": env.attempt + 1,
        "error": error,
        "time_ms": int(cfg.clock() * 1000),
    }
    return pack(record)


def _run_step(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    env: Envelope,
    *,
    open_delta: int,
    counters: dict[str, int],
    history: bytes,
    failed: int = 0,
    open_at: int = 0,
) -> None:
    run_id = env.run_id or ""
    plan.run_step(
        ops,
        run_key=cfg.keys.run(run_id),
        events_key=cfg.keys.events(),
        run_id=run_id,
        open_delta=open_delta,
        failed_delta=failed,
        retention_s=cfg.run_retention_s,
        history_key=cfg.keys.run_history(run_id),
        history=history,
        # Only a step closing more states than it opens can end the run; the others
        # leave these KEYS out (fewer keys per settle call to send and to look up).
        expire_with_run=(
            [cfg.keys.run_results(run_id), cfg.keys.run_store(run_id)] if open_delta < 0 else []
        ),
        counters=counters,
        open_at=open_at,
    )


def _output(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    job: Job,
    status: str,
    field: str,
    value: bytes | str,
) -> None:
    """The result of a graphless state on its node's output stream (capped). The hot path
    of a drain: fields go straight into the op, no dict in between."""
    if cfg.output_maxlen == 0:
        return  # fire-and-forget: the Runtime keeps no results of graphless states
    fields = ("state", job.env.state_id, "status", status, field, value)
    plan.xadd_pairs(ops, cfg.keys.output(job.node), cfg.output_maxlen, fields)


def _dead_letter(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    node: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    env: Envelope | None,
    error: str,
    traceback: str,
    deliveries: int,
) -> None:
    plan.xadd(
        ops,
        cfg.keys.dead(),
        {
            "node": node,
            "state": env.state_id if env else entry_id.decode(),
            "run": (env.run_id or "") if env else "",
            "identifier": (env.identifier or "") if env else "",
            "attempts": (env.attempt + 1) if env else 0,
            # Counted across releases at shutdown too (the envelope carries them).
            "deliveries": deliveries + (env.deliveries if env else 0),
            "error": error,
            "traceback": traceback,
            "time_ms": int(cfg.clock() * 1000),
            "entry": entry_id,
            "original": pack(fields),
        },
    )
