"""A graph run's key-value store: `trigger(store=...)` fills it (with the graph's
`StoreConfigModel.default_values`), nodes read and write it during the run through
`self.store`, and it expires with the run.

Stored in the hash `exo:{ns}:run:<run>:store`, one msgpack value per key.

Templates (`${{ store.k }}`) are rendered from the values the run was TRIGGERED with (they
travel in the states' envelopes, so rendering needs no Redis read); writes made by nodes
are seen by nodes reading `self.store`, not by templates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exospherehost.broker.codec import pack, unpack
from exospherehost.errors import InvalidArgument, RunNotFound
from exospherehost.errors import StoreUnavailable as StoreUnavailable  # old import path

if TYPE_CHECKING:
    from exospherehost.broker.streams import Broker

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


class RunStore:
    """`BaseNode.store`: the store of the run the executing state belongs to.

    Every call is one Redis round trip and sees the latest value (writes by other states
    of the run included). Values are anything msgpack carries (str, int, float, bool,
    None, bytes, lists, dicts; datetimes, UUIDs and models in their JSON form). Writes to
    a run that no longer exists raise `KeyError`. Execution is at-least-once: a state run
    twice writes twice, so write idempotently (e.g. set, not increment-by-read)."""

    __slots__ = ("_broker", "run_id")

    def __init__(self, broker: Broker, run_id: str) -> None:
        self._broker = broker
        self.run_id = run_id

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default` when the store has no such key."""
        raw = await self._broker.store_get(self.run_id, check_store_key(key))
        return default if raw is None else unpack(raw)

    async def all(self) -> dict[str, Any]:
        """Every key and value of the store."""
        raw = await self._broker.store_all(self.run_id)
        return {k.decode(): unpack(v) for k, v in raw.items()}

    async def set(self, key: str, value: Any) -> None:
        """Set `key` to `value`."""
        await self.update({key: value})

    async def update(self, values: Mapping[str, Any]) -> None:
        """Set several keys at once (atomically)."""
        encoded = encode_store(values)
        if not encoded:
            return
        if not await self._broker.store_set(self.run_id, encoded):
            raise RunNotFound(
                f"run {self.run_id!r} not found (unknown, or expired after retention): "
                f"cannot write its store"
            )

    async def delete(self, key: str) -> bool:
        """Remove `key`; True when it existed."""
        return await self._broker.store_delete(self.run_id, check_store_key(key))

    def __repr__(self) -> str:
        return f"RunStore(run_id={self.run_id!r})"
