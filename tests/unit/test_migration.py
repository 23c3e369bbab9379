"""Code written for the original SDK (state-manager server) gets a clear ConfigError that
says what to set instead, never a bare TypeError; what costs nothing here is accepted."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, ConfigError, InvalidArgument, Runtime, StateManager

SAY_INSTEAD = "EXOSPHERE_REDIS_URL instead"


class Node(BaseNode):
    class Inputs(BaseModel):
        x: str

    class Outputs(BaseModel):
        y: str

    async def execute(self) -> Outputs:
        return self.Outputs(y=self.inputs.x)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXOSPHERE_REDIS_URL", "EXOSPHERE_STATE_MANAGER_URI", "EXOSPHERE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_only_the_state_manager_variable_set_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXOSPHERE_STATE_MANAGER_URI", "http://localhost:8000")
    for make in (
        lambda: Runtime(namespace="ns", name="r", nodes=[Node]),
        lambda: StateManager("ns"),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        text = str(info.value)
        assert "EXOSPHERE_STATE_MANAGER_URI='http://localhost:8000'" in text
        assert SAY_INSTEAD in text
        assert "no state-manager server" in text


def test_the_redis_variable_wins_over_the_state_manager_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXOSPHERE_STATE_MANAGER_URI", "http://localhost:8000")
    monkeypatch.setenv("EXOSPHERE_REDIS_URL", "redis://h:6379/0")
    assert Runtime(namespace="ns", name="r", nodes=[Node]).config.url == "redis://h:6379/0"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Runtime(
            namespace="ns", name="r", nodes=[Node], state_manager_uri="http://sm:8000", key="k"
        ),
        lambda: StateManager("ns", state_manager_uri="https://sm", key="k"),
        # The original's 4th positional argument was the state-manager URI.
        lambda: Runtime("ns", "r", [Node], "http://sm:8000", "k"),
        lambda: StateManager("ns", "http://sm:8000", "k"),
    ],
)
def test_a_state_manager_uri_argument_is_refused_with_what_to_pass(make: object) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert "looks like the original SDK's state-manager address" in str(info.value)
    assert "redis_url=" in str(info.value)


def test_a_redis_url_given_as_state_manager_uri_is_used() -> None:
    rt = Runtime(namespace="ns", name="r", nodes=[Node], state_manager_uri="redis://h:1/0")
    assert rt.config.url == "redis://h:1/0"
    sm = StateManager("ns", state_manager_uri="redis://h:2/0")
    assert sm.config.url == "redis://h:2/0"


def test_both_urls_given_is_refused() -> None:
    with pytest.raises(ConfigError, match="both"):
        Runtime(
            namespace="ns",
            name="r",
            nodes=[Node],
            redis_url="redis://h:1/0",
            state_manager_uri="redis://h:2/0",
        )


def test_original_version_and_poll_interval_are_accepted() -> None:
    rt = Runtime(
        namespace="ns",
        name="r",
        nodes=[Node],
        redis_url="redis://h:1/0",
        state_manage_version="v0",
        poll_interval=1,
    )
    assert rt.config.url == "redis://h:1/0"
    StateManager("ns", "redis://h:1/0", state_manager_version="v0")


def test_another_api_version_or_a_bad_poll_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="state_manage_version='v1'"):
        Runtime(
            namespace="ns",
            name="r",
            nodes=[Node],
            redis_url="redis://h/0",
            state_manage_version="v1",
        )
    with pytest.raises(ConfigError, match="state_manager_version='v2'"):
        StateManager("ns", "redis://h/0", state_manager_version="v2")
    with pytest.raises(InvalidArgument, match="poll_interval"):
        Runtime(namespace="ns", name="r", nodes=[Node], redis_url="redis://h/0", poll_interval=0)
