"""The example deployment (docker-compose.yml, Dockerfile, examples/) is consistent.

No Docker engine is needed: the compose file is checked structurally, and the modules
it runs are checked to exist and the graph they upsert to be valid.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from examples.nodes import ALL, GRAPH_NAME, graph_nodes
from exospherehost.graph.validation import NodeSchema, validate_graph
from exospherehost.node import node_schema

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
APP_SERVICES = ("worker", "producer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def argv(command: str | list[str]) -> list[str]:
    """A compose `command` (string or list form) as an argv list."""
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def env(service: dict[str, Any]) -> dict[str, str]:
    """A compose `environment` (mapping or KEY=VALUE list form) as a dict."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(str(item).partition("=")[::2] for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def python_module(command: str | list[str]) -> str:
    args = argv(command)
    assert args[:2] == ["python", "-m"], args
    return args[2]


def test_three_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "worker", "producer"} <= services.keys()


def test_redis_persists_with_aof(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    mounts = [str(v) for v in redis["volumes"]]
    data = [m for m in mounts if m.split(":")[1:2] == ["/data"]]
    assert data, mounts
    volume = data[0].split(":")[0]
    # A named volume (declared at top level), not a bind mount of a host path.
    assert volume in (compose.get("volumes") or {}), (volume, compose.get("volumes"))


def test_redis_healthcheck(services: dict[str, Any]) -> None:
    check = services["redis"]["healthcheck"]
    test = check["test"]
    words = argv(test) if isinstance(test, str) else [str(w) for w in test]
    assert "redis-cli" in words and "ping" in words, words


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_builds_from_repo(services: dict[str, Any], name: str) -> None:
    build = services[name]["build"]
    context = build if isinstance(build, str) else build.get("context")
    assert context == "."
    assert DOCKERFILE.is_file()


def test_dockerfile() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert any(ln.startswith("COPY . ") for ln in instructions)
    assert any('pip install --no-cache-dir --no-deps ".[dashboard]"' in ln for ln in instructions)
    # Dependencies are installed from pyproject.toml before the tree is copied, so a code
    # change does not reinstall them.
    deps = next(i for i, ln in enumerate(instructions) if "-r /tmp/requirements.txt" in ln)
    tree = next(i for i, ln in enumerate(instructions) if ln.startswith("COPY . "))
    assert instructions.index("COPY pyproject.toml ./") < deps < tree
    cmds = [ln for ln in instructions if ln.startswith("CMD ")]
    assert len(cmds) == 1, cmds
    # Exec form, so the Runtime (not a shell) receives SIGTERM.
    cmd = json.loads(cmds[0].removeprefix("CMD "))
    assert cmd == ["python", "-m", "examples.worker"]


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert ".venv" in patterns and ".git" in patterns
    for needed in ("pyproject.toml", "exospherehost", "broker", "examples"):
        assert (ROOT / needed).exists(), needed
        hits = [p for p in patterns if fnmatch.fnmatch(needed, p.lstrip("/"))]
        assert not hits, (needed, hits)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_env_points_at_redis_service(services: dict[str, Any], name: str) -> None:
    variables = env(services[name])
    url = urlparse(variables["EXOSPHERE_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379
    assert variables["EXOSPHERE_NAMESPACE"] == "demo"


def test_worker_and_producer_share_namespace(services: dict[str, Any]) -> None:
    worker = {k: v for k, v in env(services["worker"]).items() if k != "EXOSPHERE_METRICS_PORT"}
    assert worker == env(services["producer"])


def test_workers_and_dashboard_have_healthchecks(services: dict[str, Any]) -> None:
    assert env(services["worker"])["EXOSPHERE_METRICS_PORT"] == "9464"
    assert "9464/metrics" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "8080/" in " ".join(services["dashboard"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_waits_for_healthy_redis(services: dict[str, Any], name: str) -> None:
    depends = services[name]["depends_on"]
    assert isinstance(depends, dict), "use the long form so the condition is explicit"
    assert depends["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize(
    ("name", "module"), [("worker", "examples.worker"), ("producer", "examples.producer")]
)
def test_commands_run_importable_modules(services: dict[str, Any], name: str, module: str) -> None:
    assert python_module(services[name]["command"]) == module
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).is_relative_to(ROOT / "examples")


def test_worker_is_replicated(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    # `--scale worker=N` needs generated names and no fixed host port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_producer_runs_once(services: dict[str, Any]) -> None:
    producer = services["producer"]
    assert producer["restart"] == "no"  # the string, not YAML's boolean false
    args = argv(producer["command"])
    assert int(args[args.index("--runs") + 1]) > 0


def _schemas() -> dict[str, NodeSchema]:
    """What the worker's Runtime registers, in the form upsert_graph validates against."""
    out: dict[str, NodeSchema] = {}
    for cls in ALL:
        doc = node_schema(cls)
        ins = doc["inputs_schema"]
        out[cls.__name__] = NodeSchema(
            inputs=frozenset(ins.get("properties") or {}),
            required_inputs=frozenset(ins.get("required") or ()),
            outputs=frozenset(doc["outputs_schema"].get("properties") or {}),
            secrets=frozenset(doc["secrets_schema"].get("properties") or {}),
        )
    return out


def test_example_graph_is_valid() -> None:
    nodes = graph_nodes("demo")
    assert GRAPH_NAME == "squares"
    assert [n.identifier for n in nodes] == ["split", "square", "label"]
    assert validate_graph("demo", nodes) == []
    assert validate_graph("demo", nodes, schemas=_schemas(), secrets={}) == []


def test_dashboard_service(services: dict[str, Any]) -> None:
    dash = services["dashboard"]
    assert dash["build"] == "."
    cmd = argv(dash["command"])
    assert cmd[:2] == ["exosphere", "dashboard"] and "--port" in cmd
    port = cmd[cmd.index("--port") + 1]
    assert any(str(p).endswith(f":{port}") for p in dash["ports"])
    assert env(dash)["EXOSPHERE_REDIS_URL"].startswith("redis://redis:")
    assert dash["depends_on"]["redis"]["condition"] == "service_healthy"
    # The image must carry the dashboard's extra dependencies.
    assert '".[dashboard]"' in (ROOT / "Dockerfile").read_text()
