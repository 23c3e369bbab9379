"""The lane rule (broker/keys.py), pure: lane tags land in evenly spaced slot ranges, so the
lanes of one namespace spread evenly over a cluster's masters; run ids and dead-letter ids
name their lane; one lane is the layout without lanes."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from exospherehost.broker.deadletters import dead_id, split_dead_id
from exospherehost.broker.keys import (
    LANE_WINDOW,
    MAX_LANES,
    SLOTS,
    KeyNameError,
    Keys,
    lane_count_problem,
    lane_tag,
    lane_tags,
    lane_target,
    run_lane,
    tag_slot,
)

NAMESPACES = [f"ns{i}" for i in range(60)] + ["MyProject", "a", "Z-9_.x"]
# How `redis-cli --cluster create` splits the slots over 3 masters.
MASTERS = [(0, 5460), (5461, 10922), (10923, 16383)]


def _slot(ns: str, tag: int) -> int:
    return tag_slot(ns if tag == 0 else f"{ns}/{tag}")


def _master(slot: int) -> int:
    return next(i for i, (lo, hi) in enumerate(MASTERS) if lo <= slot <= hi)


def test_tag_slot_is_redis_cluster_crc16() -> None:
    for text in ["a", "MyProject", "MyProject/17", "ns/123456", "x" * 300]:
        assert tag_slot(text) == key_slot(text.encode())
        # A key's slot is its tag's: every key of a lane is in that one slot.
        assert key_slot(f"exo:{{{text}}}:q:Node".encode()) == tag_slot(text)


@pytest.mark.parametrize("k", [2, 3, 5, 16])
def test_lane_l_of_k_lands_just_after_slot_ns_plus_l_sixteenths(k: int) -> None:
    for ns in NAMESPACES[::4]:
        tags = lane_tags(ns, k)
        assert tags[0] == 0 and len(set(tags)) == k
        for index, tag in enumerate(tags):
            target = (tag_slot(ns) + index * SLOTS // k) % SLOTS
            assert lane_target(ns, index, k) == target
            assert (_slot(ns, tag) - target) % SLOTS < LANE_WINDOW, (ns, k, index, tag)
            if index:  # the first tag number that does: the rule is the same for any client
                assert all((_slot(ns, n) - target) % SLOTS >= LANE_WINDOW for n in range(1, tag)), (
                    ns,
                    k,
                    index,
                )


def _shares(k: int, tag_of: object) -> tuple[float, float]:
    """(average, worst) over NAMESPACES of the busiest master's share of the k lanes."""
    busiest = []
    for ns in NAMESPACES:
        counts = [0, 0, 0]
        for index in range(k):
            counts[_master(tag_of(ns, index, k))] += 1  # type: ignore[operator]
        busiest.append(max(counts) / k)
    return sum(busiest) / len(busiest), max(busiest)


@pytest.mark.parametrize(("k", "ideal"), [(3, 1 / 3), (6, 1 / 3), (16, 6 / 16)])
def test_lanes_spread_evenly_over_three_masters(k: int, ideal: float) -> None:
    """Measured (63 namespaces): the busiest of 3 masters holds 1/3 of 3 and of 6 lanes and
    6/16 = 0.375 of 16 lanes, for every namespace (the best any split can do); CRC16 of
    consecutive suffixes `{ns:L}` gave it ~0.49 / 0.49 / 0.44 on average and 0.667 /
    0.667 / 0.625 at worst."""
    average, worst = _shares(k, lambda ns, i, k: _slot(ns, lane_tag(ns, i, k)))
    assert worst == pytest.approx(ideal), (k, average, worst)
    naive_average, naive_worst = _shares(k, lambda ns, i, k: tag_slot(f"{ns}:{i}"))
    assert naive_average > average + 0.05 and naive_worst > worst


def test_lane_counts_are_checked() -> None:
    assert lane_count_problem(1) is None and lane_count_problem(MAX_LANES) is None
    for bad in (0, -1, MAX_LANES + 1, 2.0, "4", True, None):
        assert lane_count_problem(bad) is not None, bad
    with pytest.raises(KeyNameError, match="lane count 0 is not valid"):
        lane_tags("ns", 0)
    with pytest.raises(KeyNameError, match="lane 4 does not exist with 4 lanes"):
        lane_tag("ns", 4, 4)


def test_one_lane_keeps_every_key_name_of_before_lanes() -> None:
    keys = Keys("MyProject")
    assert keys.lane == 0 and lane_tags("MyProject", 1) == [0]
    assert keys.queue("N") == "exo:{MyProject}:q:N"
    assert keys.delayed("N") == "exo:{MyProject}:delayed:N"
    assert keys.output("N") == "exo:{MyProject}:out:N"
    assert keys.dead() == "exo:{MyProject}:dead"
    assert keys.alive() == "exo:{MyProject}:alive"
    assert keys.events() == "exo:{MyProject}:events"
    assert keys.run("r") == "exo:{MyProject}:run:r"
    assert keys.run_store("r") == "exo:{MyProject}:run:r:store"
    assert keys.group("r", "u", "x") == "exo:{MyProject}:run:r:g:u:x"
    assert keys.runs("g") == "exo:{MyProject}:runs:g"
    assert keys.cron_marker("g", 5) == "exo:{MyProject}:cron:g:5"
    assert keys.new_run_id("0a1b") == "0a1b"


def test_a_lane_holds_per_state_keys_and_the_namespace_keeps_global_ones() -> None:
    lane = Keys("MyProject").on_lane(17)
    assert lane.lane == 17 and lane.on_lane(0).on_lane(17) is lane
    assert lane.queue("N") == "exo:{MyProject/17}:q:N"
    assert lane.delayed("N") == "exo:{MyProject/17}:delayed:N"
    assert lane.output("N") == "exo:{MyProject/17}:out:N"
    assert lane.dead() == "exo:{MyProject/17}:dead"
    assert lane.alive() == "exo:{MyProject/17}:alive"
    assert lane.events() == "exo:{MyProject/17}:events"
    assert lane.collected("r", "u", "x") == "exo:{MyProject/17}:run:r:g:u:x:c"
    assert lane.runs("g") == "exo:{MyProject/17}:runs:g"
    assert lane.cron_marker("g", 5) == "exo:{MyProject/17}:cron:g:5"
    # Namespace-global: the registry, graphs, secrets and the lane count.
    assert lane.nodes() == "exo:{MyProject}:nodes"
    assert lane.graphs() == "exo:{MyProject}:graphs"
    assert lane.graph("g", 3) == "exo:{MyProject}:graph:g:3"
    assert lane.secrets("g") == "exo:{MyProject}:secrets:g"
    assert lane.lanes() == "exo:{MyProject}:lanes"
    # A run's keys follow from its id alone.
    run = lane.new_run_id("0a1b")
    assert run == "0a1b.17" and run_lane(run) == 17
    assert Keys("MyProject").for_run(run).run(run) == "exo:{MyProject/17}:run:0a1b.17"
    assert lane.for_run("0a1b").run("0a1b") == "exo:{MyProject}:run:0a1b"
    with pytest.raises(KeyNameError, match="lane tag number -1"):
        Keys("MyProject", -1)


@pytest.mark.parametrize(
    ("run_id", "lane"),
    [("0a1b", 0), ("0a1b.17", 17), ("0a1b.0", 0), ("0a1b.017", 0), (".5", 0), ("a.b", 0)],
)
def test_the_lane_of_a_run_id(run_id: str, lane: int) -> None:
    assert run_lane(run_id) == lane


def test_dead_letter_ids_name_their_lane() -> None:
    assert dead_id(0, "1764600000000-0") == "1764600000000-0"
    assert dead_id(301, "1764600000000-0") == "1764600000000-0@301"
    assert split_dead_id("1764600000000-0@301") == (301, "1764600000000-0")
    assert split_dead_id("1764600000000-0") == (0, "1764600000000-0")


def test_the_lanes_hash_is_parsed_and_a_bad_count_named() -> None:
    from exospherehost.broker.streams import parse_lanes

    assert parse_lanes("ns", {}) == (1, [0], {0})
    four = lane_tags("ns", 4)
    raw = {b"count": b"4", **{f"tag:{t}".encode(): b"1" for t in four[1:]}, b"tag:77": b"1"}
    assert parse_lanes("ns", raw) == (4, four, {*four, 77})
    assert parse_lanes("ns", {b"count": b"2", b"tag:x": b"1", b"other": b"1"})[2] == {0}
    for bad in (b"0", b"257", b"-1", b"four", b"\xff"):
        with pytest.raises(ValueError, match=r"exo:\{ns\}:lanes field 'count': lane count"):
            parse_lanes("ns", {b"count": bad})
