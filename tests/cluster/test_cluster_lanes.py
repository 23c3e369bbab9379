"""Issue 14, both halves together: a namespace with 3 lanes on the private 3-master
cluster, driven through the SDK from one node's URL. Runs spread over the lanes, whose
tags sit on three different masters; every run completes with its fan-in once, nothing
is left pending on any lane, and the per-master work is shared."""

from __future__ import annotations

from collections import Counter

import pytest

from exospherehost import Runtime, StateManager, StoreConfigModel
from exospherehost.broker.keys import lane_tags, run_lane, tag_slot
from exospherehost.testing.cluster import PrivateCluster
from tests.cluster.conftest import MASTERS, namespace_on
from tests.cluster.test_cluster_quickstart import NODES, fan_in
from tests.integration.helpers import running

pytestmark = [pytest.mark.redis]

RUNS = 60


async def test_a_namespace_on_three_lanes_spreads_over_the_masters_and_completes(
    cluster: PrivateCluster,
) -> None:
    ns = namespace_on(0, prefix="l")
    url = cluster.infos[1].url
    tags = lane_tags(ns, MASTERS)
    owners = [cluster.owner(tag_slot(ns if t == 0 else f"{ns}/{t}")) for t in tags]
    assert sorted(owners) == list(range(MASTERS)), f"lane tags {tags} on masters {owners}"
    async with StateManager(ns, redis_url=url) as sm:
        await sm.set_lanes(MASTERS)
        rt = Runtime(namespace=ns, name="lanes", nodes=NODES, redis_url=url)
        async with running(rt):
            await sm.upsert_graph(
                "fan", fan_in(ns), secrets={}, store_config=StoreConfigModel(required_keys=["n"])
            )
            runs = [await sm.trigger("fan", store={"n": 4}) for _ in range(RUNS)]
            done = await sm.wait_all(runs, timeout=60)
            results = {r: await sm.results(r) for r in runs}
            pending = {n: await sm.pending(n) for n in ("Split", "Work", "Collect")}
    per_lane = Counter(run_lane(r) for r in runs)
    assert set(per_lane) == set(tags), per_lane
    assert min(per_lane.values()) >= RUNS // MASTERS - 1, per_lane  # round robin
    assert {s.status for s in done.values()} == {"SUCCEEDED"}
    for run, got in results.items():
        assert len(got) == 1 and sorted(got[0]["outputs"]["values"]) == [0, 1, 2, 3], run
    for node, counts in pending.items():
        assert counts == {"length": 0, "pending": 0, "delayed": 0}, (node, counts)
