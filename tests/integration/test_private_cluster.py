"""exospherehost.testing.PrivateCluster: the private loopback Redis Cluster that cluster
tests (issue 14) run against. Three masters, every slot served, bus ports free."""

from __future__ import annotations

import pytest
import redis

from exospherehost.testing.cluster import SLOTS, PrivateCluster, cluster_ports, slot_ranges

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_slot_ranges_cover_every_slot_once() -> None:
    for masters in (1, 2, 3, 5):
        ranges = slot_ranges(masters)
        covered = [s for a, b in ranges for s in range(a, b + 1)]
        assert covered == list(range(SLOTS))


def test_ports_leave_room_for_the_bus() -> None:
    ports = cluster_ports(3)
    assert all(p < 55535 for p in ports)
    assert len({q for p in ports for q in (p, p + 10000)}) == 6


def test_a_three_master_cluster_serves_keys_on_every_master() -> None:
    with PrivateCluster(masters=3) as cluster:
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            primaries = {n.port for n in client.get_primaries()}
            assert primaries == {i.port for i in cluster.infos}
            owners = set()
            for tag in range(64):
                key = f"{{t{tag}}}k"
                client.set(key, tag)
                owners.add(client.get_node_from_key(key).port)
            assert owners == primaries, "some master holds no key: slots not spread"
        finally:
            client.close()
    assert all(s.info is None for s in cluster.servers) or not cluster.servers
