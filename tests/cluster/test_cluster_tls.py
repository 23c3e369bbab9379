"""Issue 14: TLS on a Redis Cluster. A private 3-master cluster whose nodes take TLS
clients with certificates (tls-auth-clients yes) and talk over a TLS bus (tls-cluster
yes): the SDK, given `rediss://` of one node with ssl_ca_certs / ssl_certfile /
ssl_keyfile, runs states and a fan-out graph of a namespace on another master and on
three lanes over every master; an untrusted server certificate fails at once.
Certificates are made with `cryptography` (as tests/integration/test_tls.py); skipped
only where the redis-server binary has no TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exospherehost import Runtime, StateManager
from exospherehost.broker.connection import ClusterAwareRedis
from exospherehost.errors import ConnectionSetupError, PrivateServerError
from exospherehost.testing.cluster import ClusterTLS, PrivateCluster
from tests.cluster.conftest import MASTERS, namespace_on
from tests.integration.apps.nodes import Label, SampleNode, Split, Square
from tests.integration.helpers import running, squares_graph
from tests.integration.test_tls import _issue

pytestmark = [pytest.mark.redis]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateCluster, Path]]:
    folder = tmp_path_factory.mktemp("cluster-tls")
    ca = _issue(folder, "ca", "exo test CA")
    _issue(folder, "server", "exo test server", ca)
    _issue(folder, "client", "exo test client", ca)
    _issue(folder, "rogue", "not the CA")
    files = ClusterTLS(
        str(folder / "server.crt"), str(folder / "server.key"), str(folder / "ca.crt")
    )
    cluster = PrivateCluster(masters=MASTERS, tls=files)
    try:
        cluster.start()
    except PrivateServerError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise
    try:
        yield cluster, folder
    finally:
        cluster.stop()


def _url(cluster: PrivateCluster, folder: Path, ca: str = "ca") -> str:
    return cluster.tls_url(
        0,
        ssl_ca_certs=str(folder / f"{ca}.crt"),
        ssl_certfile=str(folder / "client.crt"),
        ssl_keyfile=str(folder / "client.key"),
    )


async def test_the_sdk_runs_a_namespace_through_a_tls_cluster(
    tls_cluster: tuple[PrivateCluster, Path],
) -> None:
    cluster, folder = tls_cluster
    url = _url(cluster, folder)
    ns = namespace_on(1)  # served by master 1; the URL names master 0
    rt = Runtime(namespace=ns, name="tls", nodes=[SampleNode, Split, Square, Label], redis_url=url)
    async with StateManager(ns, redis_url=url) as sm:
        assert isinstance(sm.client, ClusterAwareRedis)
        cluster_client = await sm.client.decide()
        assert cluster_client is not None, "the TLS cluster was not detected"
        # Every master reached on its TLS port (a plain port would refuse the handshake).
        assert {n.port for n in cluster_client.get_primaries()} == set(cluster.tls_ports)
        await sm.set_lanes(MASTERS)
        async with running(rt):
            state = await sm.enqueue("SampleNode", {"name": "Alice", "data": {"k": 1}})
            done = await sm.wait_for_states("SampleNode", [state], timeout=10)
            assert done[state].status == "SUCCEEDED"
            await sm.upsert_graph("squares", squares_graph(ns, items=3), secrets={})
            runs = [await sm.trigger("squares", inputs={}) for _ in range(MASTERS)]
            for run in runs:  # round robin: one run per lane, the lanes on every master
                assert (await sm.wait(run, timeout=10)).status == "SUCCEEDED"
                assert sorted(r["outputs"]["square"] for r in await sm.results(run)) == [0, 1, 4]
        lanes = {sm.broker.keys.for_run(run).lane_base for run in runs}
        assert len(lanes) == MASTERS, lanes


async def test_an_untrusted_certificate_fails_fast_on_a_tls_cluster(
    tls_cluster: tuple[PrivateCluster, Path],
) -> None:
    cluster, folder = tls_cluster
    async with StateManager("tls", redis_url=_url(cluster, folder, ca="rogue")) as sm:
        with pytest.raises(ConnectionSetupError, match="TLS certificate is not trusted"):
            await sm.graph_names()
