"""settle.lua names the fields of a plan by constants at its top; broker/plan.py lays the
ops out. They must agree: each Lua constant is checked against an op the Python builder
builds from distinct values, and the script may not index an op by a bare number."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exospherehost.broker import plan as wire
from exospherehost.broker.plan import SettlePlan

SCRIPT = Path(wire.__file__).parent / "lua" / "settle.lua"
# `local A, B,\n C = 1, 2,\n 3` (a statement may wrap lines).
_LOCALS = re.compile(
    r"^local ([A-Z][A-Z0-9_]*(?:,\s*[A-Z][A-Z0-9_]*)*)\s*=\s*(\d+(?:,\s*\d+)*)", re.M
)
NOT_WIRE = {"MAX_VALUES"}  # script constants that are not plan positions


def lua_constants() -> dict[str, int]:
    found: dict[str, int] = {}
    for names, values in _LOCALS.findall(SCRIPT.read_text()):
        ns, vs = re.split(r",\s*", names), re.split(r",\s*", values)
        assert len(ns) == len(vs), f"settle.lua: {names} = {values}"
        found.update((n, int(v)) for n, v in zip(ns, vs, strict=True))
    return {n: v for n, v in found.items() if n not in NOT_WIRE}


@dataclass(frozen=True)
class Key:
    """A field that carries the KEYS index of this key name."""

    name: str


@dataclass(frozen=True)
class Tail:
    """Fields from this position on hold these values (keys as Key)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Op:
    code: int
    build: Callable[[SettlePlan], None]
    fields: dict[str, Any]  # the Lua name's suffix, lowercased -> what that field holds


EXPIRE = ("k:results", "k:store")
OUTER = ("k:outer1", "k:outer2")
RUN_STEP: dict[str, Any] = dict(
    run_key="k:run", events_key="k:events", run_id="run-7", open_delta=-3, failed_delta=5,
    retention_s=600, history_key="k:history", history=b"hist", expire_with_run=EXPIRE,
    counters={"s:a": 1},
)  # fmt: skip
GROUP_STEP: dict[str, Any] = dict(
    group_key="k:group", collected_key="k:collected", unite_queue="k:queue", run_key="k:run",
    open_delta=-2, bad_delta=9, retention_s=700, outer_groups=OUTER, collected=(b"c1",),
)  # fmt: skip

OPS: dict[str, Op] = {
    "XADD": Op(
        wire.XADD,
        lambda p: p.xadd_pairs("k:stream", 77, ("f1", "v1", "f2", "v2")),
        {"stream": Key("k:stream"), "maxlen": 77, "pairs": Tail(("f1", "v1", "f2", "v2"))},
    ),
    "ZADD": Op(
        wire.ZADD_DELAYED,
        lambda p: p.delay("k:zset", 250, b"member"),
        {"zset": Key("k:zset"), "delay_ms": 250, "member": b"member"},
    ),
    "RPUSH": Op(
        wire.RPUSH, lambda p: p.rpush("k:list", b"value"), {"key": Key("k:list"), "value": b"value"}
    ),
    "HSET": Op(
        wire.HSET,
        lambda p: p.hset_pairs("k:hash", ("f1", b"v1", "f2", b"v2")),
        {"key": Key("k:hash"), "pairs": Tail(("f1", b"v1", "f2", b"v2"))},
    ),
    "RO": Op(
        wire.RUN_OPEN,
        lambda p: p.run_step(**RUN_STEP),
        {"run_key": Key("k:run"), "open_delta": -3},
    ),
    "RS": Op(
        wire.RUN_STEP,
        lambda p: p.run_step(**RUN_STEP),
        {
            "run_key": Key("k:run"),
            "events_key": Key("k:events"),
            "run_id": "run-7",
            "open_delta": -3,
            "failed_delta": 5,
            "retention_s": 600,
            "history_key": Key("k:history"),
            "history": b"hist",
            "n_expire_with_run": 2,
            # The expire keys, then the counters.
            "expire_with_run": Tail((*map(Key, EXPIRE), "s:a", 1)),
        },
    ),
    "GI": Op(
        wire.GROUP_INIT,
        lambda p: p.group_init("k:group", 4, "ALL_DONE", b"env", "u"),
        {
            "group_key": Key("k:group"),
            "open": 4,
            "strategy": "ALL_DONE",
            "env": b"env",
            "unite_identifier": "u",
        },
    ),
    "GS": Op(
        wire.GROUP_STEP,
        lambda p: p.group_step(**GROUP_STEP),
        {
            "group_key": Key("k:group"),
            "collected_key": Key("k:collected"),
            "unite_queue": Key("k:queue"),
            "run_key": Key("k:run"),
            "open_delta": -2,
            "bad_delta": 9,
            "retention_s": 700,
            "n_outer_groups": 2,
            # The outer group keys, then the collected items.
            "outer_groups": Tail((*map(Key, OUTER), b"c1")),
        },
    ),
}


def _resolve(plan: SettlePlan, value: Any) -> Any:
    return plan.keys[value - 1] if isinstance(value, int) and not isinstance(value, bool) else value


def _held(plan: SettlePlan, op: list[Any], pos: int, want: Any) -> tuple[Any, Any]:
    """(what the op holds at Lua position `pos`, what it should hold), keys as names."""
    if isinstance(want, Tail):
        got = op[pos - 1 :]
        keys = [isinstance(w, Key) for w in want.values]
        return (
            tuple(_resolve(plan, g) if k else g for g, k in zip(got, keys, strict=False)),
            tuple(w.name if isinstance(w, Key) else w for w in want.values),
        )
    if isinstance(want, Key):
        return _resolve(plan, op[pos - 1]), want.name
    return op[pos - 1], want


def test_op_codes_agree() -> None:
    lua = {n[3:]: v for n, v in lua_constants().items() if n.startswith("OP_") and n != "OP_CODE"}
    py = {n: getattr(wire, n) for n in lua}
    assert lua == py
    assert set(lua.values()) == {op.code for op in OPS.values()}, "an op kind has no fields here"
    assert lua_constants()["OP_CODE"] == 1


@pytest.mark.parametrize("prefix", sorted(OPS))
def test_op_fields_agree(prefix: str) -> None:
    spec = OPS[prefix]
    lua = {
        n[len(prefix) + 1 :].lower(): v
        for n, v in lua_constants().items()
        if n.startswith(prefix + "_")
    }
    assert set(lua) == set(spec.fields), f"settle.lua's {prefix}_* fields vs the builder's"
    plan = SettlePlan()
    plan.entry("k:src", b"1-1")
    spec.build(plan)
    [op] = [o for o in plan.items[0][2] if o[0] == spec.code]
    for name, pos in lua.items():
        got, want = _held(plan, op, pos, spec.fields[name])
        assert got == want, (
            f"settle.lua {prefix}_{name.upper()} = {pos}: the builder puts {got!r} there"
        )


def test_item_fields_agree() -> None:
    plan = SettlePlan()
    plan.key("k:other")
    plan.entry("k:src", b"1-1")
    [item] = plan.items
    c = lua_constants()
    assert plan.keys[item[c["ITEM_SOURCE"] - 1] - 1] == "k:src"
    assert item[c["ITEM_ENTRY_ID"] - 1] == b"1-1"
    assert item[c["ITEM_OPS"] - 1] == []
    assert {n for n in c if n.startswith("ITEM_")} == {"ITEM_SOURCE", "ITEM_ENTRY_ID", "ITEM_OPS"}


def test_every_constant_is_checked_and_no_field_is_a_bare_number() -> None:
    prefixes = ("OP_", "ITEM_", *(p + "_" for p in OPS))
    assert [n for n in lua_constants() if not n.startswith(prefixes)] == []
    text = SCRIPT.read_text()
    body = text[text.index("local group = ARGV[1]") :]
    assert re.findall(r"\b(?:op|item)\[\d+\]|unpack\(op, \d+\)", body) == []


def test_the_cancelled_run_threshold_agrees_with_cancel_run() -> None:
    """cancel_run.lua lowers `open` by CANCELLED_OPEN; settle.lua takes a count below half
    of it for a cancelled run: one number in two places."""
    from exospherehost.broker.fields import CANCELLED_OPEN

    [below] = re.findall(r"local CANCELLED_BELOW = (-?\d+)", SCRIPT.read_text())
    assert int(below) == CANCELLED_OPEN // 2
    assert CANCELLED_OPEN < -(2**40), "far below any real open count"
