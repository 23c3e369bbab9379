"""`exosphere dev MODULE:NODES` (issue 13 item 12): one command starts a private Redis,
workers and the dashboard, prints where they are, and Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exospherehost import StateManager
from exospherehost.testing.cluster import cluster_ports
from tests.integration.helpers import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.slow]
EXOSPHERE = Path(sys.executable).with_name("exosphere")


def _line(proc: subprocess.Popen[str], pattern: str, timeout: float = 30.0) -> re.Match[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s: {seen}")


def _kill_dashboard(port: int) -> None:
    """The dashboard runs in a session of its own (a Ctrl-C to the terminal must not reach
    it before the workers stopped): after a failed test, find it by its port."""
    for line in subprocess.run(
        ["pgrep", "-f", f"exospherehost.dashboard --port {port} "], capture_output=True, text=True
    ).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line), signal.SIGKILL)


async def test_dev_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    (dash_port,) = cluster_ports(1)  # any free port
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EXOSPHERE_REDIS_URL", None)
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [str(EXOSPHERE), "-n", "devtest", "dev", "tests.integration.apps.nodes:SampleNode",
         "--dashboard-port", str(dash_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own group: a failed test kills all it started
    )  # fmt: skip
    try:
        url = (await asyncio.to_thread(_line, proc, r"Redis\s+(redis://\S+)")).group(1)
        await asyncio.to_thread(_line, proc, r"export EXOSPHERE_REDIS_URL=\S+ EXOSPHERE_NAMESPACE=")
        sm = StateManager("devtest", redis_url=url)
        try:
            ids = await sm.enqueue_many("SampleNode", [{"name": "x", "data": {}}])
            done = await sm.wait_for_states("SampleNode", ids, timeout=30)
            assert done[ids[0]].status == "SUCCEEDED"
        finally:
            await sm.close()
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/", timeout=10).status
        )
        assert page == 200
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its workers too
            _kill_dashboard(dash_port)  # it holds the pipes open too
            proc.communicate(timeout=30)
        _kill_dashboard(dash_port)
    assert proc.returncode == 0, err
    assert "worker processes stopped cleanly" in err
    with pytest.raises(OSError):  # the private Redis is gone
        await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    with pytest.raises(OSError):  # and so is the dashboard
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{dash_port}/", None, 2)
