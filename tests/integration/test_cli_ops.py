"""The operator's command line, second round (issue 13 items 4, 5, 7, 8, 9, 11): dead
letters at scale from the CLI, `exosphere dashboard` start-up errors, mistakes refused
before anything is written, streams no worker serves, dead consumers, and `trigger --wait`
on failure and Ctrl-C. On the session's real redis-server."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from exospherehost.broker.keys import Keys
from exospherehost.cli import cli
from tests.integration.test_cli import arun, one_line_error
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
    nowhere = CliRunner().invoke(cli, ["dashboard", "--host", "192.0.2.1"], env=env)
    assert "cannot listen on 192.0.2.1:8080" in one_line_error(nowhere)
