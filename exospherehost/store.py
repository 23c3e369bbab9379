"""A graph run's key-value store: `trigger(store=...)` fills it (with the graph's
`StoreConfigModel.default_values`), nodes read and write it during the run through
`self.store`, and it expires with the run.

Stored in the hash `exo:{ns}:run:<run>:store`, one msgpack value per key.

Templates (`${{ store.k }}`) are rendered from the values the run was TRIGGERED with (they
travel in the states' envelopes, so rendering needs no Redis read); writes made by nodes
are seen by nodes reading `self.store`, not by templates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from exospherehost.broker.codec import pack, unpack
from exospherehost.errors import RunNotFound, StoreConflict
from exospherehost.errors import StoreUnavailable as StoreUnavailable  # old import path
from exospherehost.graph.storevalues import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from exospherehost.graph.storevalues import check_store_key as check_store_key
from exospherehost.graph.storevalues import encode_store as encode_store
from exospherehost.graph.storevalues import encode_value as encode_value
from exospherehost.limits import SizeLimits
from exospherehost.limits import current as current_limits

if TYPE_CHECKING:
    from exospherehost.broker.streams import Broker


class RunStore:
    """`BaseNode.store`: the store of the run the executing state belongs to.

    Every call is one Redis round trip and sees the latest value (writes by other states
    of the run included). Values are anything msgpack carries (str, int, float, bool,
    None, bytes, lists, dicts; datetimes, UUIDs and models in their JSON form). Writes to
    a run that no longer exists raise `KeyError`.

    Atomic: `update` (several keys at once), `incr`, `compare_and_set` and `modify` (a
    read-modify-write that retries until no other writer came in between). A `get`
    followed by a `set` is not: concurrent states can overwrite each other's value.
    Execution is at-least-once: a state run twice writes twice, so an `incr` of a state
    that is retried or reclaimed counts twice; make writes idempotent where that
    matters (e.g. `set` a per-state key).

    A value whose encoding is over `SizeLimits.store_value_bytes` (4 MiB; `limits`, else
    the running Runtime's `size_limits`, else EXOSPHERE_MAX_STORE_VALUE_BYTES) is refused
    with SizeLimitExceeded naming the key."""

    __slots__ = ("_broker", "_limits", "run_id")

    def __init__(self, broker: Broker, run_id: str, limits: SizeLimits | None = None) -> None:
        self._broker = broker
        self.run_id = run_id
        self._limits = limits

    @property
    def limits(self) -> SizeLimits:
        return self._limits if self._limits is not None else current_limits()

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
        encoded = encode_store(values, self.limits)
        if not encoded:
            return
        if not await self._broker.store_set(self.run_id, encoded):
            raise self._gone()

    async def incr(self, key: str, amount: int | float = 1) -> int | float:
        """Add `amount` to the number at `key` (missing: 0) in one atomic step; returns
        the new value. Redis's Lua numbers are doubles: integers beyond 2**53 lose
        precision."""
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"store incr amount must be a number, got {amount!r}")
        raw = await self._broker.store_incr(self.run_id, check_store_key(key), amount)
        if raw is None:
            raise self._gone()
        value: int | float = unpack(raw)
        return value

    async def compare_and_set(self, key: str, expected: Any, value: Any) -> bool:
        """Set `key` to `value` only if it still holds `expected` (compared as the encoded
        value; `expected=None` matches a missing key and one holding None). True when
        written."""
        key = check_store_key(key)
        new = encode_value(key, value, self.limits)
        written = await self._broker.store_cas(
            self.run_id, key, None if expected is None else encode_value(key, expected), new
        )
        if written == 0 and expected is None:
            # The key may hold an explicit None (msgpack nil): that matches too.
            written = await self._broker.store_cas(self.run_id, key, pack(None), new)
        if written < 0:
            raise self._gone()
        return written == 1

    async def modify(
        self, key: str, change: Callable[[Any], Any], default: Any = None, attempts: int = 100
    ) -> Any:
        """Apply `change` to the value of `key` (`default` when missing) atomically: read,
        change, compare-and-set, again on a conflict (up to `attempts`); returns the value
        written. `change` may run more than once, so it must be pure."""
        key = check_store_key(key)
        limits = self.limits
        for _ in range(attempts):
            raw = await self._broker.store_get(self.run_id, key)
            new = change(default if raw is None else unpack(raw))
            written = await self._broker.store_cas(
                self.run_id, key, raw, encode_value(key, new, limits)
            )
            if written == 1:
                return new
            if written < 0:
                raise self._gone()
        raise StoreConflict(f"store key {key!r}: another writer came in between {attempts} times")

    def _gone(self) -> RunNotFound:
        return RunNotFound(
            f"run {self.run_id!r} not found (unknown, or expired after retention): "
            f"cannot write its store"
        )

    async def delete(self, key: str) -> bool:
        """Remove `key`; True when it existed."""
        return await self._broker.store_delete(self.run_id, check_store_key(key))

    def __repr__(self) -> str:
        return f"RunStore(run_id={self.run_id!r})"
