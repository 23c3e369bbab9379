"""Pure promises pinned exactly (issue 16): the retry jitter's range ends. The statistical
tests in test_retry.py cannot see a range shifted by a millisecond; a Random that draws
its range's ends can (kills mutmut's `uniform(0.0, d)` -> `uniform(1.0, d)` survivors)."""

from __future__ import annotations

import random

import pytest

from exospherehost.models import RetryPolicyModel, RetryStrategyEnum
from exospherehost.retry import base_delay_ms, retry_delay_ms


class Ends(random.Random):
    """A Random whose uniform(a, b) is always a (low) or always b (high)."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize("family", ["EXPONENTIAL", "LINEAR", "FIXED"])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_full_jitter_spans_exactly_zero_to_the_base(family: str, attempt: int) -> None:
    policy = RetryPolicyModel(
        strategy=RetryStrategyEnum(f"{family}_FULL_JITTER"), backoff_factor=1000
    )
    base = int(base_delay_ms(policy, attempt))
    assert retry_delay_ms(policy, attempt, Ends(high=False)) == 0
    assert retry_delay_ms(policy, attempt, Ends(high=True)) == base


@pytest.mark.parametrize("family", ["EXPONENTIAL", "LINEAR", "FIXED"])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_equal_jitter_spans_exactly_half_the_base_to_the_base(family: str, attempt: int) -> None:
    policy = RetryPolicyModel(
        strategy=RetryStrategyEnum(f"{family}_EQUAL_JITTER"), backoff_factor=1000
    )
    base = int(base_delay_ms(policy, attempt))
    assert retry_delay_ms(policy, attempt, Ends(high=False)) == base // 2
    assert retry_delay_ms(policy, attempt, Ends(high=True)) == base


def test_jitter_draws_within_the_capped_delay() -> None:
    policy = RetryPolicyModel(
        strategy=RetryStrategyEnum.EXPONENTIAL_FULL_JITTER, backoff_factor=1000, max_delay=1500
    )
    assert retry_delay_ms(policy, 6, Ends(high=True)) == 1500
    assert retry_delay_ms(policy, 6, Ends(high=False)) == 0
