"""The Lua scripts spell hash and entry field names as literals (a script cannot import):
each literal a script uses as a run-hash, group-hash, event or envelope field must be one
that exospherehost.broker.fields defines, spelled the same."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from exospherehost.broker import fields

LUA = Path(__file__).resolve().parents[2] / "broker" / "lua"

# The key expressions the scripts name each hash by. A field literal on a hash key not
# listed here fails the test: a new hash needs its fields defined (and listed) first.
RUN_HASH = {"run"}
GROUP_HASH = {"g", "KEYS[op[GI_GROUP_KEY]]", "KEYS[op[i]]"}
STATES_HASH = {"states"}  # a run's per-state records: fields are state ids, or prefixed
HASH_COMMANDS = {"HSET", "HSETNX", "HGET", "HMGET", "HINCRBY", "HINCRBYFLOAT", "HDEL", "HEXISTS"}
_LITERAL = re.compile(r"^'([^'\\]*)'$|^\"([^\"\\]*)\"$")
_PREFIXED = re.compile(r"^'([^'\\]*)'\s*\.\.")


@dataclass(frozen=True, slots=True)
class Call:
    script: str
    line: int
    args: tuple[str, ...]  # the argument expressions, as written


def _strip_comments(source: str) -> str:
    """The source with `--` comments blanked (newlines kept, for line numbers); quotes
    are tracked so a `--` inside a string stays."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(source):
        ch = source[i]
        if quote:
            out.append(ch)
            if ch == "\\":
                out.append(source[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif source.startswith("--", i):
            end = source.find("\n", i)
            i = len(source) if end < 0 else end
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _split_args(source: str, start: int) -> tuple[list[str], int]:
    """The comma-separated argument expressions of the call whose `(` is at `start - 1`,
    and the index after its `)`."""
    args: list[str] = []
    depth, quote, current = 0, "", []
    i = start
    while True:
        ch = source[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append("".join(current).strip())
                return args, i + 1
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1


def redis_calls(script: str, source: str) -> list[Call]:
    code = _strip_comments(source)
    calls = []
    for m in re.finditer(r"redis\.p?call\(", code):
        args, _ = _split_args(code, m.end())
        calls.append(Call(script, code.count("\n", 0, m.start()) + 1, tuple(args)))
    return calls


def literal(expr: str) -> str | None:
    m = _LITERAL.match(expr)
    return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))


def field_problems(call: Call) -> tuple[int, list[str]]:
    """(field literals checked, problems) of one redis.call."""
    where = f"{call.script}:{call.line}"
    command = (literal(call.args[0]) or "").upper()
    problems: list[str] = []
    checked = 0
    if command in HASH_COMMANDS:
        key, rest = call.args[1], list(call.args[2:])
        if command == "HSET":
            names, values = rest[0::2], rest[1::2]
        elif command in ("HDEL", "HMGET"):
            names, values = rest, []
        else:
            names, values = rest[:1], []
        for i, expr in enumerate(names):
            name, prefix = literal(expr), _PREFIXED.match(expr)
            if name is None and prefix is None:
                continue  # a field name the caller passes in ARGV
            checked += 1
            if key in RUN_HASH:
                if prefix is not None and prefix.group(1) not in fields.RUN_PREFIXES:
                    problems.append(f"{where}: run-hash field prefix {prefix.group(1)!r}")
                if name is not None and name not in fields.RUN_FIELDS:
                    problems.append(f"{where}: run-hash field {name!r}")
                if name == fields.RUN_STATUS and i < len(values):
                    status = literal(values[i])
                    if status is not None and status not in fields.RUN_STATUSES:
                        problems.append(f"{where}: run status {status!r}")
            elif key in STATES_HASH:
                if prefix is None or prefix.group(1) not in fields.STATE_PREFIXES:
                    problems.append(f"{where}: states-hash field {expr}")
            elif key in GROUP_HASH:
                if name is None or name not in fields.GROUP_FIELDS:
                    problems.append(f"{where}: group-hash field {expr}")
            else:
                problems.append(f"{where}: field {expr} of a hash the test does not know ({key})")
    elif command == "XADD" and "'*'" in call.args:
        pairs = list(call.args[call.args.index("'*'") + 1 :])
        names = pairs[0::2]
        allowed = {fields.ENVELOPE_FIELD} if len(names) == 1 else fields.EVENT_FIELDS
        for expr in names:
            name = literal(expr)
            if name is None:
                continue  # fields given by the caller (unpack of ARGV or of a plan op)
            checked += 1
            if name not in allowed:
                problems.append(f"{where}: stream-entry field {name!r}")
    return checked, problems


def _scripts() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(LUA.glob("*.lua"))]


def test_every_field_literal_of_the_scripts_is_defined_in_broker_fields() -> None:
    total, problems = 0, []
    for name, source in _scripts():
        for call in redis_calls(name, source):
            checked, found = field_problems(call)
            total += checked
            problems += found
    assert problems == []
    # The scripts use 34 such literals; far fewer means the parser lost track of them.
    assert total >= 30, total


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("redis.call('HINCRBY', run, 'opne', 1)", "run-hash field 'opne'"),
        ("redis.call('HINCRBY', run, 'x:' .. ident, -1)", "run-hash field prefix 'x:'"),
        ("redis.call('HSET', run, 'status', 'RUNING')", "run status 'RUNING'"),
        ("redis.call('HGET', g, 'unites')", "group-hash field 'unites'"),
        ("redis.call('XADD', q, '*', '_exo_', env)", "stream-entry field '_exo_'"),
        ("redis.call('XADD', k, '*', 'run', r, 'stat', s)", "stream-entry field 'stat'"),
        ("redis.call('HSET', other, 'open', 1)", "a hash the test does not know"),
    ],
)
def test_a_misspelt_or_unknown_field_is_reported(line: str, problem: str) -> None:
    (call,) = redis_calls("t.lua", f"-- redis.call('HGET', run, 'nope') in a comment\n{line}\n")
    checked, found = field_problems(call)
    assert checked >= 1 and len(found) == 1 and problem in found[0], found


def test_defined_fields_pass() -> None:
    good = (
        "redis.call('HINCRBY', run, 'open', 1)\n"
        "redis.call('HINCRBY', run, 'f:' .. ident, -1)\n"
        "redis.call('HSET', run, 'status', 'SUCCEEDED', 'finished_ms', now)\n"
        "redis.call('XADD', q, 'MAXLEN', '~', 10, '*', '_exo', env)\n"
        "redis.call('XADD', e, '*', 'run', r, 'status', s)\n"
    )
    calls = redis_calls("t.lua", good)
    assert [field_problems(c) for c in calls] == [(1, []), (1, []), (2, []), (1, []), (2, [])]
