"""The broker folder is one module, `exospherehost.broker`, even in the repository.

Found trying a wheel install as a new user: the scripts were looked up as the package
`broker`, which exists only in the repository (the tests put its root on sys.path), so every
installed Runtime and CLI command died with `No module named 'broker'`."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.helpers import ROOT


def test_top_level_broker_is_refused_in_the_repository() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import broker"], cwd=ROOT, capture_output=True, text=True
    )
    assert probe.returncode != 0
    assert "import exospherehost.broker, not 'broker'" in probe.stderr


def test_scripts_load_through_the_package_name() -> None:
    from exospherehost.broker.streams import _lua

    assert "redis.call" in _lua("settle.lua")
