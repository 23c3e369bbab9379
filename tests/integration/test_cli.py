"""The `exosphere` command line against the session's real Redis.

Commands run through click's CliRunner; in async tests (a Runtime serving in the test's
loop) they run in a thread, since each command runs its own event loop. `worker
--processes 2` runs as a real `exosphere` process, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from redis.asyncio import Redis

from exospherehost import GraphNodeModel, RetryPolicyModel, Runtime, StateManager, StoreConfigModel
from exospherehost.broker.codec import decode
from exospherehost.cli import cli, monitor
from exospherehost.cli._common import Settings
from tests.integration.apps.nodes import Label, SampleNode, Split, Square, Work
from tests.integration.helpers import ROOT, running, squares_graph

pytestmark = pytest.mark.redis

UNREACHABLE = "redis://127.0.0.1:1/0"
EXOSPHERE = Path(sys.executable).with_name("exosphere")


def run_cli(url: str, ns: str | None, *args: str, stdin: str | None = None) -> Result:
    """`exosphere ARGS` with Redis and namespace from the environment, as users set them."""
    env = {"EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": ns, "EXOSPHERE_API_KEY": None}
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would have reached the user: fail loudly
    return result


async def arun(url: str, ns: str | None, *args: str, stdin: str | None = None) -> Result:
    return await asyncio.to_thread(run_cli, url, ns, *args, stdin=stdin)


def one_line_error(result: Result, code: int = 1) -> str:
    """The command failed with one `Error: ...` line (after click's usage lines, if any)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("warning: ")]
    assert lines[-1].startswith("Error: "), result.stderr
    if code == 1:
        assert len(lines) == 1, result.stderr
    return lines[-1]


def failing(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Split",
            namespace=ns,
            identifier="split",
            inputs={"items": "${{ store.n }}"},
            next_nodes=["work"],
        ),
        GraphNodeModel(
            node_name="Work",
            namespace=ns,
            identifier="work",
            inputs={"value": "${{ split.outputs.value }}", "fail_at": 1},
        ),
    ]


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> Any:
    manager = StateManager(namespace, redis_url=redis_url)
    yield manager
    await manager.close()


def runtime(url: str, ns: str) -> Runtime:
    return Runtime(ns, "cli", [SampleNode, Split, Square, Label, Work], redis_url=url)


# -- help ---------------------------------------------------------------------------------


def test_help_lists_every_command_in_order() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = re.findall(r"^  (\w+)  ", result.output.split("Commands:")[1], re.M)
    assert listed == [
        "dev",
        "worker",
        "graphs",
        "nodes",
        "enqueue",
        "trigger",
        "results",
        "status",
        "runs",
        "states",
        "dead",
        "lanes",
        "bench",
        "dashboard",
    ]
    assert "EXOSPHERE_REDIS_URL" in result.output and "EXOSPHERE_NAMESPACE" in result.output
    for command in (
        ["worker"],
        ["enqueue"],
        ["trigger"],
        ["status"],
        ["runs", "list"],
        ["runs", "show"],
        ["dead", "list"],
        ["dead", "show"],
        ["dead", "redrive"],
        ["lanes", "show"],
        ["lanes", "set"],
        ["dashboard"],
    ):
        sub = CliRunner().invoke(cli, [*command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert sub.output.startswith("Usage: ")


# -- enqueue ------------------------------------------------------------------------------


async def _queued_inputs(redis: Redis, sm: StateManager, node: str) -> dict[str, Any]:
    entries = await redis.xrange(sm.keys.queue(node))
    return {decode(i, f).state_id: decode(i, f).inputs for i, f in entries}


async def test_enqueue_parses_values_as_json_when_they_parse(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    result = await arun(
        redis_url,
        namespace,
        "enqueue",
        "SampleNode",
        "-i",
        "name=Alice",
        "--input",
        'data={"k": [1, 2]}',
        "-i",
        "n=3",
        "-i",
        "flag=true",
        "-i",
        "none=null",
        "-i",
        "eq=a=b",
    )
    assert result.exit_code == 0, result.output
    state_id = result.stdout.strip()
    # Nothing registered SampleNode yet: a warning, not an error (a Runtime may come later).
    assert "no Runtime has registered node 'SampleNode'" in result.stderr
    queued = await _queued_inputs(redis, sm, "SampleNode")
    assert queued == {
        state_id: {
            "name": "Alice",
            "data": {"k": [1, 2]},
            "n": 3,
            "flag": True,
            "none": None,
            "eq": "a=b",
        }
    }


async def test_enqueue_from_json_lines_in_batches(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("exospherehost.cli.states.ENQUEUE_BATCH", 4)
    path = tmp_path / "states.jsonl"
    path.write_text("".join(json.dumps({"name": f"n{i}"}) + "\n" for i in range(10)) + "\n")
    result = await arun(
        redis_url, namespace, "enqueue", "SampleNode", "--file", str(path), "-i", 'data={"d": 1}'
    )
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 10 == len(set(ids))
    queued = await _queued_inputs(redis, sm, "SampleNode")
    assert [queued[i] for i in ids] == [{"data": {"d": 1}, "name": f"n{i}"} for i in range(10)]

    # stdin, and an --input default overridden by the line
    result = await arun(
        redis_url,
        namespace,
        "enqueue",
        "Square",
        "-f",
        "-",
        "-i",
        "value=1",
        stdin='{"value": 7}\n{}\n',
    )
    assert result.exit_code == 0, result.output
    first, second = result.stdout.split()
    queued = await _queued_inputs(redis, sm, "Square")
    assert queued[first] == {"value": 7} and queued[second] == {"value": 1}


async def test_enqueue_bad_line_says_where_and_what_was_enqueued(
    redis_url: str,
    namespace: str,
    redis: Redis,
    sm: StateManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("exospherehost.cli.states.ENQUEUE_BATCH", 2)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"value": 1}\n{"value": 2}\n{"value": 3}\n[4]\n')
    result = await arun(redis_url, namespace, "enqueue", "Square", "--file", str(path))
    error = one_line_error(result)
    assert "line 4: a JSON list, not an object of inputs; 2 states before it" in error
    assert len(result.stdout.split()) == 2
    assert await redis.xlen(sm.keys.queue("Square")) == 2

    path.write_text("{nope\n")
    assert "line 1: not JSON" in one_line_error(
        await arun(redis_url, namespace, "enqueue", "Square", "--file", str(path))
    )


def test_enqueue_argument_errors_are_one_line(redis_url: str, namespace: str) -> None:
    assert "'name' is not key=value" in one_line_error(
        run_cli(redis_url, namespace, "enqueue", "SampleNode", "-i", "name"), code=2
    )
    assert "node name 'bad name' is not valid" in one_line_error(
        run_cli(redis_url, namespace, "enqueue", "bad name", "-i", "a=1")
    )
    assert "no namespace" in one_line_error(
        run_cli(redis_url, None, "enqueue", "SampleNode"), code=2
    )
    assert "is not a Redis URL" in one_line_error(
        run_cli("http://localhost", namespace, "enqueue", "SampleNode")
    )


# -- trigger, runs ----------------------------------------------------------------------


async def test_trigger_wait_shows_progress_then_results_and_runs_show_it(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph(
            "squares",
            squares_graph(namespace, items="${{ store.n }}"),
            store_config=StoreConfigModel(required_keys=["n"]),
        )
        result = await arun(
            redis_url,
            namespace,
            "trigger",
            "squares",
            "--store",
            "n=3",
            "--wait",
            "--timeout",
            "30",
        )
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["status"] == "SUCCEEDED"
        assert payload["nodes"]["label"]["succeeded"] == 3
        assert sorted(r["outputs"]["square"] for r in payload["results"]) == [0, 1, 4]
        # Progress on stderr (not a terminal: one line per change), ending with the total.
        assert result.stderr.startswith(f"run {payload['run_id']}\n")
        assert "SUCCEEDED split 1/1  square 3/3  label 3/3" in result.stderr

        plain = await arun(redis_url, namespace, "trigger", "squares", "-s", "n=2")
        assert plain.exit_code == 0, plain.output
        second = plain.stdout.strip()
        await sm.wait(second, timeout=15)

    listed = await arun(redis_url, namespace, "runs", "list", "squares")
    assert listed.exit_code == 0, listed.output
    *lines, footer = listed.stdout.splitlines()
    assert lines[0].split() == ["RUN", "GRAPH", "STATUS", "CREATED", "TOOK", "STATES", "FAILED"]
    assert [line.split()[0] for line in lines[1:]] == [second, payload["run_id"]]  # newest first
    assert "SUCCEEDED" in lines[1] and "5/5" in lines[1] and "7/7" in lines[2]
    assert footer == "runs of 'squares' 1-2 of 2"
    page = json.loads((await arun(redis_url, namespace, "runs", "list", "squares", "--json",
                                  "--offset", "1", "--count", "5")).stdout)  # fmt: skip
    assert [r["run_id"] for r in page["runs"]] == [payload["run_id"]]
    assert page["total"] == 2 and page["offset"] == 1

    shown = await arun(redis_url, namespace, "runs", "show", payload["run_id"])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"run {payload['run_id']}  graph squares  SUCCEEDED" in text
    assert re.search(r"^label\s+0\s+3\s+0\s+0\s+0\s+0$", text, re.M)
    assert "history (7):" in text and "results (3):" in text
    as_json = json.loads(
        (await arun(redis_url, namespace, "runs", "show", second, "--json")).stdout
    )
    assert as_json["status"]["status"] == "SUCCEEDED"
    assert len(as_json["history"]) == 5 and len(as_json["results"]) == 2


async def test_trigger_wait_exits_1_on_a_failed_run(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph(
            "fails",
            failing(namespace),
            store_config=StoreConfigModel(required_keys=["n"]),
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        result = await arun(redis_url, namespace, "trigger", "fails", "-s", "n=3", "-w")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["status"] == "FAILED"
    assert payload["nodes"]["work"] == {
        "pending": 0,
        "succeeded": 2,
        "failed": 1,
        "pruned": 0,
        "retried": 0,
        "skipped": 0,
    }
    assert "work 3/3 (1 failed)" in result.stderr
    shown = await arun(redis_url, namespace, "runs", "show", payload["run_id"])
    assert "branch 1 fails for good" in shown.stdout


async def test_trigger_and_runs_errors_are_one_line(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace)):  # registers the nodes, then stops
        await sm.upsert_graph(
            "squares",
            squares_graph(namespace, items="${{ store.n }}"),
            store_config=StoreConfigModel(required_keys=["n"]),
        )
    assert f"graph 'nope' not found in namespace '{namespace}'" in one_line_error(
        await arun(redis_url, namespace, "trigger", "nope")
    )
    assert "requires store keys ['n']" in one_line_error(
        await arun(redis_url, namespace, "trigger", "squares")
    )
    # No Runtime serves it: --wait gives up after --timeout, and says how to follow the run.
    timed_out = await arun(
        redis_url, namespace, "trigger", "squares", "-s", "n=1", "--wait", "--timeout", "0.3"
    )
    assert timed_out.exit_code == 1 and "Traceback" not in timed_out.output
    assert timed_out.stdout == ""  # no JSON: the run has no result yet
    *progress, error = timed_out.stderr.strip().splitlines()
    assert progress[-1].split() == ["RUNNING", "split", "0/1", "square", "0/0", "label", "0/0"]
    assert "not finished after 0.3s" in error and "runs show" in error
    assert "graph 'nope' not found" in one_line_error(
        await arun(redis_url, namespace, "runs", "list", "nope")
    )
    assert "run 'nope' not found" in one_line_error(
        await arun(redis_url, namespace, "runs", "show", "nope")
    )
    empty = await arun(redis_url, namespace, "runs", "list", "squares", "--offset", "5")
    assert (
        empty.exit_code == 0 and "no runs of 'squares' after the first 5 (1 match)" in empty.stdout
    )


# -- status -------------------------------------------------------------------------------


async def test_status_reports_queue_figures(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    await redis.hset(sm.keys.nodes(), mapping={"SampleNode": "{}", "Square": "{}"})
    await sm.enqueue_many("SampleNode", [{"name": "x", "data": {}}] * 5)
    await sm.enqueue_many("Square", [{"value": 1}] * 2, delay_ms=60_000)

    result = await arun(redis_url, namespace, "status", "--json", "--interval", "0.1")
    assert result.exit_code == 0, result.output
    sample = json.loads(result.stdout)["namespaces"][namespace]
    assert sample["dead_letters"] == 0
    node = sample["nodes"]["SampleNode"]
    assert {k: node[k] for k in ("backlog", "pending", "consumers", "delayed")} == {
        "backlog": 5,
        "pending": 0,
        "consumers": 0,
        "delayed": 0,
    }
    assert node["in_per_s"] == 0 and node["done_per_s"] == 0  # nothing moved in between
    assert sample["nodes"]["Square"]["delayed"] == 2

    table = await arun(redis_url, namespace, "status", "--interval", "0.1")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0] == f"namespace {namespace}   dead letters: 0"
    assert lines[1].split() == [
        "NODE",
        "BACKLOG",
        "PENDING",
        "CONSUMERS",
        "LAG",
        "OLDEST",
        "DELAYED",
        "IN/S",
        "DONE/S",
        "NOTE",
    ]
    assert lines[2].split()[:9] == ["SampleNode", "5", "0", "0", "-", "-", "0", "0.0", "0.0"]
    assert lines[2].endswith("no worker serves this (no live worker)")  # 5 wait, nobody reads

    # Without a namespace: every namespace with registered nodes, ours among them.
    everything = await arun(redis_url, None, "status", "--json", "--interval", "0.1")
    assert namespace in json.loads(everything.stdout)["namespaces"]

    watched = await arun(
        redis_url, namespace, "status", "--watch", "--count", "2", "--interval", "0.1"
    )
    assert watched.exit_code == 0, watched.output
    assert watched.stdout.count(f"namespace {namespace}") == 2
    assert "(Ctrl-C to stop)" in watched.stdout


async def test_status_throughput_is_measured_between_samples(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """IN/S counts entries added to the stream, DONE/S entries a settle removed."""
    await redis.hset(sm.keys.nodes(), "Square", "{}")
    await sm.enqueue_many("Square", [{"value": 1}] * 3)
    mon = monitor._Monitor(Settings(redis_url, None, namespace))
    clock = iter([100.0, 102.0])
    mon.clock = lambda: next(clock)
    try:
        await mon.sample()
        await sm.enqueue_many("Square", [{"value": 2}] * 5)  # 5 in
        ids = [i for i, _ in await redis.xrange(sm.keys.queue("Square"), count=2)]
        await redis.xdel(sm.keys.queue("Square"), *ids)  # 2 settled (settles XDEL)
        row = (await mon.sample())[namespace]["nodes"]["Square"]
    finally:
        await mon.close()
    assert row["in_per_s"] == 2.5 and row["done_per_s"] == 1.0
    assert row["backlog"] == 6


def test_status_errors_are_one_line(namespace: str) -> None:
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in one_line_error(
        run_cli(UNREACHABLE, namespace, "status", "--interval", "0.1")
    )
    assert "cannot reach Redis" in one_line_error(
        run_cli(UNREACHABLE, None, "status", "--interval", "0.1")
    )


# -- dead letters -------------------------------------------------------------------------


async def test_dead_letters_list_show_and_redrive(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace)):
        # Inputs Square cannot validate: a permanent failure, dead-lettered at once.
        for v in ("abc", "def", "ghi"):
            await sm.enqueue("Square", {"value": v})

        async def dead_count() -> int:
            return len(await sm.dead_letters())

        deadline = time.monotonic() + 15
        while await dead_count() < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    # The Runtime is stopped: redriven states stay on the stream for the checks below.

    listed = await arun(redis_url, namespace, "dead", "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "NODE", "STATE", "RUN", "TRIES", "WHEN", "ERROR"]
    assert len(lines) == 5 and all(" Square " in line for line in lines[1:4])
    assert "invalid inputs for Square" in lines[1]
    assert lines[4] == "(3 shown of 3 dead letters, newest first)"
    listing = json.loads((await arun(redis_url, namespace, "dead", "list", "--json")).stdout)
    assert (listing["count"], listing["cursor"]) == (3, None)
    letters = listing["dead"][::-1]  # newest first: oldest first from here on
    first, second, third = (d["id"] for d in letters)
    # Listed in settle order; settles of different batches may overtake each other.
    assert sorted(d["inputs"]["value"] for d in letters) == ["abc", "def", "ghi"]
    paged = await arun(redis_url, namespace, "dead", "list", "--count", "1", "--after", first)
    assert second in paged.stdout and third not in paged.stdout
    assert f"(more may follow: --after {second})" in paged.stdout

    shown = await arun(redis_url, namespace, "dead", "show", first)
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^node:\s+Square$", shown.stdout, re.M)
    assert re.search(r"^error:\s+invalid inputs for Square", shown.stdout, re.M)
    assert json.dumps(letters[0]["inputs"]) in shown.stdout

    redriven = await arun(redis_url, namespace, "dead", "redrive", first)
    assert redriven.exit_code == 0 and redriven.stdout.strip() == f"redrove {first}"
    assert "redriven already?" in one_line_error(
        await arun(redis_url, namespace, "dead", "redrive", first)
    )
    assert "redriven already?" in one_line_error(
        await arun(redis_url, namespace, "dead", "show", first)
    )
    everything = await arun(redis_url, namespace, "dead", "redrive", "--all")
    assert everything.stdout.strip() == "redrove 2 dead letters"
    assert await redis.xlen(sm.keys.queue("Square")) == 3
    assert (await arun(redis_url, namespace, "dead", "list")).stdout.strip() == "no dead letters"

    assert "give a dead-letter ID or --all" in one_line_error(
        await arun(redis_url, namespace, "dead", "redrive"), code=2
    )
    assert "give a dead-letter ID or --all" in one_line_error(
        await arun(redis_url, namespace, "dead", "redrive", first, "--all"), code=2
    )
    assert "'abc' is not a dead-letter id" in one_line_error(
        await arun(redis_url, namespace, "dead", "show", "abc"), code=2
    )
    assert "cannot reach Redis" in one_line_error(
        await arun(UNREACHABLE, namespace, "dead", "list")
    )


async def test_dead_show_of_an_undecodable_entry(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    async with running(runtime(redis_url, namespace)):
        await redis.xadd(sm.keys.queue("Square"), {"_exo": b"\xc1garbage"})
        deadline = time.monotonic() + 15
        while not (letters := await sm.dead_letters()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    shown = await arun(redis_url, namespace, "dead", "show", letters[0].id, "--json")
    assert shown.exit_code == 0, shown.output
    view = json.loads(shown.stdout)
    assert view["node"] == "Square" and view["inputs"]["fields"] == {"_exo": "\ufffdgarbage"}
    assert view["inputs"]["undecodable"]
    text = await arun(redis_url, namespace, "dead", "show", letters[0].id)
    assert text.exit_code == 0 and "undecodable" in text.stdout


# -- worker -------------------------------------------------------------------------------


def test_worker_argument_errors_are_one_line(redis_url: str, namespace: str) -> None:
    cases = {
        "examples.nodes": "expected MODULE:NODES",
        "examples.nodes:": "expected MODULE:NODES",
        ":Split": "expected MODULE:NODES",
        "no_such_module_xyz:ALL": "cannot import 'no_such_module_xyz'",
        "tests.integration.apps.nodes:Nope": "'tests.integration.apps.nodes' has no 'Nope'",
    }
    for target, message in cases.items():
        assert message in one_line_error(run_cli(redis_url, namespace, "worker", target), code=2)
    # Importable, but not node classes: the Runtime's validation, in one line per problem.
    result = run_cli(redis_url, namespace, "worker", "json:dumps,loads")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("Error: invalid nodes:")
    assert "is not a subclass of exospherehost.BaseNode" in result.stderr
    assert "exceeds 65535" in one_line_error(
        run_cli(
            redis_url,
            namespace,
            "worker",
            "tests.integration.apps.nodes:ALL",
            "-p",
            "3",
            "--metrics-port",
            "65534",
        ),
        code=2,
    )


def test_worker_with_unreachable_redis_fails_at_once(namespace: str) -> None:
    started = time.monotonic()
    error = one_line_error(
        run_cli(UNREACHABLE, namespace, "worker", "tests.integration.apps.nodes:SampleNode")
    )
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in error
    assert time.monotonic() - started < 15


class _Output:
    """Lines of a process's output, read as they come (to learn its children's pids)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{''.join(self.lines)}"
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


@pytest.fixture
def worker_process(redis_url: str, namespace: str) -> Iterator[list[subprocess.Popen[str]]]:
    """Starts `exosphere worker` processes on request; kills what is left at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _start(procs: list[subprocess.Popen[str]], url: str, ns: str, *args: str) -> _Output:
    env = {**os.environ, "EXOSPHERE_REDIS_URL": url, "EXOSPHERE_NAMESPACE": ns}
    env.pop("EXOSPHERE_DISABLE_DEFAULT_LOGGING", None)
    proc = subprocess.Popen(
        [str(EXOSPHERE), "worker", *args],
        cwd=ROOT,  # the node module is found from the working directory
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.append(proc)
    return _Output(proc)


async def test_worker_processes_serve_and_stop_cleanly_on_sigterm(
    redis_url: str, namespace: str, sm: StateManager, worker_process: list[subprocess.Popen[str]]
) -> None:
    out = _start(
        worker_process,
        redis_url,
        namespace,
        "tests.integration.apps.nodes:SampleNode,Label",
        "--processes",
        "2",
        "--concurrency",
        "4",
    )
    proc = worker_process[0]
    serving = await asyncio.to_thread(
        out.wait_for, r"\| exospherehost.runtime.process \| runtime", 2
    )
    assert len({m.string for m in serving}) == 2
    ids = await sm.enqueue_many(
        "Label", [{"square": i * i, "value": i, "text": str(i)} for i in range(200)]
    )
    results = await sm.wait_for_states("Label", ids, timeout=30)
    assert {r.status for r in results.values()} == {"SUCCEEDED"}
    assert sorted(r.outputs["square"] for r in results.values()) == [i * i for i in range(200)]

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    text = out.text()
    assert code == 0, text
    assert "Terminated: stopping worker processes" in text
    assert "worker processes stopped cleanly" in text
    assert "Traceback" not in text
    stats = await sm.node_stats()
    assert stats["Label"]["pending"] == 0 and stats["Label"]["length"] == 0


async def test_worker_exits_non_zero_when_a_process_crashes(
    redis_url: str, namespace: str, worker_process: list[subprocess.Popen[str]]
) -> None:
    out = _start(
        worker_process, redis_url, namespace, "tests.integration.apps.nodes:SampleNode", "-p", "2"
    )
    proc = worker_process[0]
    started = await asyncio.to_thread(
        out.wait_for, r"started 2 worker processes \(pids (\d+), (\d+)\)"
    )
    await asyncio.to_thread(out.wait_for, r"\| exospherehost.runtime.process \| runtime", 2)
    victim = int(started[0].group(1))
    os.kill(victim, signal.SIGKILL)
    code = await asyncio.to_thread(proc.wait, 30)
    text = out.text()
    assert code == 1, text
    assert f"worker process 0 (pid {victim}) was killed by SIGKILL; stopping the others" in text
    assert text.rstrip().endswith(f"Error: worker process 0 (pid {victim}) was killed by SIGKILL")


# -- bench, dashboard ---------------------------------------------------------------------


def test_bench_forwards_its_arguments(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    assert "--workload" in capfd.readouterr().out  # benchmarks.bench's own help
    monkeypatch.chdir(tmp_path)
    assert "no benchmarks/bench.py here" in one_line_error(CliRunner().invoke(cli, ["bench"]))


def test_dashboard_calls_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    import exospherehost.dashboard

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(exospherehost.dashboard, "serve", lambda **kw: calls.append(kw))
    result = CliRunner().invoke(
        cli,
        [
            "--redis-url",
            "redis://h:1/0",
            "-n",
            "ns",
            "dashboard",
            "--host",
            "0.0.0.0",
            "--port",
            "9",
        ],
        env={"EXOSPHERE_API_KEY": "secret"},
    )
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "host": "0.0.0.0",
            "port": 9,
            "redis_url": "redis://h:1/0",
            "key": "secret",
            "namespace": "ns",
            "token": None,  # serve() refuses 0.0.0.0 without one (not called here)
            "insecure": False,
        }
    ]


def test_dashboard_absent_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = __import__("importlib").import_module

    def without_dashboard(name: str, package: str | None = None) -> Any:
        if name == "exospherehost.dashboard":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, package)

    monkeypatch.setattr("exospherehost.cli.tools.importlib.import_module", without_dashboard)
    assert "has no dashboard" in one_line_error(CliRunner().invoke(cli, ["dashboard"]))


def test_dashboard_without_redis_is_one_line() -> None:
    """Found trying it as a new user: with no EXOSPHERE_REDIS_URL the dashboard printed
    ConfigError's traceback where every other command prints one `Error:` line."""
    env = {"EXOSPHERE_REDIS_URL": None, "EXOSPHERE_NAMESPACE": None, "EXOSPHERE_API_KEY": None}
    error = one_line_error(CliRunner().invoke(cli, ["dashboard", "--port", "1"], env=env))
    assert "no Redis configured" in error
