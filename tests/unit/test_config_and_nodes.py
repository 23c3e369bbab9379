"""Construction-time errors: configuration and node classes."""

from __future__ import annotations

import re

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
        ("http://localhost:6379", "not a Redis URL"),
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
