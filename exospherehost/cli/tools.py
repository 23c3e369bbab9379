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
@click.option(
    "--token",
    envvar="EXOSPHERE_DASHBOARD_TOKEN",
    default=None,
    help="Required on every request [env: EXOSPHERE_DASHBOARD_TOKEN] (prefer the variable: "
    "others can read command lines).",
)
@click.option("--insecure", is_flag=True, help="Allow binding beyond loopback without a token.")
@pass_settings
def dashboard(settings: Settings, host: str, port: int, token: str | None, insecure: bool) -> None:
    """Serve the web dashboard (namespaces, graphs, workers, throughput, runs, dead
    letters) until Ctrl-C. Beyond 127.0.0.1 it needs a token (--token or
    EXOSPHERE_DASHBOARD_TOKEN; browsers ask for it as a password), unless --insecure."""
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
            token=token,
            insecure=insecure,
        )
    except ModuleNotFoundError as exc:  # its web dependencies are an optional extra
        raise click.ClickException(str(exc)) from None
    except ConfigError as exc:  # no or a bad Redis URL: one line, as every other command
        raise click.ClickException(str(exc)) from None
