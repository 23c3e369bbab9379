"""The layering DESIGN.md section 2 fixes, read from the source with `ast` (nothing is
imported, so a violation cannot hide behind an import that happens to work):

(a) nothing imports a top-level `broker`: the repository's broker/ folder is
    `exospherehost.broker` (PyPI's `broker` distribution, or a user's broker.py, would
    be what a top-level import finds);
(b) broker/ imports nothing of the SDK but exospherehost.broker.*;
(c) exospherehost/graph/ does no I/O: no redis, asyncio, socket or subprocess, and none
    of the SDK modules that talk to Redis;
(d) runtime/ and client/ do not import each other.

Imports count wherever they are: module level, inside a function, under TYPE_CHECKING
(a type-only import is still a dependency of the design). For (c) and (d) an import of
an SDK module outside the checked layer is followed, so graph -> X -> redis is caught
and named as the chain it is."""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("exospherehost", "broker", "tests", "benchmarks", "examples")
# Calls that import a module named by a string: importlib.import_module("x"),
# __import__("x"), importlib.resources.files("x"), importlib.util.find_spec("x").
DYNAMIC = {"import_module", "__import__", "files", "find_spec"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted name of what it imports
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.importer} ({self.where}) imports {self.target}"


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "broker":  # the folder ships (and is imported) as exospherehost.broker
        parts.insert(0, "exospherehost")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files(root: Path) -> Iterator[Path]:
    for top in SCANNED:
        # followlinks=False: exospherehost/broker is a symlink to broker/, scanned once.
        for folder, dirs, files in os.walk(root / top, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d not in (".venv", "__pycache__"))
            for name in sorted(files):
                if name.endswith(".py"):
                    yield Path(folder) / name


class Tree:
    """Every module of a checkout (or a synthetic tree) and what each imports."""

    def __init__(self, root: Path) -> None:
        self.paths = {_module_name(p.relative_to(root)): p for p in _files(root)}
        self.root = root
        self.imports = {m: list(self._imports_of(m, p)) for m, p in self.paths.items()}

    def _imports_of(self, module: str, path: Path) -> Iterator[Import]:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        rel = path.relative_to(self.root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, where)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importer's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` imports the module pkg.mod when there is one.
                subs = (f"{base}.{alias.name}" for alias in node.names)
                for target in dict.fromkeys(sub if sub in self.paths else base for sub in subs):
                    yield Import(module, target, where)
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                arg = node.args[0]
                if name in DYNAMIC and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield Import(module, arg.value, where)

    def under(self, *prefixes: str) -> list[str]:
        return sorted(m for m in self.paths if any(_within(m, p) for p in prefixes))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def direct_violations(
    tree: Tree, modules: list[str], forbidden: Callable[[str], bool]
) -> list[str]:
    return [str(i) for m in modules for i in tree.imports[m] if forbidden(i.target)]


def reach_violations(
    tree: Tree, module: str, layer: str, forbidden: Callable[[str], bool]
) -> list[str]:
    """Forbidden imports of `module`, and of the SDK modules outside `layer` it imports
    (transitively); the layer's own modules are checked each on its own."""
    found: list[str] = []
    seen = {module}
    todo = [(module, [module])]
    while todo:
        current, chain = todo.pop()
        for imp in tree.imports[current]:
            if forbidden(imp.target):
                via = " -> ".join(chain[1:])
                found.append(f"{imp}" + (f" (reached from {module} via {via})" if via else ""))
            elif (
                imp.target in tree.paths
                and not _within(imp.target, layer)
                and imp.target not in seen
            ):
                seen.add(imp.target)
                todo.append((imp.target, [*chain, imp.target]))
    return sorted(found)


def _report(module_imports: dict[str, list[Import]], violations: list[str]) -> None:
    """What each checked module imports (shown with -s or on failure), then the verdict."""
    for module, imports in module_imports.items():
        targets = sorted({i.target for i in imports})
        print(f"{module} imports {', '.join(targets) or 'nothing'}")
    for v in violations:
        print("VIOLATION:", v)


# --------------------------------------------------------------------------- the rules


def top_level_broker(target: str) -> bool:
    return _within(target, "broker")


def sdk_outside_broker(target: str) -> bool:
    return _within(target, "exospherehost") and not _within(target, "exospherehost.broker")


IO_LIBRARIES = ("redis", "asyncio", "socket", "subprocess")
IO_MODULES = (
    "exospherehost.broker.streams",
    "exospherehost.broker.lane",
    "exospherehost.broker.connection",
    "exospherehost.client",
    "exospherehost.runtime",
    "exospherehost.graphstore",
    "exospherehost.secrets",
    "exospherehost.store",
)


# Exception classes only: the error tree keeps redis-py bases (KeyRefused is a
# ResponseError) so `except ResponseError` still catches them; importing them does no I/O.
NOT_IO = ("redis.exceptions",)


def does_io(target: str) -> bool:
    if any(_within(target, p) for p in NOT_IO):
        return False
    # The bare package too: exospherehost/__init__.py re-exports Runtime and StateManager.
    return target == "exospherehost" or any(_within(target, p) for p in IO_LIBRARIES + IO_MODULES)


def _runtime_or_package(target: str) -> bool:
    return target == "exospherehost" or _within(target, "exospherehost.runtime")


def _client_or_package(target: str) -> bool:
    return target == "exospherehost" or _within(target, "exospherehost.client")


TREE = Tree(ROOT)

# Known violations, each xfail(strict=True): when it is fixed the test XPASSes, fails,
# and this entry must go.
KNOWN: dict[str, str] = {}


def _params(modules: list[str]) -> list[object]:
    return [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN[m])) if m in KNOWN else m
        for m in modules
    ]


def test_nothing_imports_a_top_level_broker() -> None:
    modules = sorted(TREE.paths)
    assert {m.split(".")[0] for m in modules} == {"exospherehost", *SCANNED[2:]}
    bad = direct_violations(TREE, modules, top_level_broker)
    _report({m: [i for i in TREE.imports[m] if "broker" in i.target] for m in modules}, bad)
    assert not bad, "import exospherehost.broker, not broker:\n" + "\n".join(bad)


def test_broker_imports_nothing_of_the_sdk_but_itself() -> None:
    modules = TREE.under("exospherehost.broker")
    assert "exospherehost.broker.streams" in modules  # the scan found broker/
    bad = direct_violations(TREE, modules, sdk_outside_broker)
    _report({m: TREE.imports[m] for m in modules}, bad)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", _params(TREE.under("exospherehost.graph")))
def test_graph_does_no_io(module: str) -> None:
    bad = reach_violations(TREE, module, "exospherehost.graph", does_io)
    _report({module: TREE.imports[module]}, bad)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", _params(TREE.under("exospherehost.runtime")))
def test_runtime_does_not_import_client(module: str) -> None:
    bad = reach_violations(TREE, module, "exospherehost.runtime", _client_or_package)
    _report({module: TREE.imports[module]}, bad)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", _params(TREE.under("exospherehost.client")))
def test_client_does_not_import_runtime(module: str) -> None:
    bad = reach_violations(TREE, module, "exospherehost.client", _runtime_or_package)
    _report({module: TREE.imports[module]}, bad)
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- the checker


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "broker/__init__.py": "",
            "broker/keys.py": "from exospherehost.broker import codec\n",
            "broker/codec.py": "from . import keys\n",
            "broker/streams.py": "import redis\nfrom exospherehost.runtime.worker import W\n",
            "exospherehost/__init__.py": "",
            "exospherehost/models.py": "import json\n",
            "exospherehost/store.py": "import redis\n",
            "exospherehost/helper.py": "from exospherehost import store\n",
            "exospherehost/graph/__init__.py": "",
            "exospherehost/graph/pure.py": "from exospherehost.models import M\nfrom . import ok\n",
            "exospherehost/graph/ok.py": "from exospherehost.broker.keys import Keys\n",
            "exospherehost/graph/lazy.py": "def f():\n    import asyncio\n",
            "exospherehost/graph/deep.py": "from exospherehost.helper import x\n",
            "exospherehost/runtime/__init__.py": "",
            "exospherehost/runtime/worker.py": "from exospherehost.client.sm import SM\n",
            "exospherehost/client/__init__.py": "",
            "exospherehost/client/sm.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from exospherehost.runtime import worker\n",
            "tests/test_x.py": "import broker.keys\n",
            "benchmarks/b.py": "from importlib import resources\nresources.files('broker')\n",
            "examples/e.py": "from broker.streams import Broker\n",
        },
    )
    tree = Tree(tmp_path)
    assert tree.paths.keys() >= {"exospherehost.broker.keys", "exospherehost.graph.pure"}
    assert [i.target for i in tree.imports["exospherehost.broker.codec"]] == [
        "exospherehost.broker.keys"
    ]

    bad = direct_violations(tree, sorted(tree.paths), top_level_broker)
    assert bad == [
        "benchmarks.b (benchmarks/b.py:2) imports broker",
        "examples.e (examples/e.py:1) imports broker.streams",
        "tests.test_x (tests/test_x.py:1) imports broker.keys",
    ]
    bad = direct_violations(tree, tree.under("exospherehost.broker"), sdk_outside_broker)
    assert bad == [
        "exospherehost.broker.streams (broker/streams.py:2) imports exospherehost.runtime.worker"
    ]
    graph = {
        m: reach_violations(tree, m, "exospherehost.graph", does_io)
        for m in tree.under("exospherehost.graph")
    }
    assert graph == {
        "exospherehost.graph": [],
        "exospherehost.graph.deep": [
            "exospherehost.helper (exospherehost/helper.py:1) imports exospherehost.store"
            " (reached from exospherehost.graph.deep via exospherehost.helper)"
        ],
        "exospherehost.graph.lazy": [
            "exospherehost.graph.lazy (exospherehost/graph/lazy.py:2) imports asyncio"
        ],
        "exospherehost.graph.ok": [],
        "exospherehost.graph.pure": [],
    }
    assert reach_violations(
        tree, "exospherehost.runtime.worker", "exospherehost.runtime", _client_or_package
    ) == [
        "exospherehost.runtime.worker (exospherehost/runtime/worker.py:1)"
        " imports exospherehost.client.sm"
    ]
    assert reach_violations(
        tree, "exospherehost.client.sm", "exospherehost.client", _runtime_or_package
    ) == [
        "exospherehost.client.sm (exospherehost/client/sm.py:3)"
        " imports exospherehost.runtime.worker"
    ]
