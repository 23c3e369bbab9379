"""EXOSPHERE_LOG_LEVEL / EXOSPHERE_DISABLE_DEFAULT_LOGGING, and no logging set-up on import."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from exospherehost import Runtime
from exospherehost.logs import DEFAULT_FORMAT, parse_level, setup_logging
from tests.integration.apps.nodes import SampleNode

LOGGER = logging.getLogger("exospherehost")


@pytest.fixture
def pristine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No handler on the exospherehost logger and its level unset, restored afterwards.
    Tests that need a root logger without handlers call `unconfigured_root` in their
    body: pytest adds its capture handlers to the root only when the test body starts."""
    saved_ours, saved_level = LOGGER.handlers[:], LOGGER.level
    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        LOGGER.handlers[:] = saved_ours
        LOGGER.setLevel(saved_level)


def unconfigured_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root logger as in a fresh worker process: no handlers (until the test ends)."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_default_handler_when_nothing_is_configured(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    unconfigured_root(monkeypatch)
    handler = setup_logging({})
    assert isinstance(handler, logging.StreamHandler)
    assert LOGGER.handlers == [handler]
    assert handler.formatter is not None and handler.formatter._fmt == DEFAULT_FORMAT
    assert LOGGER.level == logging.INFO  # the original SDK's default
    assert setup_logging({}) is None  # idempotent: a second Runtime adds nothing
    assert LOGGER.handlers == [handler]


def test_user_configuration_is_respected(pristine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    unconfigured_root(monkeypatch)
    user = logging.StreamHandler()
    logging.getLogger().addHandler(user)
    assert setup_logging({}) is None
    assert LOGGER.handlers == []
    assert LOGGER.level == logging.NOTSET  # the user's levels decide

    logging.getLogger().removeHandler(user)
    LOGGER.addHandler(user)  # configured on our logger instead of the root
    assert setup_logging({}) is None
    assert LOGGER.handlers == [user]


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_default_logging(
    pristine: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    unconfigured_root(monkeypatch)
    assert setup_logging({"EXOSPHERE_DISABLE_DEFAULT_LOGGING": value}) is None
    assert LOGGER.handlers == []


@pytest.mark.parametrize("value", ["", "0", "false", "off"])
def test_disable_set_to_false_does_not_disable(
    pristine: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    unconfigured_root(monkeypatch)
    assert setup_logging({"EXOSPHERE_DISABLE_DEFAULT_LOGGING": value}) is not None


@pytest.mark.parametrize(
    ("value", "level"),
    [("DEBUG", 10), ("debug", 10), ("WARN", 30), ("warning", 30), ("error", 40), ("15", 15)],
)
def test_log_level_sets_the_exospherehost_logger(pristine: None, value: str, level: int) -> None:
    root_level = logging.getLogger().level
    setup_logging({"EXOSPHERE_LOG_LEVEL": value})
    assert LOGGER.level == level
    assert logging.getLogger().level == root_level  # only our logger


def test_log_level_applies_even_when_the_user_configured_handlers(
    pristine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    unconfigured_root(monkeypatch)
    logging.getLogger().addHandler(logging.NullHandler())
    setup_logging({"EXOSPHERE_LOG_LEVEL": "DEBUG", "EXOSPHERE_DISABLE_DEFAULT_LOGGING": "1"})
    assert LOGGER.level == logging.DEBUG
    assert LOGGER.handlers == []


def test_invalid_level_is_reported_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    saved = LOGGER.level
    try:
        with caplog.at_level(logging.WARNING, logger="exospherehost"):
            setup_logging({"EXOSPHERE_LOG_LEVEL": "LOUD"})
        assert LOGGER.level == saved
        assert any("EXOSPHERE_LOG_LEVEL='LOUD'" in r.getMessage() for r in caplog.records)
    finally:
        LOGGER.setLevel(saved)
    assert parse_level("LOUD") is None
    assert parse_level(" info ") == logging.INFO


def test_importing_the_sdk_configures_no_logging() -> None:
    code = (
        "import logging, exospherehost, exospherehost.runtime.metrics, exospherehost.cli;"
        "print(len(logging.getLogger().handlers), len(logging.getLogger('exospherehost').handlers),"
        " logging.getLogger('exospherehost').level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0", "0"]


async def test_runtime_start_sets_up_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("exospherehost.runtime.process.setup_logging", lambda: calls.append(1))
    # Nothing listens on port 1: the task is cancelled before it could connect anyway.
    rt = Runtime("logs", "t", [SampleNode], redis_url="redis://127.0.0.1:1/0")
    task = rt.start()
    assert task is not None and calls == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
