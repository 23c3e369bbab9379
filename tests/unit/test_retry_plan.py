"""plan_retry (client/retry.py): a settled state's record -> what retry_state.lua writes.
Pure: no Redis."""

from __future__ import annotations

from typing import Any

import pytest

from exospherehost import RetryRefused
from exospherehost.broker.codec import decode, pack, unpack
from exospherehost.client.retry import plan_retry


def record(**over: Any) -> bytes:
    r: dict[str, Any] = {
        "n": "Work",
        "id": "work",
        "s": "FAILED",
        "a": 3,
        "in": {"value": 2},
        "err": "boom",
        "gr": {"collect": "T1"},
        "c": {"fan": {"value": 2}},
        "p": [2],
        "fin": 1000,
    }
    r.update(over)
    return pack(r)


def plan(raw: bytes, pointer: bytes | None = None) -> Any:
    return plan_retry("R1", "g", 4, "S1", raw, pointer, "5-0", "S2", 7000)


def test_a_failed_state_is_rebuilt_whole_with_a_fresh_budget() -> None:
    raw = record()
    p = plan(raw, pack(["P1", 500]))
    env = decode(b"1-0", {b"_exo": p.envelope})
    assert (env.state_id, env.run_id, env.graph, env.graph_version) == ("S2", "R1", "g", 4)
    assert env.identifier == "work" and env.inputs == {"value": 2}
    assert env.ctx == {"fan": {"value": 2}} and env.groups == {"collect": "T1"}
    assert env.path == [2] and env.unite is None
    assert env.attempt == 0 and env.deliveries == 0, "a fresh retry budget"
    assert (p.state_id, p.record, p.new_id, p.node) == ("S1", raw, "S2", "Work")
    assert (p.counter, p.failed, p.bad) == ("f:work", True, True)
    assert unpack(p.pointer) == ["P1", 7000], "a sibling of the state it re-runs"
    assert p.dead_id == "5-0" and p.groups == {"collect": "T1"}


def test_succeeded_and_pruned_undo_their_own_counter() -> None:
    ok = plan(record(s="SUCCEEDED", out={"value": 2}))
    assert (ok.counter, ok.failed, ok.bad) == ("s:work", False, False)
    pruned = plan(record(s="PRUNED"))
    assert (pruned.counter, pruned.failed, pruned.bad) == ("p:work", False, True)
    root = plan(record(s="SUCCEEDED", gr={}, c={}, p=[]))
    assert root.pointer == b"" and root.groups == {}
    unite = plan(record(s="SUCCEEDED", u="T1", **{"in": {}}))
    assert decode(b"1-0", {b"_exo": unite.envelope}).unite == "T1"


@pytest.mark.parametrize("status", ["RETRYING", "PENDING", None])
def test_a_state_not_settled_is_refused(status: str | None) -> None:
    with pytest.raises(RetryRefused, match="in flight"):
        plan(record(s=status))


@pytest.mark.parametrize("field, name", [("in", "inputs"), ("c", "context")])
def test_a_truncated_input_or_context_cannot_rebuild_it(field: str, name: str) -> None:
    cut = {"__truncated__": 40_000, "preview": "..."}
    with pytest.raises(RetryRefused, match=f"its {name} truncated .40000 bytes"):
        plan(record(**{field: cut}))


def test_a_record_this_sdk_did_not_write_is_refused() -> None:
    with pytest.raises(RetryRefused, match="not one this SDK wrote"):
        plan(record(**{"in": "text"}))
