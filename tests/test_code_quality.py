"""The standards CI holds the tree to: ruff lint and format, mypy strict on the packages.

Run as tests so a clean clone's `./dev test` (and `.ci/run`) fails on a lint or type
error, not only a developer's editor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.slow
def test_mypy_strict_on_the_packages() -> None:
    # [tool.mypy] in pyproject.toml: strict, packages exospherehost and broker.
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
