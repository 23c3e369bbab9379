"""`exosphere bench` and `exosphere dashboard`: front doors to tools that live elsewhere."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import click

from exospherehost.cli._common import Settings, namespace_option, pass_settings
from exospherehost.config import ConfigError


@click.command(
    short_help="Run the batch-throughput benchmark.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,  # `exosphere bench --help` shows the benchmark's own help
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run the batch-throughput benchmark: `python -m benchmarks.bench ARGS`
    (`exosphere bench --help` for its options). Run it from a checkout of the project,
    which holds benchmarks/. The global --redis-url is not passed on: the benchmark
    starts a private server unless given its own --redis-url."""
    if not os.path.isfile(os.path.join(os.getcwd(), "benchmarks", "bench.py")):
        raise click.ClickException(
            "no benchmarks/bench.py here: run `exosphere bench` from a checkout of exospherehost"
        )
    ctx.exit(subprocess.call([sys.executable, "-m", "benchmarks.bench", *args]))


@click.command(short_help="Serve the web dashboard.")
@namespace_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@pass_settings
def dashboard(settings: Settings, host: str, port: int) -> None:
    """Serve the web dashboard (namespaces, graphs, runs, dead letters) until Ctrl-C.
    It has no login of its own: keep it on 127.0.0.1 or behind an authenticating proxy."""
    try:
        module = importlib.import_module("exospherehost.dashboard")
    except ModuleNotFoundError as exc:
        if exc.name != "exospherehost.dashboard":
            raise
        raise click.ClickException("this exospherehost has no dashboard") from None
    try:
        module.serve(
            host=host,
            port=port,
            redis_url=settings.redis_url,
            key=settings.key,
            namespace=settings.namespace,
        )
    except ModuleNotFoundError as exc:  # its web dependencies are an optional extra
        raise click.ClickException(str(exc)) from None
    except ConfigError as exc:  # no or a bad Redis URL: one line, as every other command
        raise click.ClickException(str(exc)) from None
