"""`exosphere bench` and `exosphere dashboard`: front doors to tools that live elsewhere."""

from __future__ import annotations

import errno
import importlib
import os
import socket
import subprocess
import sys

import click

from exospherehost.broker.keys import name_problem
from exospherehost.cli._common import Settings, namespace_option, pass_settings
from exospherehost.config import ConfigError, resolve
from exospherehost.errors import ExosphereError


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
    # What users get wrong is said in one line before uvicorn starts (it would print a
    # traceback, or its errno after "Application startup complete", and exit 3).
    if settings.namespace is not None and (
        problem := name_problem("namespace", settings.namespace)
    ):
        raise click.ClickException(problem)
    try:
        resolve(settings.redis_url, settings.key)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    check_port(host, port)  # the token policy beyond loopback: serve() checks it
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
    except (ConfigError, ExosphereError) as exc:  # one line, as every other command
        raise click.ClickException(str(exc)) from None


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address the dashboard could not listen on (port in use,
    not allowed, or a host that is not this machine's), before uvicorn tries."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so only a port someone listens on is refused.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                why = f"port {port} is in use (another dashboard? pick one with --port)"
            raise click.ClickException(f"cannot listen on {host}:{port}: {why}") from None
