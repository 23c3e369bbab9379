"""Issue 14: a worker whose reader dies of an unexpected error stops with THAT error and
its traceback, also when its shut-down then fails too (a reshard showed Worker._retire's
error instead of the reader's); the shut-down's error is logged beside it."""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

import pytest

from exospherehost import Runtime
from exospherehost.broker.streams import Broker
from tests.integration.apps.nodes import Square

pytestmark = [pytest.mark.redis, pytest.mark.cluster_too]


async def test_the_reader_s_error_is_raised_when_the_shut_down_fails_after_it(
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def read(self: Broker, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the reader's own error")

    async def retire(self: Broker, *args: Any, **kwargs: Any) -> int:
        raise ValueError("leaving the groups failed too")

    monkeypatch.setattr(Broker, "read", read)
    monkeypatch.setattr(Broker, "retire", retire)
    caplog.set_level(logging.ERROR, logger="exospherehost.runtime.worker")
    task = Runtime(namespace=namespace, name="r", nodes=[Square], redis_url=redis_url).start()
    assert task is not None
    with pytest.raises(RuntimeError, match="the reader's own error") as raised:
        await asyncio.wait_for(task, 20)
    frames = [f.name for f in traceback.extract_tb(raised.value.__traceback__)]
    assert "_reader" in frames and "_shut_down" not in frames, frames
    (said,) = [r for r in caplog.records if "stopping after it failed too" in r.getMessage()]
    assert "the reader's own error" in said.getMessage()
    assert said.exc_info is not None and "leaving the groups failed" in str(said.exc_info[1])
