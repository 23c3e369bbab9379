"""Retry delays for every strategy (pure)."""

from __future__ import annotations

import random

import pytest

from exospherehost.graph.retry import base_delay_ms, retry_delay_ms
from exospherehost.models import RetryPolicyModel, RetryStrategyEnum

S = RetryStrategyEnum


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (S.EXPONENTIAL, [1000, 2000, 4000, 8000]),
        (S.LINEAR, [1000, 2000, 3000, 4000]),
        (S.FIXED, [1000, 1000, 1000, 1000]),
    ],
)
def test_deterministic_strategies(strategy: S, expected: list[int]) -> None:
    policy = RetryPolicyModel(strategy=strategy, backoff_factor=1000, exponent=2)
    assert [retry_delay_ms(policy, a) for a in range(1, 5)] == expected


def test_exponent_and_max_delay() -> None:
    policy = RetryPolicyModel(
        strategy=S.EXPONENTIAL, backoff_factor=100, exponent=3, max_delay=2000
    )
    assert [retry_delay_ms(policy, a) for a in range(1, 6)] == [100, 300, 900, 2000, 2000]


@pytest.mark.parametrize("family", ["EXPONENTIAL", "LINEAR", "FIXED"])
def test_full_jitter_is_uniform_between_zero_and_the_base(family: str) -> None:
    policy = RetryPolicyModel(strategy=S(f"{family}_FULL_JITTER"), backoff_factor=1000)
    rand = random.Random(7)
    for attempt in range(1, 5):
        base = base_delay_ms(policy, attempt)
        draws = [retry_delay_ms(policy, attempt, rand) for _ in range(400)]
        assert 0 <= min(draws) < base * 0.1 and base * 0.9 < max(draws) <= base


@pytest.mark.parametrize("family", ["EXPONENTIAL", "LINEAR", "FIXED"])
def test_equal_jitter_is_between_half_and_the_base(family: str) -> None:
    policy = RetryPolicyModel(strategy=S(f"{family}_EQUAL_JITTER"), backoff_factor=1000)
    rand = random.Random(7)
    for attempt in range(1, 5):
        base = base_delay_ms(policy, attempt)
        draws = [retry_delay_ms(policy, attempt, rand) for _ in range(400)]
        assert base / 2 <= min(draws) < base * 0.55 and base * 0.95 < max(draws) <= base


def test_jitter_respects_max_delay() -> None:
    policy = RetryPolicyModel(
        strategy=S.EXPONENTIAL_FULL_JITTER, backoff_factor=1000, max_delay=1500
    )
    assert max(retry_delay_ms(policy, 6, random.Random(1)) for _ in range(200)) <= 1500


def test_all_nine_strategies_are_handled() -> None:
    for strategy in S:
        policy = RetryPolicyModel(strategy=strategy, backoff_factor=10)
        assert 0 <= retry_delay_ms(policy, 3) <= 40


def test_attempts_are_1_based() -> None:
    policy = RetryPolicyModel(max_retries=2)
    with pytest.raises(ValueError, match="1-based"):
        base_delay_ms(policy, 0)
