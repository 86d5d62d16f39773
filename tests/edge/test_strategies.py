"""Assignment strategies: each assigns as documented, respects capacity, and consistent_hash moves few sensors."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tidegauge.edge.strategies import STRATEGIES, AgentInfo, SensorInfo, assign, haversine_km

SENSORS = [SensorInfo(f"sensor-{i:05d}", random.Random(i).uniform(-60, 60), random.Random(-i).uniform(-170, 170))
           for i in range(300)]
AGENTS = [AgentInfo("gw-a", location=(40.0, -100.0)), AgentInfo("gw-b", location=(50.0, 10.0)),
          AgentInfo("gw-c", location=(-30.0, 140.0))]


def test_round_robin_deals_sorted_sensors_in_turn() -> None:
    got = assign("round_robin", list(reversed(SENSORS)), AGENTS)
    ids = sorted(s.sensor_id for s in SENSORS)
    assert [got[s] for s in ids[:6]] == ["gw-a", "gw-b", "gw-c", "gw-a", "gw-b", "gw-c"]
    assert Counter(got.values()) == {"gw-a": 100, "gw-b": 100, "gw-c": 100}


def test_least_loaded_gives_fewer_sensors_to_an_agent_busy_with_other_work() -> None:
    # a and b each process 100 sensors at 1 reading/s; c processes the same but reports 300/s more load
    agents = [AgentInfo("gw-a", load=100.0, sensors=100), AgentInfo("gw-b", load=100.0, sensors=100),
              AgentInfo("gw-c", load=400.0, sensors=100)]
    counts = Counter(assign("least_loaded", SENSORS, agents).values())
    # per-sensor rate = 600/300 = 2/s; c's background = 400 - 200 = 200/s = 100 sensors' worth
    assert counts["gw-c"] < counts["gw-a"] and abs(counts["gw-a"] - counts["gw-b"]) <= 1
    assert sum(counts.values()) == 300
    # projected loads end up level (within one sensor's rate)
    loads = {"gw-a": 2 * counts["gw-a"], "gw-b": 2 * counts["gw-b"], "gw-c": 200 + 2 * counts["gw-c"]}
    assert max(loads.values()) - min(loads.values()) <= 2
    # by capacity: an agent twice the capacity gets twice the sensors when nobody is loaded
    by_cap = Counter(assign("least_loaded", SENSORS, [AgentInfo("x", capacity=2000), AgentInfo("y")]).values())
    assert by_cap == {"x": 200, "y": 100}


def test_geo_proximity_picks_the_nearest_agent() -> None:
    got = assign("geo_proximity", SENSORS, AGENTS)
    alat = np.array([a.location[0] for a in AGENTS if a.location])
    alon = np.array([a.location[1] for a in AGENTS if a.location])
    for s in SENSORS:
        d = haversine_km(s.latitude, s.longitude, alat, alon)
        assert got[s.sensor_id] == AGENTS[int(np.argmin(d))].node_id
    # capacity binds: the nearest ones keep the agent, the rest go to their next nearest
    small = [AgentInfo(a.node_id, capacity=110, location=a.location) for a in AGENTS]
    capped = assign("geo_proximity", SENSORS, small)
    assert len(capped) == 300 and max(Counter(capped.values()).values()) <= 110
    # sensors without coordinates are still placed (on the hash ring)
    mixed = assign("geo_proximity", [*SENSORS[:10], SensorInfo("nowhere")], AGENTS)
    assert "nowhere" in mixed


def test_haversine_matches_known_distances() -> None:
    assert haversine_km(0, 0, 0, 180) == pytest.approx(np.pi * 6371.0088)
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3936, rel=0.01)  # NYC-LA


def test_consistent_hash_moves_only_the_sensors_it_must() -> None:
    sensors = [SensorInfo(f"s{i}") for i in range(3000)]
    big = [AgentInfo(n, capacity=10_000) for n in ("gw-a", "gw-b", "gw-c", "gw-d")]
    three = assign("consistent_hash", sensors, big[:3])
    counts = Counter(three.values())
    assert min(counts.values()) > 600  # balanced enough with 160 points per agent (mean 1000)
    two = assign("consistent_hash", sensors, big[:2])
    moved = {s for s in three if three[s] != two[s]}
    assert moved == {s for s, a in three.items() if a == "gw-c"}  # leaving: only the leaver's sensors move
    four = assign("consistent_hash", sensors, big)
    moved_join = {s for s in three if three[s] != four[s]}
    assert all(four[s] == "gw-d" for s in moved_join)  # joining: sensors only move to the newcomer
    assert len(moved_join) < 0.4 * len(sensors)  # about 1/4
    # round robin, for contrast, reshuffles most sensors when an agent leaves
    rr3, rr2 = assign("round_robin", sensors, big[:3]), assign("round_robin", sensors, big[:2])
    assert sum(rr3[s] != rr2[s] for s in rr3) > 0.5 * len(sensors)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_respects_capacity_and_is_deterministic(strategy: str) -> None:
    small = [AgentInfo(a.node_id, capacity=90, location=a.location) for a in AGENTS]
    got = assign(strategy, SENSORS, small)  # type: ignore[arg-type]
    assert len(got) == 270 and max(Counter(got.values()).values()) <= 90
    assert assign(strategy, list(reversed(SENSORS)), list(reversed(small))) == got  # type: ignore[arg-type]
    assert assign(strategy, SENSORS, []) == {}  # type: ignore[arg-type]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        assign("random", SENSORS, AGENTS)  # type: ignore[arg-type]
