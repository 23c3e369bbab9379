"""The root of the SDK's error tree, and the broker's own errors.

The root lives here, not in exospherehost.errors, because the broker imports nothing of the
SDK while its errors belong to the tree too. exospherehost.errors draws the whole tree and
re-exports these. Each error also keeps the builtin (or redis-py) base it always had, so
`except ValueError` / `except ResponseError` in existing code still catches it.
"""

from __future__ import annotations

from redis.exceptions import NoPermissionError, ResponseError


class ExosphereError(Exception):
    """Root of every error the SDK raises on purpose: `except ExosphereError` catches them
    all. Node signals (PruneSignal, ReQueueAfterSignal) are not errors and not under it."""


class InvalidArgument(ExosphereError, ValueError):
    """A value a public constructor or method cannot use; the message names the parameter
    (or key) and the value."""


class KeyNameError(InvalidArgument):
    """A name that cannot go into a Redis key name (namespace, node, graph, identifier, run
    id); the message names it and the allowed characters."""


class MalformedEntry(ExosphereError, ValueError):
    """An entry that cannot be decoded; the message says why (it goes to the dead letters)."""


class CorruptRecord(ExosphereError, ValueError):
    """A record in Redis holds what the SDK never writes there (a counter that is not an
    integer, bytes that are not UTF-8: written by hand or by a foreign client); the message
    names the key and the field."""


class KeyRefused(ExosphereError, ResponseError):
    """A call checked the keys it would write and wrote nothing: one holds another type
    (a foreign client's), or a stream has used up its entry ids. The message names it."""


class ConnectionSetupError(ExosphereError, ValueError):
    """Redis refused this client's credentials (wrong password, unknown or disabled ACL
    user), TLS could not be set up (certificate not trusted, handshake refused, a
    certificate file missing), or the cluster mode was forced on a server that has none:
    retrying cannot help, the configuration must change. The message says which. Raised
    instead of retrying the connection as an outage."""


class PermissionRefused(ExosphereError, NoPermissionError):
    """The Redis ACL user may not run a command or touch a key: the message names the
    user, the namespace and the grant the user needs (`except NoPermissionError` still
    catches it)."""
