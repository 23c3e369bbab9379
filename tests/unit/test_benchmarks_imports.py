"""benchmarks/ is a package of small modules (harness, processes, workloads, report, CLI):
its import graph has no cycle, and each module imports on its own in a fresh interpreter
(a cycle that only bites for one entry point, e.g. `python -m benchmarks.peers`, shows
there and not in a test process that imported everything already)."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
# The peers' task apps import their library at module level; without the `peers` extra
# there is nothing to import them with.
NEEDS = {"peer_taskiq": "taskiq_redis", "peer_dramatiq": "dramatiq"}
# ... and read where their broker is from the environment (peer_common.from_env); nothing
# connects at import.
PEER_ENV = {"BENCH_REDIS_URL": "redis://127.0.0.1:1/0", "BENCH_NS": "import-check"}


def _modules() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")


def _benchmark_imports(path: Path) -> set[str]:
    """The benchmarks modules `path` imports anywhere (module level or in a function:
    a lazy import is still an edge of the design's graph)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from benchmarks import peers` imports the module benchmarks.peers.
            names.update(f"{node.module}.{a.name}" for a in node.names)
    known = {f"benchmarks.{m}" for m in _modules()}
    return {n.removeprefix("benchmarks.") for n in names if n in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as a path that ends
    where it starts, or None."""
    state: dict[str, str] = {}  # absent: unvisited; "open": on the path; "done"
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == "open":
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)) is not None:
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_passes_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"bench": {"peers"}, "peers": {"bench"}}) == ["bench", "peers", "bench"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_benchmarks_import_graph_has_no_cycle() -> None:
    graph = {m: _benchmark_imports(BENCH / f"{m}.py") for m in _modules()}
    for m, deps in graph.items():
        print(f"benchmarks.{m} imports {sorted(deps) or 'nothing of benchmarks'}")
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(f"benchmarks.{m}" for m in cycle)


@pytest.mark.slow
def test_each_benchmarks_module_imports_in_a_fresh_interpreter() -> None:
    # All at once: one interpreter start-up (~1 s with the SDK imported) per module.
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import benchmarks.{m}"],
            cwd=ROOT,
            env={**os.environ, **PEER_ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in _modules()
        if m not in NEEDS or importlib.util.find_spec(NEEDS[m]) is not None
    }
    failed = {}
    for m, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failed[m] = out[-1500:]
    assert not failed, "\n\n".join(f"import benchmarks.{m} failed:\n{e}" for m, e in failed.items())
