"""The eviction verdict of broker/serverinfo.py (issue 17 item 2)."""

from __future__ import annotations

import pytest

from exospherehost.broker.serverinfo import eviction_problem


def test_noeviction_is_safe() -> None:
    assert eviction_problem("noeviction") is None


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_are_fatal_and_say_how_to_fix(policy: str) -> None:
    verdict = eviction_problem(policy)
    assert verdict is not None
    fatal, why = verdict
    assert fatal
    assert policy in why and "CONFIG SET maxmemory-policy noeviction" in why
    assert "EXOSPHERE_ALLOW_EVICTION=1" in why


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "volatile-random"])
def test_volatile_policies_warn(policy: str) -> None:
    verdict = eviction_problem(policy)
    assert verdict is not None and verdict[0] is False
    assert "finished runs" in verdict[1]


def test_an_unknown_policy_is_fatal() -> None:
    verdict = eviction_problem("some-future-policy")
    assert verdict is not None and verdict[0]
