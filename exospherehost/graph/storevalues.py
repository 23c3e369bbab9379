"""Run-store keys and values, checked and encoded (pure: the run plan encodes a run's
store with these before anything is written; exospherehost.store's RunStore too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exospherehost.broker.codec import pack
from exospherehost.errors import InvalidArgument
from exospherehost.limits import SizeLimits

MAX_KEY_LENGTH = 512


def check_store_key(key: object) -> str:
    """A store key: a non-empty string without '.', surrounding whitespace or more than
    MAX_KEY_LENGTH characters (the same rules as StoreConfigModel's keys)."""
    if not isinstance(key, str):
        raise TypeError(f"store key must be a string, got {type(key).__name__} {key!r}")
    if not key or not key.strip():
        raise InvalidArgument("store key cannot be empty or only whitespace")
    if key != key.strip():
        raise InvalidArgument(f"store key {key!r} has leading or trailing whitespace")
    if "." in key:
        raise InvalidArgument(f"store key {key!r} cannot contain '.'")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"store key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} characters"
        )
    return key


def encode_value(key: str, value: Any, limits: SizeLimits | None = None) -> bytes:
    """msgpack of one store value; with `limits`, refused (SizeLimitExceeded naming the
    key and its size) when over `store_value_bytes`."""
    try:
        data = pack(value)
    except TypeError as exc:
        raise TypeError(f"store value for key {key!r}: {exc}") from None
    if limits is not None and len(data) > limits.store_value_bytes:
        limits.check_store_value(key, data)
    return data


def encode_store(values: Mapping[str, Any], limits: SizeLimits | None = None) -> dict[str, bytes]:
    """Check every key and msgpack every value; the error names the offending key (with
    `limits`, also a value over `store_value_bytes`)."""
    return {check_store_key(k): encode_value(k, v, limits) for k, v in values.items()}


def inline_and_referenced(
    values: Mapping[str, Any], encoded: Mapping[str, bytes], limits: SizeLimits
) -> tuple[dict[str, Any], frozenset[str]]:
    """Split a run's store into the values that travel in envelopes (their encoding is at
    most `store_inline_bytes`) and the keys of those that do not: a state whose template
    needs one reads it from the run store when it runs (exospherehost.graph.compiled)."""
    limit = limits.store_inline_bytes
    big = frozenset(k for k, data in encoded.items() if len(data) > limit)
    if not big:
        return dict(values), big
    return {k: v for k, v in values.items() if k not in big}, big
