"""Pure retry timing: the delay before retry number `attempt` (1-based) for a policy."""

from __future__ import annotations

import random

from exospherehost.models import RetryPolicyModel, RetryStrategyEnum

_S = RetryStrategyEnum


def base_delay_ms(policy: RetryPolicyModel, attempt: int) -> float:
    """Delay before jitter: FIXED = factor, LINEAR = factor*attempt,
    EXPONENTIAL = factor * exponent**(attempt-1)."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    name = policy.strategy.value
    if name.startswith("EXPONENTIAL"):
        return float(policy.backoff_factor) * float(policy.exponent) ** (attempt - 1)
    if name.startswith("LINEAR"):
        return float(policy.backoff_factor) * attempt
    return float(policy.backoff_factor)


def retry_delay_ms(
    policy: RetryPolicyModel, attempt: int, rand: random.Random | None = None
) -> int:
    """Delay in ms before retry `attempt`, capped by max_delay. FULL_JITTER draws uniformly
    from [0, d]; EQUAL_JITTER from [d/2, d] (spreads a thundering herd of retries)."""
    delay = base_delay_ms(policy, attempt)
    if policy.max_delay is not None:
        delay = min(delay, float(policy.max_delay))
    uniform = (rand or random).uniform
    if policy.strategy.value.endswith("FULL_JITTER"):
        delay = uniform(0.0, delay)
    elif policy.strategy.value.endswith("EQUAL_JITTER"):
        delay = delay / 2 + uniform(0.0, delay / 2)
    return int(delay)
