"""`exosphere states show RUN STATE` and `exosphere runs retry RUN` (issue 12.9): one
state's record, and retrying states of a run. A STATE may be its full id or a unique end
of it, as `runs show` prints it (…6de78124)."""

from __future__ import annotations

import time
from typing import Any

import click

from exospherehost.cli._common import Settings, age, namespace_option, pass_settings, run, to_json
from exospherehost.cli.records import runs
from exospherehost.client.runs import RunGraph, StateDetail
from exospherehost.client.statemanager import StateManager
from exospherehost.errors import RunNotFound

TRUNCATED = "__truncated__"  # the state records' marker of a field over the cap


def stamp(ms: int | None) -> str:
    """Local time to the millisecond, with its UTC offset: 2026-12-01 18:42:08.643 +0100."""
    if not ms:
        return "-"
    local = time.localtime(ms / 1000)
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", local)
        + f".{ms % 1000:03d} "
        + time.strftime("%z", local)
    )


def matching(graph: RunGraph, given: str) -> list[str]:
    """The run's state ids equal to `given`, or ending with it (a leading … or ... as
    `runs show` prints it is dropped)."""
    end = given.removeprefix("…").removeprefix("...")
    if given in graph.states:
        return [given]
    return sorted(s for s in graph.states if end and s.endswith(end))


async def resolve_state(sm: StateManager, run_id: str, given: str) -> str:
    """The full id of the run's state named by `given` (full, or a unique end of it)."""
    graph = await sm.run_graph(run_id)  # RunNotFound for an unknown run
    found = matching(graph, given)
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunNotFound(f"run {run_id!r} has no state {given!r} (nor one whose id ends so)")
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    raise click.ClickException(
        f"state {given!r} of run {run_id!r} is ambiguous: {len(found)} ids end so ({shown}); "
        "give more of it"
    )


# -- states show ----------------------------------------------------------------------------


@click.group(short_help="Show one state of a run.")
@namespace_option
def states() -> None:
    """States of graph runs: one state's record (node, identifier, status, attempt,
    inputs, outputs / error / prune data, parents, times, worker)."""


def _value(value: Any) -> str:
    if isinstance(value, dict) and TRUNCATED in value:
        preview = str(value.get("preview", ""))
        return (
            f"(truncated: {value[TRUNCATED]:,} bytes, over the per-field cap of state "
            f"records; it starts: {preview}…)"
        )
    return to_json(value, None)


@states.command("show", short_help="One state: inputs, outputs / error, parents, times.")
@click.argument("run_id")
@click.argument("state_id")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_settings
def states_show(settings: Settings, run_id: str, state_id: str, as_json: bool) -> None:
    """The record of state STATE_ID of run RUN_ID (STATE_ID: the full id, or a unique end
    of it as `runs show` prints it).

    \b
    Examples:
      exosphere -n demo states show 3162c6de78121 3162c6de78124
      exosphere -n demo states show 3162c6de78121 6de78124 --json
    """

    async def main() -> StateDetail:
        async with settings.manager() as sm:
            try:
                return await sm.state(run_id, state_id)
            except RunNotFound:
                full = await resolve_state(sm, run_id, state_id)
                return await sm.state(run_id, full)

    st = run(settings, main)
    if as_json:
        click.echo(to_json(st))
        return
    took = st.finished_ms - st.started_ms if st.finished_ms and st.started_ms else None
    rows = [
        ("state", f"{st.state_id}  (run {st.run_id})"),
        ("identifier", st.identifier or "-"),
        ("node", st.node or "- (not settled yet)"),
        ("status", st.status),
        ("attempt", str(st.attempt) if st.attempt else "- (not executed yet)"),
        ("parents", " ".join(st.parents) or "- (a root state)"),
        ("created", stamp(st.created_ms)),
        ("queued", stamp(st.queued_ms)),
        ("started", stamp(st.started_ms)),
        ("finished", stamp(st.finished_ms) + (f"  (ran {age(took)})" if took is not None else "")),
        ("worker", st.worker or "-"),
    ]
    for label, text in rows:
        click.echo(f"{label + ':':<12} {text}")
    for label, value in (("inputs", st.inputs), ("outputs", st.outputs), ("pruned", st.pruned)):
        if value is not None:
            click.echo(f"{label + ':':<12} {_value(value)}")
    if st.error is not None:
        click.echo("error:" if st.status != "RETRYING" else "error (a retry is pending):")
        for text in st.error.rstrip().splitlines():
            click.echo(f"  {text}")


# -- runs retry -----------------------------------------------------------------------------


@runs.command("retry", short_help="Retry states of a run (--state ID, --failed).")
@click.argument("run_id")
@namespace_option
@click.option(
    "--state",
    "state_ids",
    multiple=True,
    metavar="STATE",
    help="Retry this state (any status but running; repeatable; a unique end of its id will do).",
)
@click.option("--failed", is_flag=True, help="Retry every failed state of the run.")
@pass_settings
def runs_retry(settings: Settings, run_id: str, state_ids: tuple[str, ...], failed: bool) -> None:
    """Retry states of RUN_ID: each --state (it runs again with its inputs, then its
    successors), and/or --failed (every failed state). The run re-opens. Prints the new
    states' ids; a refused retry (cancelled run, state still running, no records, ...) is
    an error (exit 1) saying why.

    \b
    Examples:
      exosphere -n demo runs retry 3162c6de78121 --failed
      exosphere -n demo runs retry 3162c6de78121 --state 6de78124
    """
    if not state_ids and not failed:
        raise click.UsageError("give --state STATE (repeatable) or --failed")

    async def main() -> None:
        async with settings.manager() as sm:
            await sm.status(run_id)  # an unknown run is an error before anything else
            for given in state_ids:
                full = given
                try:
                    await sm.state(run_id, given)
                except RunNotFound:
                    full = await resolve_state(sm, run_id, given)
                new = await sm.retry_state(run_id, full)
                click.echo(f"retried {full} as {new}")
            if failed:
                news = await sm.retry_failed(run_id)
                if news:
                    n = len(news)
                    click.echo(
                        f"retried {n} failed state{'s' if n != 1 else ''}: " + " ".join(news)
                    )
                else:
                    click.echo(f"run {run_id} has no failed state to retry")

    run(settings, main)


__all__ = ["runs_retry", "states"]
