"""`exosphere runs ...` and `exosphere dead ...`: read (and redrive) what happened."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, TypedDict

import click

from exospherehost.broker.codec import MalformedEntry, decode
from exospherehost.cli import runtree
from exospherehost.cli._common import (
    Settings,
    age,
    clock,
    namespace_option,
    pass_settings,
    run,
    table,
    to_json,
)
from exospherehost.client.deadletters import DeadLetter, DeadLetterCount, RedriveReport
from exospherehost.client.runs import RunStatus
from exospherehost.errors import GraphNotFound, RunNotFound

# -- runs -------------------------------------------------------------------------------


@click.group(short_help="List, show, cancel and retry graph runs.")
@namespace_option
def runs() -> None:
    """Graph runs: list them (with filters), show one (its states as a tree), cancel them,
    retry states of one."""


def _totals(status: RunStatus) -> tuple[int, int, int]:
    """(finished states, created states, failed states) over the run's nodes."""
    done = sum(c.succeeded + c.failed + c.pruned for c in status.nodes.values())
    pending = sum(c.pending for c in status.nodes.values())
    failed = sum(c.failed for c in status.nodes.values())
    return done, done + pending, failed


def _duration(status: RunStatus) -> str:
    end = status.finished_ms or int(time.time() * 1000)
    text = age(end - status.created_ms) if status.created_ms else "-"
    return text if status.finished_ms else f"{text}+"


@runs.command("list", short_help="Runs, newest first, with filters and a total.")
@click.argument("graph", required=False)
@namespace_option
@click.option(
    "--status",
    type=click.Choice(["RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"], case_sensitive=False),
    help="Only runs with this status.",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=lambda ctx, p, v: _moment(ctx, p, v),
    help="Only runs created at or after TIME: epoch ms, a local 2026-12-01T15:04, or an "
    "age (30m, 2h, 3d ago).",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=lambda ctx, p, v: _moment(ctx, p, v),
    help="... at or before TIME.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the newest N runs.")
@click.option(
    "--count", type=click.IntRange(min=1), default=20, show_default=True, help="Runs to list."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_settings
def runs_list(
    settings: Settings,
    graph: str | None,
    status: str | None,
    since: int | None,
    until: int | None,
    offset: int,
    count: int,
    as_json: bool,
) -> None:
    """Runs of GRAPH (or of every graph of the namespace), newest first, and how many
    match in all (runs expire after the run retention).

    \b
    Examples:
      exosphere -n demo runs list
      exosphere -n demo runs list squares --status FAILED --since 2h
      exosphere -n demo runs list --status RUNNING --count 100 --offset 100
    """

    async def main() -> tuple[list[RunStatus], int]:
        async with settings.manager() as sm:
            if graph is not None:
                await sm.get_graph(graph)  # an unknown graph is an error, not an empty list
            page = await sm.list_runs(
                graph,
                offset,
                count,
                status=status.upper() if status else None,
                since=_datetime(since),
                until=_datetime(until),
            )
            return list(page), page.total

    found, total = run(settings, main)
    if as_json:
        click.echo(to_json({"total": total, "offset": offset, "runs": found}))
        return
    what = f"runs of {graph!r}" if graph else "runs"
    if not found:
        click.echo(
            f"no {what}" + (f" after the first {offset}" if offset else "") + f" ({total} match)"
        )
        return
    rows = []
    for st in found:
        done, created, failed = _totals(st)
        rows.append(
            [
                st.run_id,
                st.graph,
                st.status,
                clock(st.created_ms),
                _duration(st),
                f"{done}/{created}",
                failed,
            ]
        )
    click.echo(table(["RUN", "GRAPH", "STATUS", "CREATED", "TOOK", "STATES", "FAILED"], rows))
    shown = f"{offset + 1}-{offset + len(found)}"
    more = f"; next page: --offset {offset + len(found)}" if offset + len(found) < total else ""
    click.echo(f"{what} {shown} of {total}{more}")


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


@runs.command("cancel", short_help="Cancel running runs.")
@click.argument("run_ids", nargs=-1, required=True)
@namespace_option
@pass_settings
def runs_cancel(settings: Settings, run_ids: tuple[str, ...]) -> None:
    """Cancel each RUN_ID: it ends as CANCELLED; its queued, delayed and running states are
    dropped when reached (no successors, retries or results). A finished run is left as
    it is (its status is printed); an unknown one is an error (exit 1)."""

    async def main() -> list[tuple[str, str]]:
        async with settings.manager() as sm:
            out = []
            for run_id in run_ids:
                try:
                    out.append((run_id, (await sm.cancel(run_id)).status))
                except RunNotFound:
                    out.append((run_id, "not found"))
            return out

    missing = False
    for run_id, status in run(settings, main):
        if status == "CANCELLED":
            click.echo(f"{run_id}: CANCELLED")
        elif status == "not found":
            missing = True
            click.echo(
                f"{run_id}: not found (unknown, or expired after the run retention)", err=True
            )
        else:
            click.echo(f"{run_id}: already finished ({status}), left as it is")
    if missing:
        raise SystemExit(1)


@runs.command("show", short_help="A run: counts, notes, its states as a tree, history, results.")
@click.argument("run_id")
@namespace_option
@click.option(
    "--children",
    type=click.IntRange(min=0),
    default=runtree.CHILDREN,
    show_default=True,
    help="Children of a state listed in the tree (those not SUCCEEDED first; the rest "
    "summed up in one line); 0: all.",
)
@click.option(
    "--history",
    "history_lines",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Newest history records printed; 0: all (--json has all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_settings
def runs_show(
    settings: Settings, run_id: str, children: int, history_lines: int, as_json: bool
) -> None:
    """A run: status, per-node counts and notes, its states as a tree (root first, each
    state's children under it, a uniting state under the state it unites; a line:
    identifier, node, status, attempt, the end of the state id, and the first line of a
    failure), its history of settled states, and the results of its leaf states.
    `exosphere states show RUN STATE` shows one state whole."""

    async def main() -> dict[str, Any]:
        async with settings.manager() as sm:
            status = await sm.status(run_id)
            graph = await sm.run_graph(run_id)
            try:
                template = runtree.template_of(await sm.get_graph(status.graph))
            except GraphNotFound:  # deleted since: the tree goes by the parents
                template = runtree.Template()
            return {
                "status": status,
                "tree": runtree.build(graph, template),
                "states": graph.states,
                "history": await sm.run_history(run_id),
                "results": await sm.results(run_id),
            }

    got = run(settings, main)
    if as_json:
        tree = [runtree.as_json(n) for n in got.pop("tree")]
        del got["states"]
        click.echo(to_json({**got, "tree": tree}))
        return
    st: RunStatus = got["status"]
    done, created, _ = _totals(st)
    click.echo(
        f"run {st.run_id}  graph {st.graph}  {st.status}  created {clock(st.created_ms)}  "
        f"took {_duration(st)}  states {done}/{created}  open {st.open}"
    )
    rows = [
        [ident, c.pending, c.succeeded, c.failed, c.pruned, c.retried, c.skipped]
        for ident, c in st.nodes.items()
    ]
    click.echo()
    heads = ["NODE", "PENDING", "SUCCEEDED", "FAILED", "PRUNED", "RETRIED", "SKIPPED"]
    click.echo(table(heads, rows))
    if st.notes:
        click.echo("\nnotes:")
        for ident, why in st.notes.items():
            click.echo(f"  {ident}: {why}")
    states = got["states"]
    click.echo(f"\nstates ({len(states)}):")
    if not states and created:
        click.echo("  (no state records: the run's Runtimes keep none, state_records='off')")
    for text in runtree.render(got["tree"], states, children):
        click.echo(f"  {text}")
    history = got["history"]
    shown = history[-history_lines:] if history_lines else history
    cut = f", the newest {len(shown)}; --history 0 for all" if len(shown) < len(history) else ""
    click.echo(f"\nhistory ({len(history)}{cut}):")
    hist_rows = [
        [clock(h.time_ms), h.identifier, h.node, h.status, h.attempt, h.state_id, h.error]
        for h in shown
    ]
    if hist_rows:
        click.echo(table(["TIME", "NODE", "CLASS", "STATUS", "TRY", "STATE", "ERROR"], hist_rows))
    click.echo(f"\nresults ({len(got['results'])}):")
    for result in got["results"]:
        click.echo(to_json(result, None))


# -- dead letters -----------------------------------------------------------------------


class Filter(TypedDict):
    node: str | None
    grep: str | None
    since: int | None
    until: int | None


@click.group(short_help="List, show, purge and redrive dead letters.")
@namespace_option
def dead() -> None:
    """Dead letters: states that could not be processed (retries spent, malformed,
    poison). List (newest first, paged, filtered), inspect, purge, and redrive them back
    to their streams. The dead stream is capped (Runtime(dead_letters_maxlen=100_000),
    oldest dropped first).

    \b
    Examples:
      exosphere -n demo dead list --node Square --grep timeout --since 2h
      exosphere -n demo dead redrive --node Square --since 2h
      exosphere -n demo dead purge --until 7d --yes
    """


_ENTRY_ID = re.compile(r"^\d+-\d+(@[1-9]\d*)?$")  # `@n`: on the lane of tag number n


def _dead_id(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A stream entry id (e.g. 1718000000000-0, or 1718000000000-0@301 on lane tag 301),
    checked before Redis would refuse it."""
    if value is not None and not _ENTRY_ID.match(value):
        raise click.BadParameter(f"{value!r} is not a dead-letter id like 1718000000000-0")
    return value


def _first_line(text: str, width: int = 70) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _moment(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--since / --until: epoch ms, a local date-time (2026-12-01 or 2026-12-01T15:04[:05],
    an ISO offset allowed), or an age (90s, 10m, 2h, 3d: that long ago) -> epoch ms."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    ago = _AGO.fullmatch(text)
    if ago:
        seconds = float(ago[1]) * _UNITS[ago[2]]
        return int((time.time() - seconds) * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time: give epoch ms, 2026-12-01T15:04 (local, or with an "
            "offset), or an age like 30m, 2h, 3d",
            param=param,
        ) from None
    return int(moment.timestamp() * 1000)


_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def filter_options(f: Any) -> Any:
    """--node, --grep, --since, --until: which dead letters a command covers."""
    for option in reversed(
        [
            click.option("--node", metavar="NODE", help="Only dead letters of this node class."),
            click.option(
                "--grep", metavar="TEXT", help="Only those whose error contains TEXT (any case)."
            ),
            click.option(
                "--since",
                metavar="TIME",
                callback=_moment,
                help="Only those dead-lettered at or after TIME: epoch ms, a local "
                "2026-12-01T15:04, or an age (30m, 2h, 3d ago).",
            ),
            click.option(
                "--until", metavar="TIME", callback=_moment, help="... at or before TIME."
            ),
        ]
    ):
        f = option(f)
    return f


def _filter(node: str | None, grep: str | None, since: int | None, until: int | None) -> Filter:
    return {"node": node, "grep": grep, "since": since, "until": until}


def _described(flt: Filter) -> str:
    parts = [
        f"node {flt['node']}" if flt["node"] else "",
        f"error ~ {flt['grep']!r}" if flt["grep"] else "",
    ]
    if flt["since"] is not None:
        parts.append(f"since {clock(flt['since'])}")
    if flt["until"] is not None:
        parts.append(f"until {clock(flt['until'])}")
    return ", ".join(p for p in parts if p)


@dead.command("list")
@namespace_option
@filter_options
@click.option(
    "--limit",
    "--count",
    "limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Dead letters per page.",
)
@click.option(
    "--before",
    metavar="CURSOR",
    callback=_dead_id,
    help="The next (older) page: the cursor the previous page printed.",
)
@click.option(
    "--after",
    metavar="ID",
    callback=_dead_id,
    help="Oldest first instead, starting after this id (no filters).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_settings
def dead_list(
    settings: Settings,
    node: str | None,
    grep: str | None,
    since: int | None,
    until: int | None,
    limit: int,
    before: str | None,
    after: str | None,
    as_json: bool,
) -> None:
    """Dead letters, newest first, a page at a time; with how many there are (matching
    the filters, if any). The next page: --before CURSOR, as printed."""
    flt = _filter(node, grep, since, until)
    filtered = any(v is not None for v in flt.values())
    if after is not None and (filtered or before is not None):
        raise click.UsageError("--after lists oldest first without filters or --before")

    async def main() -> tuple[list[DeadLetter], str | None, DeadLetterCount]:
        async with settings.manager() as sm:
            if after is not None:
                letters = await sm.dead_letters(limit, after)
                more = letters[-1].id if len(letters) == limit else None
                return letters, more, await sm.dead_letter_count()
            page = await sm.dead_letter_page(limit, before, **flt)
            return page.letters, page.cursor, await sm.dead_letter_count(**flt)

    letters, cursor, total = run(settings, main)
    if as_json:
        if after is not None:  # the old shape: a list, oldest first
            click.echo(to_json([_dead_view(d) for d in letters]))
            return
        click.echo(
            to_json(
                {
                    "dead": [_dead_view(d) for d in letters],
                    "cursor": cursor,
                    "count": total.count,
                    "count_exact": total.exact,
                }
            )
        )
        return
    how_many = f"{total.count}{'' if total.exact else '+'}"
    what = f" matching {_described(flt)}" if filtered else ""
    if not letters:
        click.echo("no dead letters" + what if not total.count else f"no more dead letters{what}")
        if cursor is None:
            return
    else:
        rows = [
            [d.id, d.node, d.state_id, d.run_id, d.attempts, clock(d.time_ms), _first_line(d.error)]
            for d in letters
        ]
        click.echo(table(["ID", "NODE", "STATE", "RUN", "TRIES", "WHEN", "ERROR"], rows))
    order = "oldest first" if after is not None else "newest first"
    click.echo(f"({len(letters)} shown of {how_many} dead letters{what}, {order})")
    if cursor is not None:
        flag = "--after" if after is not None else "--before"
        click.echo(f"(more may follow: {flag} {cursor})")


def _dead_view(d: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-able data, with its original entry decoded to inputs."""
    try:
        inputs: Any = decode(d.entry.encode() or b"0-0", d.original).inputs
    except MalformedEntry as exc:
        fields = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in d.original.items()
        }
        inputs = {"undecodable": str(exc), "fields": fields}
    view = {k: v for k, v in vars(d).items() if k != "original"}
    view["inputs"] = inputs
    return view


@dead.command("show", short_help="One dead letter, with inputs and traceback.")
@click.argument("dead_id", callback=_dead_id)
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_settings
def dead_show(settings: Settings, dead_id: str, as_json: bool) -> None:
    """One dead letter: where it came from, why it died, its inputs and traceback."""

    async def main() -> DeadLetter | None:
        async with settings.manager() as sm:
            return await sm.dead_letter(dead_id)

    letter = run(settings, main)
    if letter is None:
        raise click.ClickException(f"no dead letter {dead_id!r} (redriven already?)")
    view = _dead_view(letter)
    if as_json:
        click.echo(to_json(view))
        return
    for label in ("id", "node", "state_id", "run_id", "identifier", "attempts", "deliveries"):
        click.echo(f"{label + ':':<12} {view[label] if view[label] is not None else '-'}")
    click.echo(f"{'time:':<12} {clock(letter.time_ms)}")
    click.echo(f"{'error:':<12} {letter.error}")
    click.echo(f"{'inputs:':<12} {to_json(view['inputs'], None)}")
    if letter.traceback:
        click.echo("\n" + letter.traceback.rstrip())


@dead.command("purge", short_help="Delete dead letters for good.")
@click.argument("dead_ids", nargs=-1, callback=lambda c, p, v: [_dead_id(c, p, i) for i in v])
@namespace_option
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (no filter needed).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def dead_purge(
    settings: Settings,
    dead_ids: list[str],
    node: str | None,
    grep: str | None,
    since: int | None,
    until: int | None,
    everything: bool,
    yes: bool,
) -> None:
    """Delete dead letters for good: the DEAD_IDS given, or those matching the filters,
    or --all. Only letters present when it starts are removed."""
    flt = _filter(node, grep, since, until)
    filtered = any(v is not None for v in flt.values())
    if sum((bool(dead_ids), filtered, everything)) != 1:
        raise click.UsageError(
            "give dead-letter IDs, filters (--node/--grep/--since/--until) or --all"
        )

    async def count() -> int:
        async with settings.manager() as sm:
            return (await sm.dead_letter_count(**flt)).count

    if not dead_ids and not yes:
        n = run(settings, count)
        if n == 0:
            click.echo("no dead letters to purge")
            return
        what = f" matching {_described(flt)}" if filtered else ""
        click.confirm(f"Delete {n} dead letter(s){what} for good?", abort=True, err=True)

    async def main() -> int:
        async with settings.manager() as sm:
            if dead_ids:
                return await sm.delete_dead_letters(dead_ids)
            return await sm.purge_dead_letters(**flt)

    removed = run(settings, main)
    click.echo(f"purged {removed} dead letter{'s' if removed != 1 else ''}")
    if dead_ids and removed < len(dead_ids):
        raise click.ClickException(f"{len(dead_ids) - removed} of the ids were not dead letters")


@dead.command("redrive", short_help="Put dead letters back on their streams.")
@click.argument("dead_id", required=False, callback=_dead_id)
@namespace_option
@filter_options
@click.option("--all", "everything", is_flag=True, help="Redrive every dead letter.")
@pass_settings
def dead_redrive(
    settings: Settings,
    dead_id: str | None,
    node: str | None,
    grep: str | None,
    since: int | None,
    until: int | None,
    everything: bool,
) -> None:
    """Put dead letter DEAD_ID, or those matching the filters, or --all back on their
    node's stream with a fresh retry budget. Idempotent: a dead letter is redriven once."""
    flt = _filter(node, grep, since, until)
    filtered = any(v is not None for v in flt.values())
    if (everything or filtered) == (dead_id is not None):
        raise click.UsageError("give a dead-letter ID or --all (not both), or filters")

    async def main() -> RedriveReport | bool:
        async with settings.manager() as sm:
            if dead_id is None:
                return await sm.redrive_all(**flt)
            return await sm.redrive(dead_id)

    moved = run(settings, main)
    if isinstance(moved, RedriveReport):
        n = moved.redriven
        click.echo(f"redrove {n} dead letter{'s' if n != 1 else ''}")
        for letter, why in moved.skipped.items():
            click.echo(f"skipped {letter}: {why}", err=True)
        if moved.skipped:
            raise click.ClickException(f"{len(moved.skipped)} dead letter(s) could not be redriven")
    elif moved:
        click.echo(f"redrove {dead_id}")
    else:
        raise click.ClickException(f"no dead letter {dead_id!r} (redriven already?)")
