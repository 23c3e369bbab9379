"""`exosphere`: the command line of exospherehost on Redis.

Each command lives in a module of this package and is registered on the group here;
`main` is the console-script entry point (`[project.scripts]` in pyproject.toml)."""

from __future__ import annotations

import click

from exospherehost._version import VERSION
from exospherehost.cli._common import ENV_NAMESPACE, Settings
from exospherehost.cli.dev import dev
from exospherehost.cli.graphs import graphs, nodes, results
from exospherehost.cli.lanes import lanes
from exospherehost.cli.monitor import status
from exospherehost.cli.records import dead, runs
from exospherehost.cli.runstates import states as states_group  # (cli.states: a module)
from exospherehost.cli.states import enqueue, trigger
from exospherehost.cli.tools import bench, dashboard
from exospherehost.cli.workers import worker
from exospherehost.config import ENV_KEY, ENV_URL

__all__ = ["cli", "main"]


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # `exosphere --help` lists commands in the order they are used, not A-Z.
        return list(self.commands)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar=ENV_URL,
    metavar="URL",
    help=f"redis://host:port/db, rediss://... (TLS) or unix:///path.sock [env: {ENV_URL}]",
)
@click.option(
    "--key",
    envvar=ENV_KEY,
    metavar="PASSWORD",
    help=f"Redis password / ACL credential. Prefer ${ENV_KEY}: a command line is "
    "visible to other users of the machine.",
)
@click.option(
    "-n",
    "--namespace",
    envvar=ENV_NAMESPACE,
    help=f"Namespace to work in [env: {ENV_NAMESPACE}].",
)
@click.version_option(VERSION, prog_name="exosphere")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, key: str | None, namespace: str | None) -> None:
    """Run and operate exospherehost on Redis: serve nodes, enqueue states, trigger graph
    runs, and inspect queues, runs and dead letters.

    \b
    Examples:
      exosphere dev examples.nodes:ALL     # private Redis + workers + dashboard
      exosphere -n demo worker examples.nodes:ALL --processes 4
      exosphere -n demo trigger squares --store n=3 --wait
      exosphere status --watch
      exosphere -n demo dead list
    """
    ctx.obj = Settings(redis_url or None, key or None, namespace or None)


for command in (
    dev,
    worker,
    graphs,
    nodes,
    enqueue,
    trigger,
    results,
    status,
    runs,
    states_group,
    dead,
    lanes,
    bench,
    dashboard,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="exosphere")
