"""Namespaces whose `{ns}` slot is on a chosen master of the session's private cluster.
The `cluster` fixture itself is in tests/conftest.py, where the integration modules
marked `cluster_too` share it."""

from __future__ import annotations

from exospherehost.testing.cluster import namespace_on as _namespace_on

MASTERS = 3


def namespace_on(master: int, prefix: str = "c") -> str:
    """A fresh namespace whose slot is served by master `master` (0-based, in the order
    PrivateCluster assigned the slot ranges)."""
    return _namespace_on(master, MASTERS, prefix)
