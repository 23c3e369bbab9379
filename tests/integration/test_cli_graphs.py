"""`exosphere graphs upsert|list|show` and `exosphere results` (issue 13 items 6 and 10):
the README's walkthrough without a line of Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from exospherehost import StateManager
from tests.integration.helpers import running, squares_graph
from tests.integration.test_cli import arun, one_line_error, run_cli, runtime

pytestmark = pytest.mark.redis


def _template(namespace: str) -> dict[str, object]:
    return {
        "name": "squares",
        "nodes": [n.model_dump(mode="json") for n in squares_graph(namespace)],
        "retry_policy": {"max_retries": 1},
    }


async def test_upsert_from_json_and_yaml_then_list_and_show(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    as_json = tmp_path / "g.json"
    as_json.write_text(json.dumps(_template(namespace)))
    as_yaml = tmp_path / "g.yaml"
    as_yaml.write_text(yaml.safe_dump({**_template(namespace), "name": "squares2"}))
    async with running(runtime(redis_url, namespace)):
        first = await arun(redis_url, namespace, "graphs", "upsert", str(as_json))
        assert first.exit_code == 0, first.output
        assert "graph 'squares' stored as version" in first.output
        second = await arun(redis_url, namespace, "graphs", "upsert", str(as_yaml))
        assert second.exit_code == 0, second.output
    listed = await arun(redis_url, namespace, "graphs", "list")
    assert listed.exit_code == 0
    assert "squares " in listed.output and "squares2" in listed.output
    shown = json.loads((await arun(redis_url, namespace, "graphs", "show", "squares")).output)
    assert [n["identifier"] for n in shown["nodes"]] == ["split", "square", "label"]
    assert shown["retry_policy"]["max_retries"] == 1


async def test_an_invalid_template_is_refused_with_every_problem(
    redis_url: str, namespace: str, tmp_path: Path, sm: StateManager
) -> None:
    doc = _template(namespace)
    nodes = doc["nodes"]
    assert isinstance(nodes, list)
    nodes[2]["inputs"]["square"] = "${{ nowhere.outputs.x }}"
    nodes[2]["next_nodes"] = ["ghost"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    async with running(runtime(redis_url, namespace)):
        result = await arun(
            redis_url, namespace, "graphs", "upsert", str(bad), "--validation-timeout", "0.5"
        )
    # One `Error:` line, then every problem on a line of its own.
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Error: graph 'squares' is invalid:"
    assert any("nowhere" in x for x in lines[1:]) and any("ghost" in x for x in lines[1:])
    assert await sm.graph_names() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not valid JSON"),
        ('{"nodes": [], "nodez": 1}', "unknown template keys ['nodez']"),
        ('{"name": "g"}', "expected an object with a list 'nodes'"),
    ],
)
def test_template_mistakes_are_one_line(
    redis_url: str, namespace: str, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.json"
    path.write_text(text)
    assert message in one_line_error(run_cli(redis_url, namespace, "graphs", "upsert", str(path)))


async def test_results_of_graphless_states(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    ids = await sm.enqueue_many("SampleNode", [{"name": n, "data": {"n": n}} for n in "ab"])
    async with running(runtime(redis_url, namespace)):
        await sm.wait_for_states("SampleNode", ids)
    got = await arun(redis_url, namespace, "results", "SampleNode", ids[1], ids[0])
    assert got.exit_code == 0, got.output
    lines = [json.loads(x) for x in got.output.splitlines()]
    assert [x["state_id"] for x in lines] == [ids[1], ids[0]]
    assert {x["status"] for x in lines} == {"SUCCEEDED"}
    assert lines[0]["outputs"]["processed_data"] == {"input": {"n": "b"}}
    newest = await arun(redis_url, namespace, "results", "SampleNode", "--count", "1")
    assert [json.loads(x)["state_id"] for x in newest.output.splitlines()] == [ids[1]]
    missing = await arun(redis_url, namespace, "results", "SampleNode", "nope")
    assert "no result of SampleNode for ['nope']" in one_line_error(missing)
