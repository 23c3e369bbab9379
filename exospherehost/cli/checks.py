"""Mistakes refused before anything is written (issue 13 item 7): `enqueue` and `trigger`
inputs checked against the node's registered Inputs schema (unknown field, missing
field, a value of the wrong type, broken JSON), and `trigger --store` keys against what
the graph declares. Each problem names the field; the command exits 2 with one `Error:`.

Values given as `-i KEY=VALUE` are read by the field's schema: a string field takes the
text as it is (`-i name=5` is the string "5"), other fields read it as JSON."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import click

from exospherehost.client.statemanager import StateManager


def mistake(message: str) -> click.ClickException:
    """A usage mistake found against the registered schemas: one `Error:` line, exit
    status 2 (a click error, not an SDK one: it never leaves the command line)."""
    error = click.ClickException(message)  # not UsageError: click adds usage lines to it
    error.exit_code = 2  # type: ignore[misc]  # an instance's own, as UsageError's class has
    return error


Schema = Mapping[str, Any]


def raw_pairs(
    _ctx: click.Context | None, param: click.Parameter | None, pairs: Iterable[str]
) -> dict[str, str]:
    """Click callback: repeated `key=value` -> {key: raw text} (typed later by schema)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param=param)
        out[key] = raw
    return out


def loose_value(name: str, raw: str) -> Any:
    """A value without a schema: JSON if it parses, else the text, except text that
    plainly meant to be JSON (an object or list that does not parse)."""
    try:
        return json.loads(raw)
    except ValueError as exc:
        if raw.lstrip()[:1] in ("{", "["):
            raise mistake(
                f"{name}: {_short(raw)} is not valid JSON ({exc}); to pass it as text, "
                f"quote it as a JSON string"
            ) from None
        return raw


async def registered_schemas(sm: StateManager) -> dict[str, dict[str, Any]]:
    """node name -> its registered Inputs JSON schema (nodes whose entry does not parse
    are left out: nothing is checked against them)."""
    out = {}
    for node, text in (await sm.broker.registry.schemas()).items():
        try:
            out[node] = json.loads(text)["inputs_schema"]
        except (ValueError, KeyError, TypeError):
            continue
    return out


def typed_inputs(node: str, schema: Schema | None, raw: Mapping[str, str]) -> dict[str, Any]:
    """`-i` values of `node` read by its schema (None: not registered, read loosely);
    unknown fields and values of the wrong type refused."""
    if schema is None:
        return {k: loose_value(f"input {k!r}", v) for k, v in raw.items()}
    props = _props(schema)
    _unknown(node, props, raw)
    return {k: _typed(node, k, props[k], v, schema) for k, v in raw.items()}


def check_inputs(
    node: str, schema: Schema | None, values: Mapping[str, Any], complete: bool, where: str = ""
) -> None:
    """Already-typed inputs (a JSON line, or all of a state's inputs): unknown fields,
    wrong types and, when `complete`, missing required fields refused."""
    if schema is None:
        return
    props = _props(schema)
    _unknown(node, props, values, where)
    for k, v in values.items():
        if not _accepts(props[k], v, schema, lax=True):
            raise mistake(
                f"{where}input {k!r} of {node} must be {_describe(props[k], schema)}, "
                f"got {_json(v)}"
            )
    if complete:
        missing = [k for k in schema.get("required") or () if k not in values]
        if missing:
            raise mistake(
                f"{where}{node} needs input{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} (give -i {missing[0]}=...)"
            )


def declared_store_keys(doc: Mapping[str, Any], compiled_refs: Iterable[str]) -> set[str]:
    """Store keys a graph declares: its store_config's required keys and defaults, and
    every key its templates read (`${{ store.KEY }}`)."""
    sc = doc.get("store_config") or {}
    return {
        *(sc.get("required_keys") or ()),
        *((sc.get("default_values") or {}).keys()),
        *compiled_refs,
    }


def check_store(graph: str, declared: set[str], given: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - declared)
    if unknown:
        hint = _close(unknown[0], declared)
        known = ", ".join(sorted(declared)) if declared else "none"
        raise mistake(
            f"store key {unknown[0]!r} is not declared by graph {graph!r}{hint} (declared: "
            f"{known}; a key its nodes read in code must be in its store_config)"
        )


# -- schema reading -------------------------------------------------------------------------


def _props(schema: Schema) -> dict[str, Schema]:
    props = schema.get("properties") or {}
    return {k: v if isinstance(v, Mapping) else {} for k, v in props.items()}


def _unknown(node: str, props: Mapping[str, Any], given: Iterable[str], where: str = "") -> None:
    unknown = [k for k in given if k not in props]
    if unknown:
        known = ", ".join(props) if props else "none"
        raise mistake(
            f"{where}{node} has no input {unknown[0]!r}{_close(unknown[0], props)} "
            f"(its inputs: {known})"
        )


def _close(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _short(text: str, width: int = 60) -> str:
    """Text as typed, quoted (repr), cut to `width`."""
    text = repr(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _json(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _resolve(schema: Schema, root: Schema) -> Schema:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = (root.get("$defs") or {}).get(ref.rsplit("/", 1)[1])
        return found if isinstance(found, Mapping) else {}
    return schema


def _branches(schema: Schema, root: Schema) -> list[Schema] | None:
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return [_resolve(s, root) for s in schema[key] if isinstance(s, Mapping)]
    return None


def _types(schema: Schema, root: Schema) -> set[str] | None:
    """JSON types a field takes (None: anything)."""
    schema = _resolve(schema, root)
    branches = _branches(schema, root)
    if branches is not None:
        out: set[str] = set()
        for b in branches:
            t = _types(b, root)
            if t is None:
                return None
            out |= t
        return out
    t = schema.get("type")
    if t is None:
        if "enum" in schema or "const" in schema:
            return {_json_type(v) for v in schema.get("enum", [schema.get("const")])}
        return None
    return set(t) if isinstance(t, list) else {t}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _accepts(schema: Schema, value: Any, root: Schema, lax: bool = False) -> bool:
    """Whether the field could take `value` (its JSON type; an enum's members).
    `lax`: also text that pydantic's lax mode turns into the number or bool wanted."""
    schema = _resolve(schema, root)
    branches = _branches(schema, root)
    if branches is not None:
        return any(_accepts(b, value, root, lax) for b in branches)
    if "enum" in schema and isinstance(schema["enum"], list):
        return value in schema["enum"] or (lax and str(value) in map(str, schema["enum"]))
    types = _types(schema, root)
    if types is None:
        return True
    kind = _json_type(value)
    if kind in types or (kind == "integer" and "number" in types):
        return True
    if kind == "number" and "integer" in types and float(value).is_integer():
        return True
    if lax and kind == "string":
        if types & {"integer", "number"}:
            try:
                float(value)
                return True
            except ValueError:
                pass
        if "boolean" in types and value.lower() in ("true", "false", "0", "1", "yes", "no"):
            return True
    return False


def _describe(schema: Schema, root: Schema) -> str:
    schema = _resolve(schema, root)
    if "enum" in schema and isinstance(schema["enum"], list):
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    types = _types(schema, root)
    if types is None:
        return "any value"
    names = {
        "integer": "an integer",
        "number": "a number",
        "string": "text",
        "boolean": "true or false",
        "array": "a JSON list",
        "object": "a JSON object",
        "null": "null",
    }
    return " or ".join(names.get(t, t) for t in sorted(types))


def _typed(node: str, name: str, field: Schema, raw: str, root: Schema) -> Any:
    try:
        value: Any = json.loads(raw)
        parsed, why = True, ""
    except ValueError as exc:
        value, parsed, why = raw, False, str(exc)
    if parsed and _accepts(field, value, root):
        return value
    if _accepts(field, raw, root):  # a string field: the text as given
        return raw
    want = _describe(field, root)
    if not parsed and raw.lstrip()[:1] in ("{", "[", '"'):
        raise mistake(f"input {name!r} of {node}: {_short(raw)} is not valid JSON ({why})")
    raise mistake(f"input {name!r} of {node} must be {want}, got {_short(raw)}")
