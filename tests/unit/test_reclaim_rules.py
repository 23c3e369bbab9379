"""The reclaimer's rule for what to do with a reclaimed entry, by its deliveries so far."""

from __future__ import annotations

import pytest

from exospherehost.runtime.upkeep.rules import suspect_threshold, triage


@pytest.mark.parametrize(
    ("max_deliveries", "expected"),
    [
        # Delivered once: run with the rest; more: a suspect, run alone; at the limit: dead.
        (5, ["run", "suspect", "suspect", "suspect", "poison", "poison"]),
        (3, ["run", "suspect", "poison", "poison", "poison", "poison"]),
        # An extra delivery for innocents would reach the limit: all reclaimed are suspects.
        (2, ["suspect", "poison", "poison", "poison", "poison", "poison"]),
        (1, ["poison"] * 6),
    ],
)
def test_triage_by_deliveries(max_deliveries: int, expected: list[str]) -> None:
    start = suspect_threshold(max_deliveries)
    assert [triage(d, start, max_deliveries) for d in range(1, 7)] == expected
