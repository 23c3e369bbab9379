"""Static types of node fields, read from the JSON schemas a Runtime registers, so that
`upsert_graph` refuses a mapping pydantic would refuse at every run (a list into a `str`,
a number into a `str`, a scalar into a `list`) — and never one pydantic might accept:
inputs are validated in lax mode, where `"5"` goes into an `int` and `1` into a `bool`.

A type here is the set of JSON types a field may hold (`string`, `integer`, `number`,
`boolean`, `array`, `object`, `null`), or None for "anything / not known" (`Any`, an
unannotated field, a schema this module does not read, a value decided at run time).
Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

Types: TypeAlias = frozenset[str] | None
"""JSON types a value may have; None: any (unknown)."""

_KNOWN = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})

# What a field of each JSON type accepts in pydantic's lax mode. A str field takes only
# strings (pydantic v2 does not turn numbers into str); numbers and bools take numeric or
# boolean strings and each other; lists and dicts take only their own kind.
_ACCEPTS: dict[str, frozenset[str]] = {
    "string": frozenset({"string"}),
    "integer": frozenset({"integer", "number", "string", "boolean"}),
    "number": frozenset({"integer", "number", "string", "boolean"}),
    "boolean": frozenset({"boolean", "integer", "number", "string"}),
    "array": frozenset({"array"}),
    "object": frozenset({"object"}),
    "null": frozenset({"null"}),
}

_PYTHON_NAME = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
    "null": "None",
}

ARRAY: frozenset[str] = frozenset({"array"})
STRING: frozenset[str] = frozenset({"string"})

_MAX_DEPTH = 32  # $ref chains deeper than this are treated as unknown, not followed


def field_types(schema: Mapping[str, Any]) -> dict[str, Types]:
    """Field name -> its Types, for a pydantic model's JSON schema (model_json_schema)."""
    defs = schema.get("$defs")
    defs = defs if isinstance(defs, Mapping) else {}
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return {}
    return {str(name): _types(prop, defs, 0) for name, prop in props.items()}


def _types(node: Any, defs: Mapping[str, Any], depth: int) -> Types:
    if depth > _MAX_DEPTH or not isinstance(node, Mapping):
        return None
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _types(defs.get(ref.rsplit("/", 1)[-1]), defs, depth + 1)
    if "const" in node:
        return value_types(node["const"])
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        return _union([value_types(v) for v in enum])
    kind = node.get("type")
    if isinstance(kind, str):
        return frozenset({kind}) if kind in _KNOWN else None
    if isinstance(kind, list) and kind and all(k in _KNOWN for k in kind):
        return frozenset(kind)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and options:
            return _union([_types(o, defs, depth + 1) for o in options])
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        return _types(all_of[0], defs, depth + 1)
    return None


def _union(parts: list[Types]) -> Types:
    out: set[str] = set()
    for part in parts:
        if part is None:
            return None
        out |= part
    return frozenset(out)


def value_types(value: Any) -> Types:
    """The JSON type of a literal value in a graph template."""
    if value is None:
        return frozenset({"null"})
    if isinstance(value, bool):
        return frozenset({"boolean"})
    if isinstance(value, int):
        return frozenset({"integer"})
    if isinstance(value, float):
        return frozenset({"number"})
    if isinstance(value, str):
        return STRING
    if isinstance(value, list | tuple):
        return ARRAY
    if isinstance(value, dict):
        return frozenset({"object"})
    return None


def refused(target: Types, source: Types) -> bool:
    """True when no value of type `source` can be valid for a field of type `target`
    (lax pydantic); unknown on either side is never refused."""
    if target is None or source is None:
        return False
    accepted: set[str] = set()
    for kind in target:
        accepted |= _ACCEPTS.get(kind, _KNOWN)
    return not (source & accepted)


def describe(types: Types) -> str:
    """`types` in Python's spelling: 'str', 'list', 'int | None'."""
    if types is None:
        return "any"
    return " | ".join(sorted(_PYTHON_NAME.get(t, t) for t in types))
