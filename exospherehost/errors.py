"""Every error the SDK raises on purpose, in one tree under ExosphereError.

Each class also keeps its builtin (or redis-py) base, in brackets, so code that catches
`KeyError`, `ValueError`, `TimeoutError`, ... still catches it.

    ExosphereError                     root (defined in exospherehost.broker.errors)
        InvalidArgument [ValueError]   a constructor/method argument it cannot use
            KeyNameError               a name that cannot go into a key name
        ConfigError [ValueError]       missing or invalid configuration: what to set
        NodeValidationError [ValueError]   a node class cannot be served
        GraphValidationError [ValueError]  upsert_graph refused a graph: every problem
        GraphNotFound [KeyError]       no such graph in the namespace
        RunNotFound [KeyError]         no such run (unknown, or expired)
        WaitTimedOut [TimeoutError]    a wait gave up: names what is unfinished
        RedriveRefused [ValueError]    a dead letter cannot go back; it stays dead
        RetryRefused [ValueError]      retry_state cannot re-run a state: says why
        KeyRefused [redis ResponseError]   a script found a key it must not write
        CorruptRecord [ValueError]     a run's record holds what the SDK never writes there
        ConnectionSetupError [ValueError]  credentials / TLS refused: fails fast, no retry
        PermissionRefused [redis NoPermissionError]  ACL refusal: names user, namespace, grant
        SecretsError [RuntimeError]    a graph's secrets cannot be decrypted
        StoreUnavailable [RuntimeError]    `self.store` where there is no run store
        StoreConflict [TimeoutError]   store.modify lost to other writers too often
        MetricsPortError [OSError]     the metrics port cannot be bound
        TemplateError [ValueError]     a bad or unresolvable ${{ ... }} placeholder
        SizeLimitExceeded [ValueError] a state, result or store value over its size limit
        CronExpressionError [ValueError]   a cron expression croniter cannot use
        PrivateServerError [RuntimeError]  exospherehost.testing's redis-server will not run
        MalformedEntry [ValueError]    a stream entry that cannot be decoded (dead-lettered)
        InputError [ValueError]        an input value that cannot be decoded (dead-lettered)
        TimedOut                       a node's execution ran out of time (retried)
        ShutdownAbandoned [redis ConnectionError]  a stopping worker gave up on Redis

The last four are raised and handled inside the Runtime; a user meets them in the error
text of a dead letter, run history or log line, not as an exception.

PruneSignal and ReQueueAfterSignal (exospherehost.signals) are outside the tree: they are
not errors but instructions node code raises for the Runtime, and must not be caught on
the way. Under ExosphereError, an `except ExosphereError` a node wraps around its own SDK
calls would swallow them.

Classes keep their old import paths too (e.g. exospherehost.client.runs.RunNotFound).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.broker.errors import (
    ConnectionSetupError,
    CorruptRecord,
    ExosphereError,
    InvalidArgument,
    KeyNameError,
    KeyRefused,
    MalformedEntry,
    PermissionRefused,
)

__all__ = [
    "ConfigError",
    "ConnectionSetupError",
    "CorruptRecord",
    "CronExpressionError",
    "ExosphereError",
    "GraphNotFound",
    "GraphValidationError",
    "InputError",
    "InvalidArgument",
    "KeyNameError",
    "KeyRefused",
    "MalformedEntry",
    "MetricsPortError",
    "NodeValidationError",
    "PermissionRefused",
    "PrivateServerError",
    "RedriveRefused",
    "RetryRefused",
    "RunNotFound",
    "SecretsError",
    "ShutdownAbandoned",
    "SizeLimitExceeded",
    "StoreConflict",
    "StoreUnavailable",
    "TemplateError",
    "TimedOut",
    "WaitTimedOut",
]


class ConfigError(ExosphereError, ValueError):
    """Missing or invalid configuration; the message says what to set."""


class NodeValidationError(ExosphereError, ValueError):
    """A node class cannot be served; the message lists every problem found."""


class GraphValidationError(ExosphereError, ValueError):
    """upsert_graph refused a graph; `errors` lists every problem (so does the message)."""

    def __init__(self, graph: str, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"graph {graph!r} is invalid:\n- " + "\n- ".join(self.errors))


class TemplateError(ExosphereError, ValueError):
    """A placeholder is malformed (compile time) or refers to a value that is missing
    (render time). `text` is the offending placeholder text, for callers that want to
    point at it without parsing the message."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class SizeLimitExceeded(ExosphereError, ValueError):
    """A state envelope, a result or a run-store value is bigger than its limit
    (exospherehost.limits.SizeLimits). The message names it, its size and the limit;
    `what`, `name`, `size` and `limit` (bytes) say the same for code."""

    def __init__(self, message: str, *, what: str, name: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.what, self.name, self.size, self.limit = what, name, size, limit


class CronExpressionError(ExosphereError, ValueError):
    """A cron expression croniter cannot use; the message names it."""


class GraphNotFound(ExosphereError, KeyError):
    """No graph of that name in the namespace (never upserted, or another namespace)."""


class RunNotFound(ExosphereError, KeyError):
    """No run of that id: unknown, or expired after its retention."""


class WaitTimedOut(ExosphereError, TimeoutError):
    """A wait for states or runs gave up at its timeout; the message names what is
    unfinished. The states and runs go on: wait again to see them finish."""


class RedriveRefused(ExosphereError, ValueError):
    """A dead letter cannot be re-added to its node's stream (no original entry, too many
    fields, or the redrive script wrote nothing: the node's stream key holds another
    type, or its entry ids are used up); it stays a dead letter. The message says why."""


class RetryRefused(ExosphereError, ValueError):
    """StateManager.retry_state / retry_failed cannot re-run a state: it is still in flight,
    its run was cancelled, or its record cannot rebuild it (none kept, or its inputs were
    over the record's size cap). Nothing was written; the message says why."""


class SecretsError(ExosphereError, RuntimeError):
    """A graph's secrets cannot be decrypted. The message says why and what to do; it
    never contains a secret value."""


class StoreConflict(ExosphereError, TimeoutError):
    """RunStore.modify found another writer in between on every attempt."""


class StoreUnavailable(ExosphereError, RuntimeError):
    """`self.store` was used where there is no run store (a state enqueued without a graph,
    or a node instance not executed by a Runtime)."""


class MetricsPortError(ExosphereError, OSError):
    """The metrics port cannot be bound (in use, or not allowed)."""


class PrivateServerError(ExosphereError, RuntimeError):
    """exospherehost.testing's private redis-server cannot be found, started or restarted;
    the message says why (with the server's log tail when it ran)."""


class InputError(ExosphereError, ValueError):
    """An input value that cannot be decoded (its field named in the message)."""


class TimedOut(ExosphereError):
    """A node's execution passed its time limit (a retryable failure)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"timed out after {float(limit)} s")
        self.limit = limit


class ShutdownAbandoned(ExosphereError, RedisConnectionError):
    """A stopping worker gave up a Redis call: Redis stayed unreachable up to the stop
    deadline. Whatever it held stays pending in Redis, for another worker to reclaim."""
