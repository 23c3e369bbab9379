"""`exosphere enqueue` and `exosphere trigger`: put work on Redis."""

from __future__ import annotations

import asyncio
import json
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
    InputMistake,
    check_inputs,
    check_store,
    declared_store_keys,
    loose_value,
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
                except InputMistake as exc:
                    more = " (their ids are above)" if done[0] else ""
                    raise InputMistake(
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


async def _follow(sm: StateManager, graph: str, run_id: str, timeout: float) -> RunStatus:
    doc = await sm.get_graph(graph)
    progress = _Progress([n["identifier"] for n in doc.get("nodes", [])])
    started = time.monotonic()
    try:
        while True:
            status = await sm.status(run_id)
            progress.show(status, time.monotonic() - started)
            if status.done:
                return status
            if time.monotonic() - started >= timeout:
                raise click.ClickException(
                    f"run {run_id} not finished after {timeout:g}s; follow it with "
                    f"`exosphere -n {sm.namespace} runs show {run_id}`"
                )
            await asyncio.sleep(POLL_S)
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
    "JSON; exit status 1 if the run FAILED.",
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

    async def main() -> dict[str, Any] | None:
        async with settings.manager() as sm:
            typed, values = await _checked_trigger(sm, graph, inputs, store)
            run_id = await sm.trigger(graph, typed, values, start_delay)
            if not wait:
                click.echo(run_id)
                return None
            click.echo(f"run {run_id}", err=True)
            status = await _follow(sm, graph, run_id, timeout)
            return {
                "run_id": run_id,
                "graph": status.graph,
                "status": status.status,
                "nodes": status.nodes,
                "notes": status.notes,
                "results": await sm.results(run_id),
            }

    payload = run(settings, main)
    if payload is not None:
        click.echo(to_json(payload))
        if payload["status"] == "FAILED":
            click.get_current_context().exit(1)
