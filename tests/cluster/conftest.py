"""A private 3-master Redis Cluster for the session (exospherehost.testing.PrivateCluster),
and namespaces whose `{ns}` slot is on a chosen master."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from redis.crc import key_slot

from exospherehost.testing.cluster import PrivateCluster, slot_ranges

MASTERS = 3


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster(masters=MASTERS) as running:
        yield running


@pytest.fixture
def cluster_url(cluster: PrivateCluster) -> str:
    return cluster.url


def namespace_on(master: int, prefix: str = "c") -> str:
    """A fresh namespace whose slot is served by master `master` (0-based, in the order
    PrivateCluster assigned the slot ranges)."""
    first, last = slot_ranges(MASTERS)[master]
    while True:
        ns = f"{prefix}{uuid4().hex[:10]}"
        if first <= key_slot(ns.encode()) <= last:
            return ns


@pytest.fixture
def spread() -> list[str]:
    """Three fresh namespaces, one per master."""
    return [namespace_on(m) for m in range(MASTERS)]
