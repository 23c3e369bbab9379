"""`exosphere lanes`: show and set how many lanes (hash tags) a namespace is spread over."""

from __future__ import annotations

from typing import Any

import click

from exospherehost.broker.keys import MAX_LANES
from exospherehost.cli._common import Settings, namespace_option, pass_settings, run, to_json


@click.group(short_help="Show or set a namespace's lanes.")
@namespace_option
def lanes() -> None:
    """Lanes spread one namespace over k hash tags (Redis Cluster slots on evenly spaced
    masters); every Runtime reads and settles each lane separately. Default: 1 lane."""


@lanes.command("show")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_settings
def lanes_show(settings: Settings, as_json: bool) -> None:
    """The lane count, the current lanes' hash tags, and older lanes still read."""

    async def main() -> dict[str, Any]:
        async with settings.manager() as sm:
            return await sm.lanes()

    info = run(settings, main)
    if as_json:
        click.echo(to_json(info))
        return
    ns = settings.require_namespace()

    def tag(t: int) -> str:
        return f"{{{ns}}}" if t == 0 else f"{{{ns}/{t}}}"

    click.echo(f"{info['count']} lane(s): {' '.join(tag(t) for t in info['current'])}")
    older = [t for t in info["in_use"] if t not in info["current"]]
    if older:
        click.echo(f"older lanes, served while they hold states: {' '.join(map(tag, older))}")


@lanes.command("set")
@click.argument("count", type=click.IntRange(1, MAX_LANES))
@namespace_option
@pass_settings
def lanes_set(settings: Settings, count: int) -> None:
    """Spread the namespace's new runs over COUNT lanes (safe while runs flow: a run
    stays on its lane, and older lanes are served while they hold states)."""

    async def main() -> list[int]:
        async with settings.manager() as sm:
            return await sm.set_lanes(count)

    tags = run(settings, main)
    click.echo(f"namespace {settings.require_namespace()}: {count} lane(s), tag numbers {tags}")
