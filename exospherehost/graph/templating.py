"""Placeholders in graph node inputs: ``${{ <identifier>.outputs.<field> }}`` and
``${{ store.<key> }}``.

A graph's input values are compiled once (when the graph is validated or loaded) and
rendered for every state that runs, so all parsing happens in `compile_template` and
`Template.render` only walks precomputed closures. Pure: no I/O, no Redis.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from exospherehost.errors import TemplateError as TemplateError  # old import path

__all__ = [
    "OutputRef",
    "Ref",
    "StoreRef",
    "Template",
    "TemplateError",
    "compile_template",
    "sole_ref",
]


@dataclass(frozen=True, slots=True)
class OutputRef:
    """``${{ identifier.outputs.field }}``: a field of an upstream node's outputs."""

    identifier: str
    field: str

    @property
    def placeholder(self) -> str:
        # Canonical spelling, used in error messages so they read like the graph source.
        return "${{ " + f"{self.identifier}.outputs.{self.field}" + " }}"

    def __str__(self) -> str:
        return self.placeholder


@dataclass(frozen=True, slots=True)
class StoreRef:
    """``${{ store.key }}``: a key of the run's store."""

    key: str

    @property
    def placeholder(self) -> str:
        return "${{ " + f"store.{self.key}" + " }}"

    def __str__(self) -> str:
        return self.placeholder


Ref: TypeAlias = OutputRef | StoreRef

Outputs: TypeAlias = Mapping[str, Mapping[str, Any]]
Store: TypeAlias = Mapping[str, Any]
# A compiled (sub)value. `None` in its place means "no placeholder below here: the value
# renders to itself", which lets render skip literal subtrees without any call.
_Render: TypeAlias = Callable[[Outputs, Store], Any]

_OPEN = "${{"
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
# Whitespace is allowed after `${{`, before `}}` and around the dots: the original SDK
# stripped each dot-separated part, so graphs written for it keep working.
_PLACEHOLDER = re.compile(
    r"\$\{\{\s*(?:"
    rf"store\s*\.\s*(?P<key>{_NAME})"
    rf"|(?P<ident>{_NAME})\s*\.\s*outputs\s*\.\s*(?P<field>{_NAME})"
    r")\s*\}\}"
)
_GRAMMAR = "expected ${{ <identifier>.outputs.<field> }} or ${{ store.<key> }}"
_JSON_SEPARATORS = (",", ":")
_JSON_TYPES = (bool, dict, list, tuple)  # a tuple, not a union: faster in isinstance


class Template:
    """A compiled input value. Build with `compile_template`.

    `refs` lists every distinct placeholder in the value (nested dicts/lists included)
    in order of first appearance. `render` may return objects shared between calls
    (literal strings, and literal dict/list subtrees that contain no placeholder):
    that is what keeps the common no-placeholder case free, so treat results as
    read-only.
    """

    __slots__ = ("_render", "refs", "source")

    def __init__(self, source: Any, refs: tuple[Ref, ...], render: _Render | None) -> None:
        self.source = source  # the compiled (privately copied) value
        self.refs = refs
        self._render = render

    @property
    def is_literal(self) -> bool:
        """True when the value contains no placeholder (render returns it as is)."""
        return self._render is None

    def render(self, outputs: Outputs, store: Store) -> Any:
        """Substitute placeholders. `outputs` maps node identifier -> that node's outputs;
        raises TemplateError naming the placeholder when a referenced value is missing."""
        render = self._render
        if render is None:
            return self.source
        return render(outputs, store)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_template(value: Any) -> Template:
    """Parse every placeholder in `value` (any JSON-like value; dicts and lists are walked,
    dict keys are not templated). Raises TemplateError naming the first malformed one."""
    # Own a copy: the graph model's dicts may be mutated later, and literal subtrees of
    # the copy are handed out by render.
    owned = copy.deepcopy(value)
    refs: dict[Ref, None] = {}  # dict as an ordered set: dedupe, keep first-seen order
    render = _compile(owned, refs, "")
    return Template(owned, tuple(refs), render)


def _compile(value: Any, refs: dict[Ref, None], where: str) -> _Render | None:
    if isinstance(value, str):
        return _compile_str(value, refs, where)
    if isinstance(value, dict):
        return _compile_dict(value, refs, where)
    if isinstance(value, list | tuple):
        return _compile_sequence(value, refs, where)
    # Numbers, bools, None and anything else are not templated.
    return None


def _compile_dict(value: dict[Any, Any], refs: dict[Ref, None], where: str) -> _Render | None:
    items = [(k, _compile(v, refs, f"{where}[{k!r}]"), v) for k, v in value.items()]
    if all(render is None for _, render, _ in items):
        return None

    def render_dict(outputs: Outputs, store: Store) -> dict[Any, Any]:
        return {k: v if r is None else r(outputs, store) for k, r, v in items}

    return render_dict


def _compile_sequence(
    value: list[Any] | tuple[Any, ...], refs: dict[Ref, None], where: str
) -> _Render | None:
    items = [(_compile(v, refs, f"{where}[{i}]"), v) for i, v in enumerate(value)]
    if all(render is None for render, _ in items):
        return None
    as_tuple = isinstance(value, tuple)

    def render_sequence(outputs: Outputs, store: Store) -> list[Any] | tuple[Any, ...]:
        out = [v if r is None else r(outputs, store) for r, v in items]
        return tuple(out) if as_tuple else out

    return render_sequence


def _compile_str(text: str, refs: dict[Ref, None], where: str) -> _Render | None:
    if _OPEN not in text:
        return None  # the overwhelmingly common case: one substring scan, no regex
    literals: list[str] = []
    found: list[Ref] = []
    pos = 0
    while (start := text.find(_OPEN, pos)) != -1:
        match = _PLACEHOLDER.match(text, start)
        if match is None:
            raise _malformed(text, start, where)
        ref = _ref_from_match(match, where)
        literals.append(text[pos:start])
        found.append(ref)
        refs[ref] = None
        pos = match.end()
    literals.append(text[pos:])

    if len(found) == 1 and not literals[0].strip() and not literals[1].strip():
        # Exactly one placeholder: render the raw value so ints stay ints, dicts dicts.
        return _resolver(found[0])
    return _interpolator(literals, found)


def sole_ref(value: Any) -> Ref | None:
    """The placeholder `value` consists of (whitespace around allowed), which renders to
    the referenced value itself; None for anything else (text, a literal, a container)."""
    if not isinstance(value, str):
        return None
    match = _PLACEHOLDER.fullmatch(value.strip())
    return None if match is None else _ref_from_match(match, "")


def _malformed(text: str, start: int, where: str) -> TemplateError:
    at = f" at {where}" if where else ""
    end = text.find("}}", start + len(_OPEN))
    if end == -1:
        bad = text[start:]
        return TemplateError(f"unclosed placeholder {bad!r}{at}: missing '}}}}'", bad)
    bad = text[start : end + 2]
    return TemplateError(f"malformed placeholder {bad!r}{at}: {_GRAMMAR}", bad)


def _ref_from_match(match: re.Match[str], where: str) -> Ref:
    key = match.group("key")
    if key is not None:
        return StoreRef(key)
    ident = match.group("ident")
    if ident == "store":
        # GraphNodeModel forbids the identifier 'store', so this is always a typo.
        bad = match.group(0)
        at = f" at {where}" if where else ""
        raise TemplateError(
            f"malformed placeholder {bad!r}{at}: 'store' is not a node identifier; "
            "use ${{ store.<key> }} to read the store",
            bad,
        )
    return OutputRef(ident, match.group("field"))


def _resolver(ref: Ref) -> _Render:
    """A closure returning the referenced value; the happy path is one or two dict lookups."""
    if isinstance(ref, StoreRef):
        key = ref.key

        def resolve_store(outputs: Outputs, store: Store) -> Any:
            try:
                return store[key]
            except KeyError:
                raise _missing(ref, outputs) from None

        return resolve_store

    ident, field = ref.identifier, ref.field

    def resolve_output(outputs: Outputs, store: Store) -> Any:
        try:
            return outputs[ident][field]
        except (KeyError, TypeError):
            # TypeError: the node's outputs are not a mapping (e.g. None); same outcome.
            raise _missing(ref, outputs) from None

    return resolve_output


def _interpolator(literals: list[str], found: list[Ref]) -> _Render:
    head = literals[0]
    # Lookups are inlined rather than calling per-ref closures: this loop is the most
    # expensive render path, and a Python call per placeholder roughly doubles its cost.
    # (store key or node identifier, output field or None for the store, ref, tail text)
    steps = tuple(
        (ref.key, None, ref, tail)
        if isinstance(ref, StoreRef)
        else (ref.identifier, ref.field, ref, tail)
        for ref, tail in zip(found, literals[1:], strict=True)
    )

    def interpolate(outputs: Outputs, store: Store) -> str:
        parts = [head]
        append = parts.append
        for name, field, ref, tail in steps:
            try:
                value = store[name] if field is None else outputs[name][field]
            except (KeyError, TypeError):
                raise _missing(ref, outputs) from None
            append(value if isinstance(value, str) else _to_text(value, ref))
            append(tail)
        return "".join(parts)

    return interpolate


def _missing(ref: Ref, outputs: Outputs) -> TemplateError:
    # Diagnosed only on failure so the success path pays nothing for the distinction.
    if isinstance(ref, StoreRef):
        problem = f"the store has no key {ref.key!r}"
    elif ref.identifier not in outputs:
        problem = f"{ref.identifier} has no outputs (it has not run before this node)"
    elif outputs[ref.identifier] == {}:
        problem = f"{ref.identifier} has no outputs (its execute returned None)"
    else:
        problem = f"{ref.identifier} has no output {ref.field!r}"
    return TemplateError(f"input references {ref.placeholder} but {problem}", ref.placeholder)


def _to_text(value: Any, ref: Ref) -> str:
    # bool before int: bool is an int subclass, and JSON spelling (true/false) is wanted.
    if value is None or isinstance(value, _JSON_TYPES):
        try:
            return json.dumps(value, separators=_JSON_SEPARATORS)
        except (TypeError, ValueError) as exc:
            raise TemplateError(
                f"input embeds {ref.placeholder} in text but its value is not "
                f"JSON-serialisable: {exc}",
                ref.placeholder,
            ) from None
    # Numbers, and any other scalar (e.g. bytes from msgpack): their str() form.
    return str(value)
