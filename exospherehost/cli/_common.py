"""Plumbing shared by the `exosphere` commands: settings, SDK calls, errors, output."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exospherehost.client.statemanager import StateManager
from exospherehost.config import ENV_URL, ConfigError
from exospherehost.errors import ExosphereError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
ENV_NAMESPACE = "EXOSPHERE_NAMESPACE"


@dataclass
class Settings:
    """The global options, shared by every command through the click context."""

    redis_url: str | None
    key: str | None
    namespace: str | None

    def require_namespace(self) -> str:
        if not self.namespace:
            raise click.UsageError(f"no namespace: pass --namespace/-n NAME or set {ENV_NAMESPACE}")
        return self.namespace

    def where(self) -> str:
        """The Redis URL for messages, without its password."""
        url = self.redis_url or os.environ.get(ENV_URL) or "(no Redis URL)"
        parsed = urlparse(url)
        if parsed.password:
            url = url.replace(f":{parsed.password}@", ":***@", 1)
        return url

    @contextlib.asynccontextmanager
    async def manager(self, namespace: str | None = None) -> AsyncIterator[StateManager]:
        sm = StateManager(namespace or self.require_namespace(), self.redis_url, self.key)
        try:
            yield sm
        finally:
            await sm.close()


pass_settings = click.make_pass_decorator(Settings)


def namespace_option(f: F) -> F:
    """`-n/--namespace` after the command name too (`exosphere worker X -n demo`); it
    overrides the global option and EXOSPHERE_NAMESPACE."""

    def store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        settings = ctx.find_object(Settings)  # made by the `exosphere` group
        if value is not None and settings is not None:
            settings.namespace = value

    return click.option(
        "-n",
        "--namespace",
        default=None,
        expose_value=False,
        callback=store,
        help=f"Namespace (overrides the global option and ${ENV_NAMESPACE}).",
    )(f)


@contextlib.contextmanager
def one_line_errors(settings: Settings) -> Iterator[None]:
    """What users get wrong (configuration, unreachable Redis, unknown names, bad values)
    becomes a one-line `Error: ...`, not a traceback."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise click.ClickException(f"cannot reach Redis at {settings.where()}: {exc}") from None
    except OutOfMemoryError as exc:  # redis-py strips the OOM code from the message
        raise click.ClickException(
            f"Redis at {settings.where()} is out of memory (maxmemory reached; nothing was "
            f"written): {exc}"
        ) from None
    except RedisError as exc:
        raise click.ClickException(f"Redis at {settings.where()}: {exc}") from None
    except KeyError as exc:  # unknown graph, run (RunNotFound)
        raise click.ClickException(str(exc.args[0]) if exc.args else repr(exc)) from None
    except (ConfigError, ValueError, TimeoutError, ExosphereError) as exc:
        raise click.ClickException(str(exc)) from None


def run(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async SDK call to completion with one-line errors."""
    with one_line_errors(settings):
        return asyncio.run(main())


def json_value(text: str) -> Any:
    """`3` -> 3, `true` -> True, `{"a":1}` -> dict, `null` -> None; anything else is text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(
    _ctx: click.Context | None, param: click.Parameter | None, pairs: Sequence[str]
) -> dict[str, Any]:
    """Click callback: repeated `key=value` options -> dict (values via json_value)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param=param)
        out[key] = json_value(raw)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def to_json(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, default=_plain, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to width; numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]
    lines = []
    for r in cells:
        parts = [
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text == "-" or text.replace(".", "", 1).lstrip("-").isdigit()


def age(ms: int | float | None) -> str:
    """A duration in ms, compactly: 850ms, 12.5s, 3m07s, 2h05m."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{int(ms)}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def clock(ms: int | None) -> str:
    """Local wall-clock time of an epoch-ms timestamp."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
