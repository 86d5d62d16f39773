"""The coordinator: failover on timeout, hand-back without double processing, persistence, availability."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.edge.sim import T0, Fleet, SimAgent
from tidegauge._time import ManualClock
from tidegauge.edge.coordinator import Coordinator
from tidegauge.edge.heartbeat import Heartbeat, Resources
from tidegauge.edge.policy import DetectionPolicy
from tidegauge.edge.strategies import STRATEGIES, SensorInfo

SENSORS = [SensorInfo(f"s{i:03d}", (i % 90) - 45.0, (i * 7 % 360) - 180.0) for i in range(300)]


def fleet(strategy: str = "consistent_hash", store: Path | None = None, clock: ManualClock | None = None,
          **kw: object) -> Fleet:
    clock = clock or ManualClock(T0)
    c = Coordinator(strategy, heartbeat_timeout="5s", sensors=SENSORS, clock=clock, store=store, **kw)  # type: ignore[arg-type]
    agents = [SimAgent("a", (0.0, -90.0)), SimAgent("b", (0.0, 0.0)), SimAgent("c", (0.0, 90.0))]
    return Fleet(c, clock, agents)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_failover_and_hand_back_never_run_a_sensor_twice(strategy: str) -> None:
    f = fleet(strategy)
    f.run(10)
    assert sum(f.held().values()) == 300 and set(f.held()) == {"a", "b", "c"}
    before = {n: set(s) for n, s in f.processing().items()}
    f.agents["c"].alive = False  # killed: no more heartbeats, and it processes nothing
    f.run(7)  # > timeout (5s) + one interval to learn the new assignment
    after = f.processing()
    assert set(after) == {"a", "b"} and sum(map(len, after.values())) == 300
    assert before["a"] <= after["a"] and before["b"] <= after["b"]  # only c's sensors moved
    assert f.c.agents()[2]["status"] == "offline"
    f.agents["c"].restart()  # back, empty-handed
    f.run(10)
    assert sum(f.held().values()) == 300 and f.held()["c"] > 50  # handed back
    if strategy != "least_loaded":  # (its loads differ now) the full assignment again, as before the kill
        assert {n: set(s) for n, s in f.processing().items()} == before
    assert f.c.conflicts == 0
    assert f.c.reassignments >= 2 * len(before["c"]) - 1


def test_release_waits_for_the_old_owners_acknowledgement() -> None:
    f = fleet("round_robin", settle="0s")
    a = f.agents["a"]
    a.beat(f.c, f.clock.now_us())
    assert len(a.sensors) == 300  # alone: it gets everything
    b = f.agents["b"]
    b.beat(f.c, f.clock.now_us())
    assert b.sensors == []  # a still runs them all: nothing granted yet
    a.beat(f.c, f.clock.now_us())  # a learns it must drop 150
    assert len(a.sensors) == 150
    b.beat(f.c, f.clock.now_us())
    assert b.sensors == []  # a has not acknowledged yet
    a.beat(f.c, f.clock.now_us())  # acknowledges (generation + sensors)
    b.beat(f.c, f.clock.now_us())
    assert len(b.sensors) == 150 and not set(a.sensors) & set(b.sensors)


def test_a_lapsed_agent_that_returns_with_its_old_sensors_is_a_counted_conflict() -> None:
    f = fleet()
    f.run(8)
    c = f.agents["c"]
    old = list(c.sensors)
    c.alive = False
    f.run(8)
    c.sensors, c.lease_s = old, 0.0  # disobeys its lease: still claims the sensors
    c.beat(f.c, f.clock.now_us())
    assert f.c.conflicts == len(old) > 0
    assert not set(c.sensors) & set(old)  # it is not given them back while others hold them


def test_a_cold_start_grants_nothing_until_it_heard_from_every_agent() -> None:
    f = fleet()
    f.run(4)  # within the settle period (the 5 s timeout)
    assert sum(f.held().values()) == 0 and f.c.reassignments == 0
    f.run(4)
    assert sum(f.held().values()) == 300 and f.c.reassignments == 0  # no startup churn


def test_state_survives_a_coordinator_restart(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    f = fleet(store=tmp_path / "coord.db", clock=clock)
    f.run(10)
    before = f.processing()
    gens = {n: a.generation for n, a in f.agents.items()}
    f.c.close()
    f.c = Coordinator("consistent_hash", heartbeat_timeout="5s", sensors=SENSORS, clock=clock,
                      store=tmp_path / "coord.db")
    f.run(3)
    assert f.processing() == before  # nobody moved
    assert {n: a.generation for n, a in f.agents.items()} == gens
    assert all(r["availability"] == 1.0 for r in f.c.agents())
    # a coordinator that lost its state continues above the generations agents report
    f.c.close()
    f.c = Coordinator("consistent_hash", heartbeat_timeout="5s", sensors=SENSORS, clock=clock,
                      store=tmp_path / "fresh.db")
    f.run(5)
    assert f.c.conflicts == 0 and sum(f.held().values()) == 300
    assert all(a.generation > gens[n] for n, a in f.agents.items())


def test_a_long_upstream_outage_keeps_the_assignment(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    f = fleet(store=tmp_path / "coord.db", clock=clock)
    f.run(10)
    before, moves = f.processing(), f.c.reassignments
    f.c.close()
    clock.advance("30s")  # the upstream is down for 6 timeouts: the agents' leases lapse, they stop
    f.c = Coordinator("consistent_hash", heartbeat_timeout="5s", sensors=SENSORS, clock=clock,
                      store=tmp_path / "coord.db")
    f.run(1)
    assert all(r["status"] == "online" for r in f.c.agents())  # not declared offline for the outage
    assert f.processing() == before  # they resume the same sensors at once
    f.run(10)
    assert f.processing() == before and f.c.reassignments == moves and f.c.conflicts == 0


def test_availability_counts_from_the_last_heartbeat() -> None:
    f = fleet()
    f.run(60)  # 0..60 s all online
    f.agents["c"].alive = False  # last heartbeat at t = 59 s
    f.run(40)  # t = 100 s
    rows = {r["node_id"]: r for r in f.c.agents()}
    assert rows["a"]["availability"] == 1.0
    assert rows["c"]["availability"] == pytest.approx(59 / 100, abs=0.005)
    assert rows["c"]["status"] == "offline" and rows["c"]["sensors"] == 0
    f.agents["c"].restart()
    f.run(100)  # t = 200 s: offline 59..100
    rows = {r["node_id"]: r for r in f.c.agents()}
    assert rows["c"]["availability"] == pytest.approx(1 - 41 / 200, abs=0.005)


def test_edge_or_cloud_follows_health_and_capability() -> None:
    f = fleet(policy=DetectionPolicy(min_battery_pct=20))
    f.agents["b"].battery = 10.0
    f.run(10)
    rows = {r["node_id"]: r for r in f.c.agents()}
    assert rows["a"]["detection"] == "edge" and rows["b"]["detection"] == "cloud"
    assert "battery" in rows["b"]["detection_reason"]
    by_sensor = {r["sensor_id"]: r for r in f.c.assignments()}
    for s in f.agents["b"].sensors:
        assert by_sensor[s]["detection"] == "cloud" and f.c.detection(s) == "cloud"
    for s in f.agents["a"].sensors:
        assert by_sensor[s]["detection"] == "edge" and by_sensor[s]["state"] == "active"
    assert f.c.edge_sensors() == set(f.agents["a"].sensors) | set(f.agents["c"].sensors)
    a = f.agents["a"].beat(f.c, f.clock.now_us())
    assert set(a.detection.values()) == {"edge"} and a.lease_s == 5.0
    f.agents["a"].alive = False
    f.run(7)
    assert all(f.c.detection(s) == "cloud" for s in f.agents["a"].sensors if s not in f.c.edge_sensors())


def test_sensors_learned_from_heartbeats_and_readings() -> None:
    import polars as pl

    clock = ManualClock(T0)
    c = Coordinator("geo_proximity", heartbeat_timeout="5s", clock=clock)
    assert c.observe(pl.DataFrame({"sensor_id": ["x", "y", "x"], "latitude": [1.0, 2.0, 1.0],
                                   "longitude": [3.0, 4.0, 3.0]})) == 2
    assert c.catalog["y"].latitude == 2.0
    c.heartbeat(Heartbeat(node_id="gw", sent_at_us=T0, version="t", sensors=["z"], generation=0,
                          resources=Resources()))
    assert "z" in c.catalog and c.holder["z"] == "gw"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        Coordinator("nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        Coordinator(heartbeat_timeout="0s")


def test_a_heartbeat_overtaken_by_a_newer_one_is_ignored() -> None:
    f = fleet(settle="0s")
    f.run(6)
    a = f.agents["a"]
    now = f.clock.now_us()
    stale = Heartbeat(node_id="a", sent_at_us=now - 2_000_000, version="t", generation=a.generation - 1,
                      sensors=["s-never-seen"])
    got = f.c.heartbeat(stale)
    assert got.generation == a.generation and f.c.stale_heartbeats == 1
    assert "s-never-seen" not in f.c.catalog
    # a clock set back by more than the timeout is not "stale": the agent still counts as alive
    f.clock.advance("1s")
    back = Heartbeat(node_id="a", sent_at_us=now - 3_600_000_000, version="t", generation=a.generation,
                     sensors=a.sensors)
    f.c.heartbeat(back)
    assert f.c.stale_heartbeats == 1


def test_the_coordinators_own_stall_is_not_the_agents_silence() -> None:
    f = fleet()
    f.c.subscribe()
    f.run(8)
    moves, before = f.c.reassignments, f.processing()
    f.c.drain_records(1000)  # the heartbeat source polls...
    f.clock.advance("20s")  # ...then this process is held for 20 s (4 timeouts): nobody could heartbeat
    f.run(1)
    assert all(r["status"] == "online" for r in f.c.agents())
    assert f.c.reassignments == moves and f.processing() == before
    f.c.drain_records(1000)
    f.agents["c"].alive = False  # a real death after the stall still counts
    for _ in range(7):
        f.run(1)
        f.c.drain_records(1000)
    assert {r["node_id"]: r["status"] for r in f.c.agents()}["c"] == "offline"
