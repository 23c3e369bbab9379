"""Stream-entry codec. An entry is either an SDK envelope (one field `_exo` holding a
versioned msgpack map) or a foreign entry: plain `field value` pairs from any Redis client,
which are the node's inputs as strings (coerced later by the node's Inputs model)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from pydantic_core import to_jsonable_python

from exospherehost.broker.errors import MalformedEntry as MalformedEntry  # old import path
from exospherehost.broker.keys import ENVELOPE_FIELD

WIRE_VERSION = 1
# Every key an envelope of WIRE_VERSION may carry (README "Wire protocol"). A key outside
# it is refused, not ignored: it would be a writer speaking another protocol, whose
# meaning this reader would silently drop.
_ENVELOPE_KEYS = frozenset(
    {"v", "i", "in", "r", "g", "gv", "n", "c", "gr", "p", "u", "a", "f", "d"}
)
_ENV_KEY = ENVELOPE_FIELD.encode()


@dataclass(slots=True)
class Envelope:
    state_id: str
    inputs: dict[str, Any]
    run_id: str | None = None
    graph: str | None = None
    graph_version: int = 0
    identifier: str | None = None
    ctx: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    foreign: bool = False
    groups: dict[str, str] = field(default_factory=dict)  # fan-in groups: unite -> target state
    path: list[int] = field(default_factory=list)  # fan-out indices from the root (branch order)
    unite: str | None = None  # a fired uniting state: the target state id of its group
    # Deliveries of earlier entries of this state that ended unsettled (it was released at
    # shutdown, which re-adds it as a new entry whose Redis delivery count starts afresh).
    deliveries: int = 0


def packer(**options: Any) -> Callable[[Any], bytes]:
    """A `pack` function reusing one msgpack.Packer per thread: packb builds a Packer per
    call, which costs more than packing a small map (~0.5 vs 0.15 us). Per thread because
    a Packer is not thread-safe (its `default` hook runs Python code mid-pack)."""
    local = threading.local()

    def pack_with(value: Any) -> bytes:
        try:
            p = local.packer
        except AttributeError:
            p = local.packer = msgpack.Packer(**options)
        return p.pack(value)  # type: ignore[no-any-return]

    return pack_with


_local = threading.local()


def pack(value: Any) -> bytes:
    """msgpack with a clear error for values msgpack cannot carry. `default` turns what
    msgpack lacks (datetime, UUID, Decimal, enums, models) into its JSON-compatible form,
    as pydantic's JSON mode would. The per-thread Packer of `packer`, inlined: settle
    planning packs four to five values per graph state, and the extra call was ~1/4 of
    the cost of packing a small map."""
    try:
        p = _local.packer
    except AttributeError:
        p = _local.packer = msgpack.Packer(use_bin_type=True, default=to_jsonable_python)
    try:
        return p.pack(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"value is not msgpack-serialisable: {exc}") from exc


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(env: Envelope) -> bytes:
    m: dict[str, Any] = {"v": WIRE_VERSION, "i": env.state_id, "in": env.inputs}
    if env.run_id is not None:
        m["r"] = env.run_id
        m["g"] = env.graph
        m["gv"] = env.graph_version
        m["n"] = env.identifier
        if env.ctx:
            m["c"] = env.ctx
        if env.groups:
            m["gr"] = env.groups
        if env.path:
            m["p"] = env.path
        if env.unite is not None:
            m["u"] = env.unite
    if env.attempt:
        m["a"] = env.attempt
    if env.foreign:
        m["f"] = 1  # inputs are strings from a plain XADD: coerce them again on retry
    if env.deliveries:
        m["d"] = env.deliveries
    return pack(m)


def encode_successor(
    state_id: str,
    inputs: dict[str, Any],
    run_id: str,
    graph: str | None,
    graph_version: int,
    identifier: str,
    ctx: dict[str, Any],
    groups: dict[str, str],
    path: Sequence[int],
) -> bytes:
    """`encode` of a graph state a settle emits (first attempt, not foreign, no unite, no
    deliveries), the same bytes, without building an Envelope first: settle planning
    encodes one per successor, and the Envelope would only be read back by `encode`."""
    m: dict[str, Any] = {
        "v": WIRE_VERSION,
        "i": state_id,
        "in": inputs,
        "r": run_id,
        "g": graph,
        "gv": graph_version,
        "n": identifier,
    }
    if ctx:
        m["c"] = ctx
    if groups:
        m["gr"] = groups
    if path:
        m["p"] = path  # a tuple packs as the same msgpack array as a list
    return pack(m)


def _decode_envelope(raw: bytes) -> Envelope:
    try:
        m = unpack(raw)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedEntry(f"field {ENVELOPE_FIELD!r} is not valid msgpack ({exc})") from None
    if type(m) is dict and len(m) == 3 and m.get("v") == WIRE_VERSION:
        # The common graphless envelope {v, i, in}: fast path, same checks.
        state_id, inputs = m.get("i"), m.get("in")
        if type(state_id) is str and state_id and type(inputs) is dict:
            return Envelope(state_id, inputs)
    if not isinstance(m, dict):
        raise MalformedEntry(f"envelope must be a msgpack map, got {type(m).__name__}")
    version = m.get("v")
    if version != WIRE_VERSION:
        raise MalformedEntry(f"envelope version {version!r} is not supported (need {WIRE_VERSION})")
    if unknown := m.keys() - _ENVELOPE_KEYS:
        names = sorted(repr(k) for k in unknown)
        raise MalformedEntry(f"envelope has unknown keys {', '.join(names)}")
    state_id, inputs = m.get("i"), m.get("in")
    if not isinstance(state_id, str) or not state_id:
        raise MalformedEntry("envelope has no state id (key 'i' must be a non-empty string)")
    if not isinstance(inputs, dict):
        raise MalformedEntry("envelope inputs (key 'in') must be a map")
    run_id, graph, version, ident = m.get("r"), m.get("g"), m.get("gv") or 0, m.get("n")
    attempt, deliveries, ctx, groups, path, unite = (
        m.get("a") or 0,
        m.get("d") or 0,
        m.get("c") or {},
        m.get("gr") or {},
        m.get("p") or [],
        m.get("u"),
    )
    if run_id is not None:
        if not (isinstance(run_id, str) and isinstance(graph, str) and isinstance(ident, str)):
            raise MalformedEntry(
                "envelope of a graph run needs strings run 'r', graph 'g' and identifier 'n'"
            )
        if not _is_count(version):
            raise MalformedEntry(f"envelope graph version 'gv' must be an integer, got {version!r}")
    if not _is_count(attempt):
        raise MalformedEntry(f"envelope attempt 'a' must be an integer >= 0, got {attempt!r}")
    if not _is_count(deliveries):
        raise MalformedEntry(f"envelope deliveries 'd' must be an integer >= 0, got {deliveries!r}")
    if not isinstance(ctx, dict):
        raise MalformedEntry("envelope ctx 'c' must be a map")
    if not (isinstance(groups, dict) and all(isinstance(v, str) for v in groups.values())):
        raise MalformedEntry("envelope groups 'gr' must be a map of strings")
    if not (isinstance(path, list) and all(_is_count(i) for i in path)):
        raise MalformedEntry("envelope path 'p' must be a list of integers")
    if unite is not None and not isinstance(unite, str):
        raise MalformedEntry("envelope unite 'u' must be a string")
    return Envelope(
        state_id,
        inputs,
        run_id,
        graph if run_id is not None else None,
        version if run_id is not None else 0,
        ident if run_id is not None else None,
        ctx,
        attempt,
        bool(m.get("f")),
        groups,
        path,
        unite,
        deliveries,
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> Envelope:
    """Decode one stream entry; raise MalformedEntry naming what is wrong."""
    raw = fields.get(_ENV_KEY)
    if raw is not None:
        if len(fields) != 1:
            extra = sorted(k.decode("utf-8", "replace") for k in fields if k != _ENV_KEY)
            raise MalformedEntry(f"envelope entry has unexpected extra fields {extra}")
        return _decode_envelope(raw)
    if not fields:
        raise MalformedEntry("entry has no fields")
    inputs: dict[str, Any] = {}
    for k, v in fields.items():
        try:
            inputs[k.decode()] = v.decode()
        except UnicodeDecodeError:
            name = k.decode("utf-8", "replace")
            raise MalformedEntry(f"field {name!r} is not UTF-8 text") from None
    return Envelope(entry_id.decode(), inputs, foreign=True)


def printable_fields(fields: dict[bytes, bytes], limit: int = 4096) -> dict[str, str]:
    """Original fields of a bad entry, kept readable (and bounded) for its dead letter."""
    out: dict[str, str] = {}
    for k, v in fields.items():
        text = v.decode("utf-8", "replace") if len(v) <= limit else f"<{len(v)} bytes>"
        out[k.decode("utf-8", "replace")] = text
    return out
