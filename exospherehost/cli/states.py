"""`exosphere enqueue` and `exosphere trigger`: put work on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import click

from exospherehost.cli._common import (
    Settings,
    namespace_option,
    pass_settings,
    run,
    to_json,
)
from exospherehost.cli.checks import (
    check_inputs,
    check_store,
    declared_store_keys,
    loose_value,
    mistake,
    raw_pairs,
    registered_schemas,
    typed_inputs,
)
from exospherehost.client.runs import NodeCounts, RunStatus
from exospherehost.client.statemanager import StateManager
from exospherehost.graph.templating import StoreRef
from exospherehost.graphstore import compile_doc

ENQUEUE_BATCH = 10_000
"""Lines of a JSON-lines file sent per enqueue_many (pipelined; bounded memory)."""

FAILURES_SHOWN = 10
"""Failed states whose errors `trigger --wait` prints for a FAILED run."""

POLL_S = 0.2
"""How often `trigger --wait` reads the run's status."""


def _batches(
    lines: IO[str],
    defaults: dict[str, Any],
    name: str,
    done: list[int],
    check: Callable[[dict[str, Any], str], None] = lambda _value, _where: None,
) -> Iterator[list[dict[str, Any]]]:
    """Objects of a JSON-lines file, `defaults` under each, in batches. A bad line (not
    an object, or refused by `check`) stops everything before its batch is sent, and
    says how many states already were."""
    batch: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            why = f"not JSON ({exc})"
        else:
            if isinstance(value, dict):
                merged = {**defaults, **value}
                try:
                    check(merged, f"{name} line {number}: ")
                except click.ClickException as exc:
                    more = " (their ids are above)" if done[0] else ""
                    raise mistake(
                        f"{exc.message}; {done[0]} states before it were enqueued{more}"
                    ) from None
                batch.append(merged)
                if len(batch) >= ENQUEUE_BATCH:
                    yield batch
                    batch = []
                continue
            why = f"a JSON {type(value).__name__}, not an object of inputs"
        raise click.ClickException(
            f"{name} line {number}: {why}; {done[0]} states before it were enqueued"
            + (" (their ids are above)" if done[0] else "")
        )
    if batch:
        yield batch


@click.command(short_help="Put states on a node's stream.")
@click.argument("node")
@namespace_option
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    callback=raw_pairs,
    help="An input field, repeatable. VALUE is read by the field's registered type: text "
    'for a string field, else JSON (3, true, null, [1,2], {"k":1}). Unknown fields and '
    "values of the wrong type are refused.",
)
@click.option(
    "-f",
    "--file",
    "source",
    type=click.File("r"),
    help="JSON lines: one object of inputs per state ('-' reads stdin). --input values "
    "are defaults under every line.",
)
@click.option(
    "--delay-ms",
    type=click.IntRange(min=0),
    default=0,
    help="Make the states due this many milliseconds from now.",
)
@pass_settings
def enqueue(
    settings: Settings,
    node: str,
    inputs: dict[str, str],
    source: IO[str] | None,
    delay_ms: int,
) -> None:
    """Put states on NODE's stream; print their state ids, one per line.

    \b
    Examples:
      exosphere -n demo enqueue SampleNode -i name=Alice -i 'data={"k": 1}'
      exosphere -n demo enqueue Square --file values.jsonl
    """

    async def main() -> None:
        async with settings.manager() as sm:
            schema = (await registered_schemas(sm)).get(node)
            if schema is None:
                await _warn_unregistered(sm, node)
            # Checked against the node's registered Inputs before anything is written.
            typed = typed_inputs(node, schema, inputs)
            if source is None:
                check_inputs(node, schema, typed, complete=True)
                click.echo((await sm.enqueue_many(node, [typed], delay_ms))[0])
                return
            done = [0]

            def check(value: dict[str, Any], where: str) -> None:
                check_inputs(node, schema, value, complete=True, where=where)

            for batch in _batches(source, typed, source.name, done, check):
                ids = await sm.enqueue_many(node, batch, delay_ms)
                click.echo("\n".join(ids))
                done[0] += len(ids)

    run(settings, main)


async def _warn_unregistered(sm: StateManager, node: str) -> None:
    # Legal (a Runtime may start later), but more often a typo.
    if node not in await sm.node_names():
        click.echo(
            f"warning: no Runtime has registered node {node!r} in namespace {sm.namespace!r} (yet)",
            err=True,
        )


class _Progress:
    """One status line on stderr: redrawn in place on a terminal, else a new line per
    change (so logs and CI output stay readable)."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.tty = sys.stderr.isatty()
        self.last = ""

    def show(self, status: RunStatus, elapsed: float) -> None:
        parts = []
        for ident in [*self.order, *(i for i in status.nodes if i not in self.order)]:
            c = status.nodes.get(ident, NodeCounts())
            done = c.succeeded + c.failed + c.pruned
            extra = ", ".join(
                f"{n} {what}"
                for what, n in (
                    ("failed", c.failed),
                    ("pruned", c.pruned),
                    ("retried", c.retried),
                    ("skipped", c.skipped),
                )
                if n
            )
            parts.append(f"{ident} {done}/{done + c.pending}" + (f" ({extra})" if extra else ""))
        text = f"{status.status:<9} " + "  ".join(parts)
        if self.tty:
            click.echo(f"\r{text}  {elapsed:.1f}s\x1b[K", err=True, nl=False)
        elif text != self.last:
            click.echo(text, err=True)
        self.last = text

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


async def _follow(
    sm: StateManager, graph: str, run_id: str, timeout: float, stop: asyncio.Event
) -> RunStatus | None:
    """The run's final status, progress shown meanwhile; None when `stop` is set (Ctrl-C)."""
    doc = await sm.get_graph(graph)
    progress = _Progress([n["identifier"] for n in doc.get("nodes", [])])
    started = time.monotonic()
    try:
        while not stop.is_set():
            status = await sm.status(run_id)
            progress.show(status, time.monotonic() - started)
            if status.done:
                return status
            if time.monotonic() - started >= timeout:
                raise click.ClickException(
                    f"run {run_id} not finished after {timeout:g}s; follow it with "
                    f"`exosphere -n {sm.namespace} runs show {run_id}`"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        return None
    finally:
        progress.close()


async def _checked_trigger(
    sm: StateManager, graph: str, inputs: dict[str, str], store: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trigger's root inputs (typed by the root node's registered schema) and store
    values, refused before anything is written when they name what the graph lacks."""
    doc = await sm.get_graph(graph)  # an unknown graph is an error here already
    compiled = compile_doc(doc)  # type: ignore[arg-type]
    refs = {
        r.key for n in compiled.nodes.values() for r in n.template.refs if isinstance(r, StoreRef)
    }
    values = {k: loose_value(f"store key {k!r}", v) for k, v in store.items()}
    check_store(graph, declared_store_keys(doc, refs), values)
    root = compiled.nodes[compiled.root]
    schema = (await registered_schemas(sm)).get(root.node_name) if inputs else None
    typed = typed_inputs(f"{root.node_name} (root {root.identifier!r})", schema, inputs)
    return typed, values


@click.command(short_help="Start a graph run (--wait follows it).")
@click.argument("graph")
@namespace_option
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    callback=raw_pairs,
    help="Override an input of the graph's root node, repeatable (VALUE as in enqueue; "
    "checked against the root node's registered inputs).",
)
@click.option(
    "-s",
    "--store",
    multiple=True,
    metavar="KEY=VALUE",
    callback=raw_pairs,
    help="A value of the run's store, repeatable (VALUE read as JSON if it parses, else "
    "as text). The key must be one the graph declares or reads.",
)
@click.option(
    "--start-delay",
    type=click.IntRange(min=0),
    default=0,
    help="Milliseconds before the run starts.",
)
@click.option(
    "-w",
    "--wait",
    is_flag=True,
    help="Show progress until the run finishes, then print its status and results as "
    "JSON; exit status 1 if the run FAILED (its failed states' errors on stderr). Ctrl-C "
    "stops following (exit status 130); the run goes on.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to --wait before giving up (the run goes on).",
)
@pass_settings
def trigger(
    settings: Settings,
    graph: str,
    inputs: dict[str, str],
    store: dict[str, str],
    start_delay: int,
    wait: bool,
    timeout: float,
) -> None:
    """Start a run of GRAPH and print its run id.

    \b
    Examples:
      exosphere -n demo trigger squares --store n=3
      exosphere -n demo trigger squares -s n=5 -i base=10 --wait
    """

    started: list[str] = []  # the run id, once triggered (for Ctrl-C)

    async def main() -> dict[str, Any] | None:
        async with settings.manager() as sm:
            typed, values = await _checked_trigger(sm, graph, inputs, store)
            run_id = await sm.trigger(graph, typed, values, start_delay)
            started.append(run_id)
            if not wait:
                click.echo(run_id)
                return None
            # Ctrl-C stops following, not the run: handled here rather than by cancelling
            # the main task (a cancellation can land inside a Redis call and be lost).
            stop = asyncio.Event()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
            click.echo(f"run {run_id}", err=True)
            status = await _follow(sm, graph, run_id, timeout, stop)
            if status is None:
                raise KeyboardInterrupt
            failures = []
            if status.status == "FAILED":
                failures = [h for h in await sm.run_history(run_id) if h.status == "FAILED"]
            return {
                "run_id": run_id,
                "graph": status.graph,
                "status": status.status,
                "nodes": status.nodes,
                "notes": status.notes,
                "failures": failures,
                "results": await sm.results(run_id),
            }

    try:
        payload = run(settings, main)
    except KeyboardInterrupt:
        if not started:
            raise  # nothing written yet: click's "Aborted!"
        ns = settings.namespace
        click.echo(
            f"\nInterrupted: stopped following; run {started[0]} goes on. Follow it with "
            f"`exosphere -n {ns} runs show {started[0]}` (or watch `exosphere -n {ns} status`).",
            err=True,
        )
        click.get_current_context().exit(130)
    if payload is not None:
        click.echo(to_json(payload))
        if payload["status"] == "FAILED":
            _print_failures(payload)
            click.get_current_context().exit(1)


def _print_failures(payload: dict[str, Any]) -> None:
    """Why a waited-for run FAILED, on stderr after its JSON: each failed state's error
    (its last line: the traceback is in `runs show` / the dead letter), and notes."""
    failures = payload["failures"]
    shown = failures[:FAILURES_SHOWN]
    click.echo(f"run {payload['run_id']} FAILED: {len(failures)} state(s) failed", err=True)
    for h in shown:
        error = (h.error.strip().splitlines() or ["(no error text)"])[-1]
        click.echo(
            f"  {h.identifier} ({h.node}) state {h.state_id}, attempt {h.attempt}: {error}",
            err=True,
        )
    if len(failures) > len(shown):
        click.echo(
            f"  ... and {len(failures) - len(shown)} more: exosphere runs show {payload['run_id']}",
            err=True,
        )
    for ident, why in payload["notes"].items():
        click.echo(f"  note {ident}: {why}", err=True)
