"""`exosphere dev MODULE:NODES`: everything a developer needs on one machine, in one
command (as `temporal server start-dev` does): a private Redis the command starts itself,
worker processes serving the nodes, and the dashboard; Ctrl-C stops it all. Nothing is
kept: the private server has no persistence and its directory is removed at the end."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import click

from exospherehost.cli._common import (
    Settings,
    namespace_option,
    one_line_errors,
    pass_settings,
)
from exospherehost.cli.workers import _Plan, _supervise, concurrency_option, processes_option
from exospherehost.config import ENV_KEY, ENV_URL
from exospherehost.logs import setup_logging
from exospherehost.testing.server import PrivateServer

log = logging.getLogger("exospherehost.cli")
DEFAULT_NAMESPACE = "dev"


@contextlib.contextmanager
def _dashboard(url: str, namespace: str, port: int) -> Iterator[str | None]:
    """The dashboard in its own process (uvicorn owns its signals), or None without the
    `dashboard` extra."""
    if port == 0:
        yield None
        return
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        log.warning("no dashboard: pip install 'exospherehost[dashboard]' for it")
        yield None
        return
    env = {**os.environ, ENV_URL: url}
    env.pop(ENV_KEY, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exospherehost.dashboard", "--port", str(port),
         "--namespace", namespace],
        env=env,
        # Ctrl-C reaches the whole process group; this command stops the dashboard last.
        start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/" if _listening(proc, port) else None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> bool:
    """Wait until the dashboard accepts connections (its address is printed only then);
    False, with a warning, if it exited first (e.g. the port is taken) or is too slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.warning("the dashboard exited (code %s): is port %d taken?", proc.returncode, port)
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    log.warning("the dashboard did not answer on port %d within %.0fs", port, timeout)
    return False


@click.command(short_help="A private Redis, workers and the dashboard on this machine.")
@click.argument("target", metavar="MODULE:NODES")
@namespace_option
@processes_option
@concurrency_option
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of the dashboard (0: no dashboard).",
)
@click.option(
    "--redis-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the private Redis (default: a free one).",
)
@pass_settings
def dev(
    settings: Settings,
    target: str,
    processes: int,
    concurrency: int,
    dashboard_port: int,
    redis_port: int | None,
) -> None:
    """Start a private Redis (redis-server on PATH, else the one of the `server` extra),
    PROCESSES workers serving MODULE:NODES and the dashboard; print where they are and
    the line that points other shells (`exosphere trigger`, your producer) at them.
    Ctrl-C stops everything; the private Redis keeps nothing.

    The namespace is -n / $EXOSPHERE_NAMESPACE, else "dev". A configured
    $EXOSPHERE_REDIS_URL is not used: `exosphere worker` is the command for a real Redis.
    """
    namespace = settings.namespace or DEFAULT_NAMESPACE
    setup_logging()
    with one_line_errors(settings):
        _Plan(target, namespace, "exosphere-dev", None, None).runtime_nodes()
        server = PrivateServer(port=redis_port)
        info = server.start()
    try:
        url = info.url
        with _dashboard(url, namespace, dashboard_port) as page:
            click.echo(f"Redis      {url}  ({info.kind}; nothing is kept)")
            if page is not None:
                click.echo(f"Dashboard  {page}")
            click.echo(f"Workers    {processes} x {concurrency} serving {target}")
            click.echo(
                f"In another shell:\n  export {ENV_URL}={url} EXOSPHERE_NAMESPACE={namespace}"
            )
            click.echo("Ctrl-C stops everything.", err=True)
            plan = _Plan(
                target,
                namespace,
                "exosphere-dev",
                url,
                None,
                {"workers": concurrency, "grace_period": 5.0},
            )
            failures = _supervise(plan, processes, None)
    finally:
        server.stop()
    if failures:
        raise click.ClickException("; ".join(failures))
