"""The broker boundary: outside exospherehost.broker, the SDK talks to Redis only through
the Broker and its typed readers; it imports redis only to make a connection (config.py)
and to catch redis-py's exceptions; the runtime does not import the client package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "exospherehost"


def _modules() -> list[tuple[str, ast.Module]]:
    """Every module of the SDK outside broker/ (exospherehost/broker links to ../broker)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith("broker/"):
            out.append((rel, ast.parse(path.read_text(), rel)))
    return out


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


# Where connections are made: the SDK's (config.py) and the test servers' (testing/, which
# talk to the servers they start, e.g. to form a cluster).
CONNECTING = ("config.py", "testing/")


def test_only_config_imports_redis_outside_the_broker_and_only_exceptions_elsewhere() -> None:
    found = {
        (rel, name)
        for rel, tree in _modules()
        for name in _imports(tree)
        if (name == "redis" or name.startswith("redis."))
        and not rel.startswith(CONNECTING)
        and name != "redis.exceptions"
    }
    assert found == set()


def test_the_runtime_and_the_client_do_not_import_each_other() -> None:
    found = set()
    for rel, tree in _modules():
        for name in _imports(tree):
            if rel.startswith("runtime/") and name.startswith("exospherehost.client"):
                found.add((rel, name))
            if rel.startswith("client/") and name.startswith("exospherehost.runtime"):
                found.add((rel, name))
    assert found == set()


# Calls on a connection that are not commands: closing it, and the CLI's up-front check
# that Redis answers at all (cli/workers.py), made right where the connection is made.
NOT_COMMANDS = {"aclose", "ping"}


def _receiver(node: ast.expr) -> str:
    """The last name of a call's receiver: `self.client.xlen` -> "client"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def test_no_redis_command_is_sent_outside_the_broker() -> None:
    found = set()
    for rel, tree in _modules():
        if rel.startswith("testing/"):
            continue  # test servers set themselves up (CLUSTER MEET, ...), no namespace's data
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver, method = _receiver(node.func.value), node.func.attr
            if receiver in ("client", "_client", "pipe") and method not in NOT_COMMANDS:
                found.add(f"{rel}:{node.lineno}: {receiver}.{method}")
            if method in ("pipeline", "register_script", "execute_command"):
                found.add(f"{rel}:{node.lineno}: .{method}")
    assert found == set()
