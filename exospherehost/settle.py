"""Pure settle planning: a batch of outcomes -> one SettlePlan (one script call).

Every decision about where a finished state goes (successors, results, retry, dead letter,
run bookkeeping) is made here, without I/O, so it is testable without Redis."""

from __future__ import annotations

import os
import time
import traceback as tb
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.codec import Envelope, encode, pack
from broker.keys import Keys
from broker.plan import SettlePlan
from exospherehost.graph import CompiledGraph
from exospherehost.models import RetryPolicyModel
from exospherehost.outcomes import (
    Completed,
    Failed,
    Job,
    Malformed,
    Outcome,
    Pruned,
    Released,
    Requeued,
)
from exospherehost.retry import retry_delay_ms

_PID_PREFIX = os.urandom(6).hex()
_counter = 0


def new_id() -> str:
    """Unique state/run id: a random per-process prefix and a counter (cheaper than uuid4
    on the hot path, and sortable per process)."""
    global _counter
    _counter += 1
    return f"{_PID_PREFIX}{_counter:x}"


@dataclass(slots=True)
class SettleConfig:
    keys: Keys
    graphs: dict[tuple[str, int], CompiledGraph]
    default_retry: RetryPolicyModel = field(default_factory=RetryPolicyModel)
    output_maxlen: int = 100_000
    run_retention_s: int = 86_400
    clock: Callable[[], float] = time.time


def plan_settle(outcomes: Iterable[Outcome], cfg: SettleConfig) -> SettlePlan:
    plan = SettlePlan()
    for outcome in outcomes:
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
            _output(plan, ops, cfg, job, "PRUNED", data=pack(outcome.data))
        else:
            _run_step(plan, ops, cfg, env, open_delta=-1, counters={f"p:{env.identifier}": 1})
    elif isinstance(outcome, Requeued):
        plan.delay(ops, cfg.keys.delayed(job.node), outcome.delay_ms, encode(env))
    elif isinstance(outcome, Released):
        plan.xadd(ops, job.stream, {k.decode(): v for k, v in job.fields.items()})


def _completed(plan: SettlePlan, ops: list[list[Any]], done: Completed, cfg: SettleConfig) -> None:
    job, env = done.job, done.job.env
    if env.run_id is None:
        outputs: Any = done.outputs if done.fanout else done.outputs[0]
        _output(plan, ops, cfg, job, "SUCCEEDED", outputs=pack(outputs))
        return
    graph = cfg.graphs[(env.graph or "", env.graph_version)]
    ident = env.identifier or ""
    counters: dict[str, int] = {f"s:{ident}": 1}
    emitted = 0
    for out in done.outputs:
        for succ in graph.successors(ident, env.ctx, out):
            child = succ.node
            nxt = Envelope(
                new_id(),
                succ.inputs,
                env.run_id,
                env.graph,
                env.graph_version,
                child.identifier,
                succ.ctx,
            )
            plan.xadd(ops, cfg.keys.queue(child.node_name), {"_exo": encode(nxt)})
            counters[f"c:{child.identifier}"] = counters.get(f"c:{child.identifier}", 0) + 1
            emitted += 1
    if not graph.nodes[ident].children:
        result = {
            "identifier": ident,
            "state": env.state_id,
            "outputs": done.outputs if done.fanout else done.outputs[0],
        }
        plan.rpush(ops, cfg.keys.run_results(env.run_id), pack(result))
    _run_step(plan, ops, cfg, env, open_delta=emitted - 1, counters=counters)


def _failed(plan: SettlePlan, ops: list[list[Any]], failed: Failed, cfg: SettleConfig) -> None:
    job, env = failed.job, failed.job.env
    graph = cfg.graphs.get((env.graph or "", env.graph_version)) if env.run_id else None
    policy = graph.retry_policy if graph is not None else cfg.default_retry
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
        )
        plan.delay(
            ops, cfg.keys.delayed(job.node), retry_delay_ms(policy, env.attempt + 1), encode(env2)
        )
        if env.run_id is not None:
            _run_step(plan, ops, cfg, env, open_delta=0, counters={f"r:{env.identifier}": 1})
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
        _output(plan, ops, cfg, job, "FAILED", error=failed.error)
    else:
        _run_step(plan, ops, cfg, env, open_delta=-1, failed=1, counters={f"f:{env.identifier}": 1})


def _run_step(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    env: Envelope,
    *,
    open_delta: int,
    counters: dict[str, int],
    failed: int = 0,
) -> None:
    run_id = env.run_id or ""
    plan.run_step(
        ops,
        run_key=cfg.keys.run(run_id),
        events_key=cfg.keys.events(),
        results_key=cfg.keys.run_results(run_id),
        run_id=run_id,
        open_delta=open_delta,
        failed_delta=failed,
        retention_s=cfg.run_retention_s,
        counters=counters,
    )


def _output(
    plan: SettlePlan,
    ops: list[list[Any]],
    cfg: SettleConfig,
    job: Job,
    status: str,
    **extra: bytes | str,
) -> None:
    fields: dict[str, Any] = {"state": job.env.state_id, "status": status, **extra}
    plan.xadd(ops, cfg.keys.output(job.node), fields, maxlen=cfg.output_maxlen)


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
            "deliveries": deliveries,
            "error": error,
            "traceback": traceback,
            "time_ms": int(cfg.clock() * 1000),
            "entry": entry_id,
            "original": pack(fields),
        },
    )
