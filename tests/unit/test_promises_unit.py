"""Pure promises pinned exactly (issue 16), written for mutmut's survivors:

- the retry jitter's range ends: the statistical tests in test_retry.py cannot see a range
  shifted by a millisecond; a Random that draws its range's ends can
  (retry.py `uniform(0.0, d)` -> `uniform(1.0, d)`);
- the documented key names and the key-name error (keys.py `Keys.__init__` survivors)."""

from __future__ import annotations

import random

import pytest

from exospherehost.broker.keys import KeyNameError, Keys
from exospherehost.graph.retry import base_delay_ms, retry_delay_ms
from exospherehost.models import RetryPolicyModel, RetryStrategyEnum


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


# README "Wire protocol": every key of namespace `ns`, as any client may address it.
DOCUMENTED_KEYS = {
    "queue": ("exo:{ns}:q:Node", ("Node",)),
    "delayed": ("exo:{ns}:delayed:Node", ("Node",)),
    "output": ("exo:{ns}:out:Node", ("Node",)),
    "dead": ("exo:{ns}:dead", ()),
    "events": ("exo:{ns}:events", ()),
    "nodes": ("exo:{ns}:nodes", ()),
    "graphs": ("exo:{ns}:graphs", ()),
    "graph_seq": ("exo:{ns}:graphseq", ()),
    "graph": ("exo:{ns}:graph:g:3", ("g", 3)),
    "secrets": ("exo:{ns}:secrets:g", ("g",)),
    "version_secrets": ("exo:{ns}:secrets:g:3", ("g", 3)),
    "secret_versions": ("exo:{ns}:secretversions:g", ("g",)),
    "secrets_sweep": ("exo:{ns}:secretsweep", ()),
    "run": ("exo:{ns}:run:r1", ("r1",)),
    "run_results": ("exo:{ns}:run:r1:results", ("r1",)),
    "run_history": ("exo:{ns}:run:r1:history", ("r1",)),
    "run_store": ("exo:{ns}:run:r1:store", ("r1",)),
    "group": ("exo:{ns}:run:r1:g:u:x", ("r1", "u", "x")),
    "collected": ("exo:{ns}:run:r1:g:u:x:c", ("r1", "u", "x")),
    "runs": ("exo:{ns}:runs:g", ("g",)),
    "cron_marker": ("exo:{ns}:cron:g:1700000000", ("g", 1700000000)),
}


@pytest.mark.parametrize("method", sorted(DOCUMENTED_KEYS))
def test_key_names_are_the_documented_wire_protocol(method: str) -> None:
    """Foreign clients address these keys by name (README), so the names are a promise:
    a changed prefix or hash tag would strand every other client."""
    expected, args = DOCUMENTED_KEYS[method]
    keys = Keys("ns")
    assert keys.namespace == "ns"
    assert getattr(keys, method)(*args) == expected


def test_a_bad_namespace_is_refused_naming_what_and_the_value() -> None:
    with pytest.raises(KeyNameError, match=r"^namespace 'a:b' is not valid: use 1-200 characters"):
        Keys("a:b")
