"""`exosphere graphs ...`: create, list and show graph templates from the command line, and
`exosphere results NODE`: the decoded results of graphless states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from exospherehost.cli._common import (
    Settings,
    clock,
    namespace_option,
    pass_settings,
    run,
    table,
    to_json,
)
from exospherehost.client.statemanager import StateManager
from exospherehost.graph.fieldtypes import describe, field_types

# What a template file may hold besides its nodes: upsert_graph's own parameters.
_TEMPLATE_KEYS = {"name", "nodes", "secrets", "retry_policy", "store_config", "triggers"}


def read_template(path: Path) -> dict[str, Any]:
    """A graph template from a JSON or YAML file (YAML needs PyYAML): an object with
    `nodes` (a list of GraphNodeModel objects) and optionally name, secrets, retry_policy,
    store_config, triggers; a bare list is taken as the nodes."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise click.ClickException(
                f"{path} is YAML: pip install pyyaml, or write the template as JSON"
            ) from None
        try:
            doc: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise click.ClickException(f"{path} is not valid JSON: {exc}") from None
    if isinstance(doc, list):
        doc = {"nodes": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise click.ClickException(f"{path}: expected an object with a list 'nodes'")
    unknown = sorted(set(doc) - _TEMPLATE_KEYS)
    if unknown:
        raise click.ClickException(
            f"{path}: unknown template keys {unknown}; allowed: {sorted(_TEMPLATE_KEYS)}"
        )
    return doc


@click.group(short_help="Create, list, show and delete graph templates.")
@namespace_option
def graphs() -> None:
    """Graph templates of a namespace: upsert one from a JSON/YAML file, list, show."""


@graphs.command("upsert", short_help="Create or update a graph from a JSON/YAML file.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@namespace_option
@click.option("--name", default=None, help="Graph name (default: the file's `name`).")
@click.option(
    "--validation-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for Runtimes to register the graph's nodes.",
)
@pass_settings
def graphs_upsert(
    settings: Settings, file: Path, name: str | None, validation_timeout: float
) -> None:
    """Validate FILE's template against the nodes Runtimes registered (waiting up to
    --validation-timeout for them) and store it as the graph's next version. Every
    problem is listed; nothing is stored unless the template is valid."""
    doc = read_template(file)
    graph = name or doc.get("name")
    if not isinstance(graph, str) or not graph:
        raise click.UsageError(f'no graph name: pass --name or put "name" in {file}')

    async def main() -> dict[str, Any]:
        async with settings.manager() as sm:
            return await sm.upsert_graph(
                graph,
                doc["nodes"],
                secrets=doc.get("secrets"),
                retry_policy=doc.get("retry_policy"),
                store_config=doc.get("store_config"),
                triggers=doc.get("triggers"),
                validation_timeout=validation_timeout,
            )

    stored = run(settings, main)
    click.echo(f"graph {graph!r} stored as version {stored.get('version')}")


@graphs.command("list", short_help="Graphs of the namespace.")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_settings
def graphs_list(settings: Settings, as_json: bool) -> None:
    """Every graph of the namespace with its current version and node count."""

    async def main() -> list[dict[str, Any]]:
        async with settings.manager() as sm:
            return [await sm.get_graph(g) for g in sorted(await sm.graph_names())]

    found = run(settings, main)
    if as_json:
        click.echo(to_json(found))
        return
    if not found:
        click.echo("no graphs in this namespace")
        return
    rows = [
        [g.get("name"), g.get("version"), len(g.get("nodes", [])), clock(g.get("updated_ms", 0))]
        for g in found
    ]
    click.echo(table(["GRAPH", "VERSION", "NODES", "UPDATED"], rows))


@graphs.command("show", short_help="A graph's current template (JSON).")
@click.argument("graph")
@namespace_option
@pass_settings
def graphs_show(settings: Settings, graph: str) -> None:
    """GRAPH's current template as JSON (secrets by name only)."""

    async def main() -> dict[str, Any]:
        async with settings.manager() as sm:
            return await sm.get_graph(graph)

    click.echo(to_json(run(settings, main)))


@graphs.command("delete", short_help="Delete a graph template.")
@click.argument("graph")
@namespace_option
@click.option(
    "--force",
    is_flag=True,
    help="Also while runs of it are in flight: they finish on the version they started with.",
)
@pass_settings
def graphs_delete(settings: Settings, graph: str, force: bool) -> None:
    """Delete GRAPH: no new runs or cron fires of it. Refused while runs of it are in
    flight, unless --force."""

    async def main() -> int:
        async with settings.manager() as sm:
            return await sm.delete_graph(graph, force=force)

    left = run(settings, main)
    tail = f"; {left} run(s) in flight finish on their version" if left else ""
    click.echo(f"graph {graph!r} deleted{tail}")


@click.command(short_help="Registered nodes and their schemas.")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON schemas.")
@pass_settings
def nodes(settings: Settings, as_json: bool) -> None:
    """The nodes Runtimes registered in the namespace: input and output fields (type,
    required), secret names, what execute returns, which Runtime registered it."""

    async def main() -> dict[str, dict[str, Any]]:
        async with settings.manager() as sm:
            return await sm.nodes()

    found = run(settings, main)
    if as_json:
        click.echo(to_json(found))
        return
    if not found:
        click.echo("no registered nodes (start a Runtime that serves them)")
        return
    for name, doc in found.items():
        click.echo(
            f"{name}  (runtime {doc.get('runtime', '?')}, returns {doc.get('returns', '?')}, "
            f"registered {clock(doc.get('registered_ms', 0))})"
        )
        for part in ("inputs", "outputs"):
            click.echo(f"  {part}: {_fields(doc.get(part + '_schema') or {})}")
        if doc.get("secrets"):
            click.echo(f"  secrets: {', '.join(doc['secrets'])}")


def _fields(schema: dict[str, Any]) -> str:
    """name: type (* = required) for each property of a JSON schema."""
    required = set(schema.get("required") or ())
    out = []
    for name, prop in (schema.get("properties") or {}).items():
        kind = describe(
            field_types({"properties": {name: prop}, "$defs": schema.get("$defs", {})})[name]
        )
        out.append(f"{name}: {kind}{'*' if name in required else ''}")
    return ", ".join(out) or "-"


@click.command(short_help="Results of states enqueued without a graph.")
@click.argument("node")
@click.argument("state_ids", nargs=-1)
@namespace_option
@click.option(
    "--count", type=click.IntRange(min=1), default=20, show_default=True, help="Newest N."
)
@pass_settings
def results(settings: Settings, node: str, state_ids: tuple[str, ...], count: int) -> None:
    """The decoded results (status, outputs or error) of NODE's graphless states: the
    given STATE_IDS (waiting for none), or the newest --count. One JSON object per line."""

    async def main() -> list[Any]:
        async with settings.manager() as sm:
            return await _results(sm, node, state_ids, count)

    for r in run(settings, main):
        click.echo(to_json(r, None))


async def _results(
    sm: StateManager, node: str, state_ids: tuple[str, ...], count: int
) -> list[Any]:
    if not state_ids:
        return list(await sm.newest_outputs(node, count))
    wanted, found = set(state_ids), {}
    after = "0"
    while True:  # the output stream is capped (output_maxlen): one pass over it
        batch = await sm.outputs(node, after, 1000)
        if not batch:
            break
        for r in batch:
            after = r.entry_id
            if r.state_id in wanted:
                found[r.state_id] = r
    missing = [s for s in state_ids if s not in found]
    if missing:
        raise click.ClickException(
            f"no result of {node} for {missing} (not done yet, unknown, or trimmed by "
            f"output_maxlen)"
        )
    return [found[s] for s in state_ids]
