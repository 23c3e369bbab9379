"""Issue 14: the README's per-namespace ACL rule on a Redis Cluster (with what the cluster
client needs besides) runs a graph in its namespace and is refused another by name."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse
from uuid import uuid4

import pytest
import redis as redis_py

from exospherehost import Runtime, StateManager
from exospherehost.broker.connection import acl_rule
from exospherehost.errors import PermissionRefused
from exospherehost.testing.cluster import PrivateCluster
from tests.cluster.conftest import namespace_on
from tests.integration.apps.nodes import Label, Split, Square
from tests.integration.helpers import running, squares_graph

pytestmark = [pytest.mark.redis]


@pytest.fixture
def user_on_every_node(cluster: PrivateCluster) -> Iterator[tuple[str, str, str]]:
    ns = namespace_on(2)
    user, password = f"u{uuid4().hex[:8]}", uuid4().hex
    rule = acl_rule(ns, cluster=True).split()
    admins = [redis_py.Redis.from_url(i.url) for i in cluster.infos]
    try:
        for admin in admins:  # ACLs are per node
            admin.acl_setuser(user, enabled=True, reset=True, passwords=[f"+{password}"])
            admin.execute_command("ACL", "SETUSER", user, *rule)  # type: ignore[no-untyped-call]
        yield ns, user, password
    finally:
        for admin in admins:
            admin.acl_deluser(user)
            admin.close()


async def test_the_minimal_rule_runs_its_namespace_on_a_cluster(
    cluster: PrivateCluster, user_on_every_node: tuple[str, str, str]
) -> None:
    ns, user, password = user_on_every_node
    at = urlparse(cluster.infos[0].url)
    url = f"redis://{user}:{password}@{at.hostname}:{at.port}/0"
    rt = Runtime(namespace=ns, name="acl", nodes=[Split, Square, Label], redis_url=url)
    async with running(rt), StateManager(ns, redis_url=url) as sm:
        await sm.upsert_graph("g", squares_graph(ns, items=3), secrets={})
        run = await sm.trigger("g", inputs={"base": 2})
        assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
        assert len(await sm.results(run)) == 3
    other = namespace_on(0)
    async with StateManager(other, redis_url=url) as sm:
        with pytest.raises(PermissionRefused, match=f"{user}.*{other}") as refused:
            await sm.graph_names()
    assert acl_rule(other, cluster=True) in str(refused.value)
