"""Run-store keys and values, checked and encoded (pure: the run plan encodes a run's
store with these before anything is written; exospherehost.store's RunStore too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exospherehost.broker.codec import pack
from exospherehost.errors import InvalidArgument

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


def encode_value(key: str, value: Any) -> bytes:
    try:
        return pack(value)
    except TypeError as exc:
        raise TypeError(f"store value for key {key!r}: {exc}") from None


def encode_store(values: Mapping[str, Any]) -> dict[str, bytes]:
    """Check every key and msgpack every value; the error names the offending key."""
    return {check_store_key(k): encode_value(k, v) for k, v in values.items()}
