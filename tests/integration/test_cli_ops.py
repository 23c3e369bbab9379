"""The operator's command line, second round (issue 13 items 4, 5, 7, 8, 9, 11): dead
letters at scale from the CLI, `exosphere dashboard` start-up errors, mistakes refused
before anything is written, streams no worker serves, dead consumers, and `trigger --wait`
on failure and Ctrl-C. On the session's real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from exospherehost import RetryPolicyModel, Runtime, StateManager, StoreConfigModel
from exospherehost.broker import queues
from exospherehost.broker.codec import decode
from exospherehost.broker.keys import Keys
from exospherehost.cli import cli
from exospherehost.dashboard import create_app
from tests.integration import test_dashboard as dash
from tests.integration.apps.nodes import Label, SampleNode, Split, Square, Typed, Work
from tests.integration.helpers import ROOT, running, squares_graph
from tests.integration.test_cli import EXOSPHERE, arun, failing, one_line_error
from tests.integration.test_dead_letters_scale import BASE_MS, seed

pytestmark = pytest.mark.redis


# -- item 4: dead letters ---------------------------------------------------------------------


async def test_dead_list_pages_newest_first_with_exact_count(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    await seed(redis, namespace, 2000)
    first = await arun(redis_url, namespace, "dead", "list", "--limit", "100")
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert lines[1].startswith(f"{BASE_MS + 1999}-0 ")  # the newest first
    assert lines[100].startswith(f"{BASE_MS + 1900}-0 ")
    assert lines[101] == "(100 shown of 2000 dead letters, newest first)"
    assert lines[102] == f"(more may follow: --before {BASE_MS + 1900}-0)"
    second = await arun(
        redis_url, namespace, "dead", "list", "--limit", "100", "--before", f"{BASE_MS + 1900}-0"
    )
    assert second.stdout.splitlines()[1].startswith(f"{BASE_MS + 1899}-0 ")

    got = json.loads(
        (
            await arun(
                redis_url, namespace, "dead", "list", "--json", "--limit", "1000",
                "--node", "B", "--grep", "boom", "--since", str(BASE_MS + 1000),
            )
        ).stdout
    )  # fmt: skip
    want = [i for i in range(1999, 999, -1) if i % 15 == 0]
    assert [int(d["id"].split("-")[0]) - BASE_MS for d in got["dead"]] == want
    assert (got["count"], got["count_exact"], got["cursor"]) == (len(want), True, None)
    filtered = await arun(redis_url, namespace, "dead", "list", "--node", "B", "--grep", "boom")
    assert f"of {len([i for i in range(2000) if i % 15 == 0])} dead letters matching node B" in (
        filtered.stdout
    )
    assert "is not a time" in one_line_error(
        await arun(redis_url, namespace, "dead", "list", "--since", "yesterday-ish"), code=2
    )


async def test_dead_purge_and_redrive_filtered(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    await seed(redis, namespace, 1500)
    dead = Keys(namespace).dead()
    assert "give dead-letter IDs, filters" in one_line_error(
        await arun(redis_url, namespace, "dead", "purge"), code=2
    )
    # Without --yes it asks; "n" aborts and nothing is removed.
    asked = await arun(redis_url, namespace, "dead", "purge", "--node", "A", stdin="n\n")
    assert asked.exit_code == 1 and "Delete 1000 dead letter(s) matching node A" in asked.stderr
    assert await redis.xlen(dead) == 1500
    purged = await arun(redis_url, namespace, "dead", "purge", "--node", "A", "--yes")
    assert purged.stdout.strip() == "purged 1000 dead letters"
    assert await redis.xlen(dead) == 500
    one = await arun(redis_url, namespace, "dead", "purge", f"{BASE_MS}-0")
    assert one.stdout.strip() == "purged 1 dead letter"
    redriven = await arun(redis_url, namespace, "dead", "redrive", "--grep", "boom")
    assert redriven.stdout.strip() == "redrove 99 dead letters"  # i % 15 == 0, i > 0
    assert await redis.xlen(Keys(namespace).queue("B")) == 99
    everything = await arun(redis_url, namespace, "dead", "purge", "--all", "--yes")
    assert everything.stdout.strip() == f"purged {500 - 1 - 99} dead letters"
    assert await redis.xlen(dead) == 0


# -- item 5: `exosphere dashboard` start-up errors ------------------------------------------


def test_dashboard_start_errors_are_one_line(redis_url: str) -> None:
    """No Redis URL, a bad -n, a port in use: one `Error:` line, exit status 1, no
    traceback, before uvicorn starts (it printed its errno after "Application startup
    complete" and exited 3)."""
    none = {"EXOSPHERE_REDIS_URL": None, "EXOSPHERE_NAMESPACE": None, "EXOSPHERE_API_KEY": None}
    assert "no Redis configured" in one_line_error(CliRunner().invoke(cli, ["dashboard"], env=none))
    env = {**none, "EXOSPHERE_REDIS_URL": redis_url}
    bad = CliRunner().invoke(cli, ["-n", "no{good}", "dashboard"], env=env)
    assert "namespace 'no{good}' is not valid" in one_line_error(bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(cli, ["dashboard", "--port", str(port)], env=env)
        assert f"cannot listen on 127.0.0.1:{port}: port {port} is in use" in one_line_error(busy)
    beyond = ["dashboard", "--host", "192.0.2.1", "--insecure"]  # (no token needed then)
    nowhere = CliRunner().invoke(cli, beyond, env=env)
    assert "cannot listen on 192.0.2.1:8080" in one_line_error(nowhere)


# -- item 7: mistakes refused before anything is written --------------------------------------


async def test_enqueue_and_trigger_refuse_mistakes_before_writing(
    redis_url: str, namespace: str, redis: Redis, tmp_path: Path
) -> None:
    keys = Keys(namespace)
    rt = Runtime(namespace, "checks", [SampleNode, Split, Square, Label, Typed], redis_url)
    async with running(rt), StateManager(namespace, redis_url) as sm:
        await sm.upsert_graph(
            "squares",
            squares_graph(namespace, items="${{ store.n }}"),
            store_config=StoreConfigModel(required_keys=["n"]),
        )
        rt.stop()  # registered; nothing may run what the checks let through

        async def refused(*args: str) -> str:
            result = await arun(redis_url, namespace, *args)
            error = one_line_error(result, code=2)
            assert result.stderr.strip().splitlines() == [error], "more than one line"
            return error

        assert "Square has no input 'valeu' (did you mean 'value'?) (its inputs: value)" in (
            await refused("enqueue", "Square", "-i", "valeu=5")
        )
        assert "input 'value' of Square must be an integer, got 'abc'" in (
            await refused("enqueue", "Square", "-i", "value=abc")
        )
        assert "input 'data' of SampleNode: '{\"a\":' is not valid JSON" in (
            await refused("enqueue", "SampleNode", "-i", "name=x", "-i", 'data={"a":')
        )
        assert "SampleNode needs input 'data'" in (
            await refused("enqueue", "SampleNode", "-i", "name=x")
        )
        assert "input 'ratio' of Typed must be a number, got 'fast'" in (
            await refused("enqueue", "Typed", "-i", "ratio=fast")
        )
        path = tmp_path / "lines.jsonl"
        path.write_text('{"value": 1}\n{"value": "two"}\n')
        assert f"{path} line 2: input 'value' of Square must be an integer, got \"two\"" in (
            await refused("enqueue", "Square", "--file", str(path))
        )
        assert "store key 'm' is not declared by graph 'squares' (declared: n" in (
            await refused("trigger", "squares", "-s", "n=3", "-s", "m=1")
        )
        assert "Split (root 'split') has no input 'itemz' (did you mean 'items'?)" in (
            await refused("trigger", "squares", "-s", "n=3", "-i", "itemz=5")
        )
        for node in ("Square", "SampleNode", "Typed", "Split"):
            assert await redis.xlen(keys.queue(node)) == 0, f"{node}: a refused state was written"
        assert await sm.list_runs("squares") == []

        # What is right still goes: a string field takes the text as given ("5", not 5).
        ok = await arun(
            redis_url, namespace, "enqueue", "SampleNode", "-i", "name=5", "-i", 'data={"a": 1}'
        )
        assert ok.exit_code == 0, ok.output
        [(entry_id, fields)] = await redis.xrange(keys.queue("SampleNode"))
        assert decode(entry_id, fields).inputs == {"name": "5", "data": {"a": 1}}
        ok = await arun(redis_url, namespace, "trigger", "squares", "-s", "n=2", "-i", "items=4")
        assert ok.exit_code == 0, ok.output
        assert len(await sm.list_runs("squares")) == 1


# -- item 11: trigger --wait on failure and on Ctrl-C --------------------------------------


async def test_trigger_wait_prints_the_failed_states_errors(redis_url: str, namespace: str) -> None:
    rt = Runtime(namespace, "fails", [Split, Work], redis_url)
    async with running(rt), StateManager(namespace, redis_url) as sm:
        await sm.upsert_graph(
            "fails",
            failing(namespace),
            store_config=StoreConfigModel(required_keys=["n"]),
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        result = await arun(redis_url, namespace, "trigger", "fails", "-s", "n=3", "-w")
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    [failure] = payload["failures"]
    assert failure["identifier"] == "work" and "branch 1 fails for good" in failure["error"]
    err = result.stderr.splitlines()
    at = err.index(f"run {payload['run_id']} FAILED: 1 state(s) failed")
    assert err[at + 1] == (
        f"  work (Work) state {failure['state_id']}, attempt 1: RuntimeError: branch 1 fails "
        "for good"
    )


def test_ctrl_c_during_wait_says_the_run_goes_on(redis_url: str, namespace: str) -> None:
    """No worker serves the graph: --wait would wait; SIGINT ends it with exit 130 and how
    to follow the run, which goes on (it is still RUNNING in Redis)."""
    url, ns = redis_url, namespace

    async def upsert() -> None:
        rt = Runtime(ns, "reg", [Split, Square, Label], url)
        async with running(rt), StateManager(ns, url) as sm:
            await sm.upsert_graph("squares", squares_graph(ns))

    asyncio.run(upsert())
    env = {**os.environ, "EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": ns}
    proc = subprocess.Popen(
        [str(EXOSPHERE), "trigger", "squares", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As at a terminal: a test run in the background may have SIGINT ignored, which a
        # child would inherit (and Python then installs no KeyboardInterrupt handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "run <id>": triggered, now following
        assert first.startswith("run "), first
        run_id = first.split()[1]
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "Aborted!" not in rest
    assert f"Interrupted: stopped following; run {run_id} goes on. Follow it with " in rest
    assert f"`exosphere -n {ns} runs show {run_id}`" in rest

    async def status() -> str:
        async with StateManager(ns, url) as sm:
            return (await sm.status(run_id)).status

    assert asyncio.run(status()) == "RUNNING"


# -- items 8 and 9: streams nobody serves, dead workers' consumers ---------------------------


async def test_status_and_dashboard_show_streams_no_worker_serves(
    redis_url: str, namespace: str, redis: Redis
) -> None:
    """States enqueued for a node no Runtime registered sit on a stream `status` and the
    dashboard did not show; now listed (SCAN of the queue streams), flagged."""
    async with StateManager(namespace, redis_url) as sm:
        await redis.hset(sm.keys.nodes(), mapping={"Square": "{}"})
        await sm.enqueue_many("Ghost", [{"x": 1}] * 3)
    got = await arun(redis_url, namespace, "status", "--json", "--interval", "0.1")
    nodes = json.loads(got.stdout)["namespaces"][namespace]["nodes"]
    assert nodes["Ghost"]["backlog"] == 3 and nodes["Ghost"]["registered"] is False
    assert nodes["Ghost"]["note"] == "no worker serves this (node not registered)"
    assert nodes["Square"]["note"] is None  # registered, nothing waiting
    table = await arun(redis_url, namespace, "status", "--interval", "0.1")
    [row] = [line for line in table.stdout.splitlines() if line.startswith("Ghost ")]
    assert row.split()[1] == "3" and row.endswith("no worker serves this (node not registered)")
    with dash.dashboard_server(create_app(redis_url, None)) as url:
        status, overview = await asyncio.to_thread(_get, f"{url}api/ns/{namespace}")
    assert status == 200
    assert overview["nodes"]["Ghost"]["note"] == "no worker serves this (node not registered)"


async def test_status_counts_live_workers_only(
    redis_url: str, namespace: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer left in the group by a killed worker (idle, never recorded alive) is not
    counted; the live Runtime is (recorded in the alive set, though its reads of an empty
    stream leave its idle time growing on Redis 7.0)."""
    monkeypatch.setattr(queues, "LIVE_IDLE_MS", 300)  # instead of 30 s: the test's clock
    keys = Keys(namespace)
    async with running(Runtime(namespace, "live", [Square], redis_url)):
        q = keys.queue("Square")
        await redis.execute_command("XGROUP", "CREATECONSUMER", q, "exo", "gone")
        # Killed a while ago: recorded alive lately, but its worker record stopped 2 min ago
        # (the record index decides for a Runtime that writes records).
        await redis.execute_command("XGROUP", "CREATECONSUMER", q, "exo", "killed")
        now_ms = int(time.time() * 1000)
        await redis.zadd(keys.alive(), {"killed": now_ms})
        await redis.zadd(keys.workers(), {"killed": now_ms - 120_000})

        async def idles() -> list[int]:
            return [
                int(c["idle"]) for c in await redis.xinfo_consumers(keys.queue("Square"), "exo")
            ]

        # Both idle past the (shortened) bound: only the alive record tells them apart.
        deadline = asyncio.get_running_loop().time() + 10
        while min(await idles()) < 400:
            assert asyncio.get_running_loop().time() < deadline, "consumers never went idle"
            await asyncio.sleep(0.05)
        got = await arun(redis_url, namespace, "status", "--json", "--interval", "0.1")
        row = json.loads(got.stdout)["namespaces"][namespace]["nodes"]["Square"]
        assert (row["consumers"], row["consumers_total"]) == (1, 3), row
        assert row["note"] == "not counted: 2 consumer(s) of dead workers"
        async with StateManager(namespace, redis_url) as sm:
            assert (await sm.node_stats())["Square"]["consumers"] == 1


def _get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, json.loads(reply.read())


async def test_worker_caps_the_dead_letters(redis_url: str, namespace: str, redis: Redis) -> None:
    """`exosphere worker --dead-letters-max N`: the dead stream stays near N."""
    proc = _worker(
        redis_url, namespace, "tests.integration.apps.nodes:Square", "--dead-letters-max", "50"
    )
    keys = Keys(namespace)
    try:
        async with StateManager(namespace, redis_url) as sm:
            await sm.enqueue_many("Square", [{"value": "abc"}] * 400)  # invalid: dead at once

            async def settled() -> bool:
                return await redis.xlen(keys.queue("Square")) == 0

            deadline = asyncio.get_running_loop().time() + 30
            while not await settled():
                assert proc.poll() is None, "the worker exited"
                assert asyncio.get_running_loop().time() < deadline, "not settled in 30 s"
                await asyncio.sleep(0.1)
        n = await redis.xlen(keys.dead())
        assert 50 <= n < 200, f"dead stream holds {n}, cap 50 (~)"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)


def _worker(url: str, ns: str, *args: str) -> subprocess.Popen[bytes]:
    """`exosphere worker ARGS` as a process (output discarded)."""
    env = {**os.environ, "EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": ns}
    return subprocess.Popen(
        [str(EXOSPHERE), "worker", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


browser = dash.browser  # headless Chromium (skipped without it, except in CI)


async def test_dashboard_page_flags_a_stream_no_worker_serves(
    redis_url: str, namespace: str, redis: Redis, browser: Any
) -> None:
    """Headless Chromium: the namespace page's Nodes table lists the stream of a node no
    Runtime registered, with its backlog and the note."""
    async with StateManager(namespace, redis_url) as sm:
        await redis.hset(sm.keys.nodes(), mapping={"Square": "{}"})
        await sm.enqueue_many("Ghost", [{"x": 1}] * 3)
    page = dash.Page(browser)
    with dash.dashboard_server(create_app(redis_url, None)) as url:
        await page.open(f"{url}#/ns/{namespace}")
        row = 'tr[data-node="Ghost"]'
        await page.text_of(f"{row} td.queue", "3")
        await page.text_of(f"{row} td.note.warn", "no worker serves this (node not registered)")
        if shot := os.environ.get("EXO_NODES_SCREENSHOT"):
            await asyncio.to_thread(browser.save_screenshot, shot)
