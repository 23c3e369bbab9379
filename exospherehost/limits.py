"""Size limits on what one state carries, and what one run-store value holds.

Every check is a `len()` of bytes that were encoded anyway (an envelope, a store value, a
result): nothing is encoded twice on the way. Only when a check fails are the fields
encoded one by one, to name the biggest in the error.

    limit                 default   env                                what it bounds
    state_bytes           4 MiB     EXOSPHERE_MAX_STATE_BYTES          one state's envelope as
                                                                       written (inputs + the
                                                                       context it carries); one
                                                                       state's outputs as a result
    store_value_bytes     4 MiB     EXOSPHERE_MAX_STORE_VALUE_BYTES    one run-store value
    store_inline_bytes    16 KiB    EXOSPHERE_STORE_INLINE_BYTES       store values larger than
                                                                       this never travel in
                                                                       envelopes: read from the
                                                                       run store when a state
                                                                       that needs one runs
    settle_bytes          64 MiB    EXOSPHERE_MAX_SETTLE_BYTES         everything one state emits
                                                                       when it settles (all its
                                                                       successors and results)

Values in the environment are bytes, or a number with a binary unit: `512KiB`, `8MiB`,
`1GiB` (`K`, `KB`, `M`, `MB`, `G`, `GB` mean the same binary units). Redis itself refuses
one argument over 512 MB (`proto-max-bulk-len`); `settle_bytes` keeps a settle call far
below it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

from exospherehost.broker.codec import pack
from exospherehost.errors import ConfigError, InvalidArgument, SizeLimitExceeded

__all__ = [
    "SizeLimitExceeded",
    "SizeLimits",
    "biggest",
    "current",
    "envelope_parts",
    "human",
    "use",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

ENV = {
    "state_bytes": "EXOSPHERE_MAX_STATE_BYTES",
    "store_value_bytes": "EXOSPHERE_MAX_STORE_VALUE_BYTES",
    "store_inline_bytes": "EXOSPHERE_STORE_INLINE_BYTES",
    "settle_bytes": "EXOSPHERE_MAX_SETTLE_BYTES",
}
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)


def human(size: int) -> str:
    """`20.0 MiB`, `512 KiB`, `37 bytes`."""
    if size >= MIB:
        return f"{size / MIB:.1f} MiB"
    if size >= KIB:
        return f"{size / KIB:.1f} KiB"
    return f"{size} bytes"


def parse_size(text: str, name: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(
            f"{name}={text!r} is not a size: expected bytes or a number with KiB, MiB or GiB"
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """The limits (bytes, msgpack-encoded). `SizeLimits.from_env()` reads the environment;
    `Runtime(size_limits=...)` and `StateManager(size_limits=...)` take one."""

    state_bytes: int = 4 * MIB
    store_value_bytes: int = 4 * MIB
    store_inline_bytes: int = 16 * KIB
    settle_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"SizeLimits.{f.name} must be an int > 0, got {value!r}")
        if self.store_inline_bytes > self.state_bytes:
            raise InvalidArgument(
                f"SizeLimits.store_inline_bytes ({self.store_inline_bytes}) cannot exceed "
                f"state_bytes ({self.state_bytes}): inline store values travel in envelopes"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SizeLimits:
        env = os.environ if environ is None else environ
        given = {
            attr: parse_size(env[var], var) for attr, var in ENV.items() if env.get(var, "").strip()
        }
        return cls(**given)

    def exceeded(
        self, what: str, name: str, size: int, attr: str, detail: str = ""
    ) -> SizeLimitExceeded:
        limit = getattr(self, attr)
        extra = f"; {detail}" if detail else ""
        return SizeLimitExceeded(
            f"{what} {name} is {human(size)} ({size} bytes) encoded, over the limit of "
            f"{human(limit)} (SizeLimits.{attr}, env {ENV[attr]}){extra}",
            what=what,
            name=name,
            size=size,
            limit=limit,
        )

    def check_store_value(self, key: str, encoded: bytes) -> None:
        if len(encoded) > self.store_value_bytes:
            raise self.exceeded("store value", repr(key), len(encoded), "store_value_bytes")

    def check_store(self, encoded: Mapping[str, bytes]) -> None:
        limit = self.store_value_bytes
        for key, value in encoded.items():
            if len(value) > limit:
                self.check_store_value(key, value)


# The limits of the Runtime whose task this is: set once in its main task, inherited by
# every task it starts (executors included), so `self.store` in node code checks against
# the Runtime's `size_limits` at no cost per state.
_CURRENT: ContextVar[SizeLimits | None] = ContextVar("exosphere_size_limits", default=None)


def use(limits: SizeLimits) -> None:
    """Make `limits` what `current()` returns in this task and the tasks it starts."""
    _CURRENT.set(limits)


def current() -> SizeLimits:
    """The running Runtime's limits (see `use`), else those of the environment."""
    limits = _CURRENT.get()
    return limits if limits is not None else SizeLimits.from_env()


def _sizes(prefix: str, values: Mapping[str, Any]) -> Iterable[tuple[int, str]]:
    for name, value in values.items():
        try:
            yield len(pack(value)), f"{prefix}{name}"
        except TypeError:
            continue


def biggest(parts: Iterable[tuple[str, Mapping[str, Any]]], top: int = 3) -> str:
    """The `top` biggest fields over `parts` ((prefix, mapping) pairs), encoded one by one:
    `inputs.doc 20.0 MiB, inputs.i 1 bytes` (only on the failure path, to name what is
    too big)."""
    sizes = sorted(
        (s for prefix, values in parts for s in _sizes(f"{prefix}." if prefix else "", values)),
        reverse=True,
    )
    return ", ".join(f"{name} {human(size)}" for size, name in sizes[:top])


def envelope_parts(
    inputs: Mapping[str, Any], ctx: Mapping[str, Any]
) -> list[tuple[str, Mapping[str, Any]]]:
    """What a state envelope carries, as parts for `biggest`: its inputs, the store values
    and each ancestor's outputs in its context (`ctx`, see exospherehost.graph.compiled)."""
    parts: list[tuple[str, Mapping[str, Any]]] = [("inputs", inputs)]
    for name, value in ctx.items():
        if isinstance(value, Mapping):
            parts.append(("store" if name == "store" else f"{name}.outputs", value))
    return parts
