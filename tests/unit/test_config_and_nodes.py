"""Construction-time errors: configuration and node classes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime
from exospherehost.config import ConfigError, resolve
from exospherehost.node import NodeValidationError


class Good(BaseNode):
    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        y: int

    async def execute(self) -> Outputs:
        return self.Outputs(y=self.inputs.x)


def test_missing_redis_config_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXOSPHERE_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="EXOSPHERE_REDIS_URL"):
        Runtime(namespace="ns", name="r", nodes=[Good])


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://localhost:6379", "not a Redis URL: it looks like the original SDK.s"),
        ("tcp://localhost:6379", "not a Redis URL"),
        ("redis://:6379", "no host"),
        ("redis://h:notaport", "invalid port"),
    ],
)
def test_wrong_redis_url_is_explained(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(url)


def test_env_config_and_api_key_as_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXOSPHERE_REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("EXOSPHERE_API_KEY", "s3cret")
    cfg = resolve()
    assert cfg.url == "redis://example:6380/2" and cfg.password == "s3cret"
    kwargs = cfg.client().connection_pool.connection_kwargs
    assert kwargs["password"] == "s3cret" and kwargs["host"] == "example"


def test_node_classes_are_validated_with_names() -> None:
    class NoExecute(BaseNode):
        class Inputs(BaseModel):
            a: str

    class SyncExecute(BaseNode):
        def execute(self) -> None:  # type: ignore[override]
            return None

    class BadInputs(BaseNode):
        Inputs = dict  # type: ignore[assignment]

        async def execute(self) -> None:
            return None

    class NotANode:
        pass

    with pytest.raises(NodeValidationError) as info:
        Runtime(
            namespace="ns",
            name="r",
            nodes=[NoExecute, SyncExecute, BadInputs, NotANode, Good, Good],
            redis_url="redis://x:1",
        )
    text = str(info.value)
    assert "NoExecute must implement `async def execute(self)`" in text
    assert "SyncExecute.execute must be `async def`" in text
    assert "BadInputs.Inputs must be a pydantic BaseModel subclass" in text
    assert "NotANode" in text and "not a subclass of exospherehost.BaseNode" in text
    assert "duplicate node name 'Good'" in text


def test_bad_runtime_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive number"):
        Runtime(namespace="ns", name="r", nodes=[Good], redis_url="redis://x:1", batch_size=0)
    with pytest.raises(ValueError, match=re.escape("namespace 'a{b}' is not valid")):
        Runtime(namespace="a{b}", name="r", nodes=[Good], redis_url="redis://x:1")
    with pytest.raises(NodeValidationError, match="at least one"):
        Runtime(namespace="ns", name="r", nodes=[], redis_url="redis://x:1")
    with pytest.raises(ValueError, match="tune_gc must be True, False or None, got 'yes'"):
        Runtime(namespace="ns", name="r", nodes=[Good], redis_url="redis://x:1", tune_gc="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tune_gc", "blocking", "expected"),
    [
        (None, True, True),  # start() owns the process: tuned by default
        (None, False, False),  # a task in the caller's loop: their process, left alone
        (False, True, False),
        (True, False, True),
    ],
)
def test_runtime_tunes_the_collector_only_in_a_process_it_owns(
    monkeypatch: pytest.MonkeyPatch, tune_gc: bool | None, blocking: bool, expected: bool
) -> None:
    seen: list[bool] = []

    async def fake_main(self: Runtime, install_signals: bool, tune_gc: bool) -> None:
        seen.append(tune_gc)

    monkeypatch.setattr(Runtime, "_main", fake_main)
    rt = Runtime(namespace="ns", name="r", nodes=[Good], redis_url="redis://x:1", tune_gc=tune_gc)
    if blocking:
        assert rt.start() is None
    else:

        async def in_a_loop() -> None:
            task = rt.start()
            assert task is not None
            await task

        asyncio.run(in_a_loop())
    assert seen == [expected]


def test_tune_for_throughput_freezes_and_raises_gen0_only() -> None:
    """Process-wide settings: checked in a fresh interpreter, not in the test process."""
    script = """
import gc
from exospherehost.runtime.gctune import tune_for_throughput
gc.set_threshold(700, 10, 10); tune_for_throughput()
print(gc.get_threshold(), gc.get_freeze_count() > 0)
gc.set_threshold(50_000, 5, 5); tune_for_throughput()
print(gc.get_threshold())
gc.set_threshold(0); tune_for_throughput()
print(gc.get_threshold()[0])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:3] == ["(20000, 10, 10) True", "(50000, 5, 5)", "0"]
