"""Heartbeat records into the upstream flow, and the default edge alert rules firing from them."""

from __future__ import annotations

import asyncio

import polars as pl

from tests.edge.sim import T0, Fleet, SimAgent
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertManager, default_config
from tidegauge.dataflow import Flow, Runner
from tidegauge.edge.coordinator import Coordinator
from tidegauge.edge.flow import HEARTBEAT_SCHEMA, EdgeHeartbeatSource, heartbeat_frame
from tidegauge.edge.strategies import SensorInfo
from tidegauge.testing import MemorySink, MemorySource


def _firing(m: AlertManager) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a in m.list_alerts(state="firing"):
        out.setdefault(a.rule, set()).add(a.labels.get("node_id", ""))
    return out


def test_default_edge_rules_fire_from_the_coordinators_records() -> None:
    clock = ManualClock(T0)
    c = Coordinator(heartbeat_timeout="10s", sensors=[SensorInfo(f"s{i}") for i in range(30)], clock=clock)
    c.subscribe()
    m = AlertManager(default_config(), clock=clock, key_column="node_id")
    flaky, low, steady = SimAgent("flaky"), SimAgent("low", battery=12.0), SimAgent("steady", battery=80.0)
    f = Fleet(c, clock, [flaky, low, steady])

    def feed() -> None:
        df = heartbeat_frame(c.drain_records(10_000))
        assert df.schema == pl.Schema(HEARTBEAT_SCHEMA)
        m.evaluate(df) if df.height else m.tick()

    # flaky is up 20 s, down 150 s, in turns: availability drifts well under 0.8
    for _ in range(4):
        flaky.alive = True
        for _ in range(20):
            f.run(1)
            feed()
        flaky.alive = False
        for _ in range(150):
            f.run(1)
            feed()
    firing = _firing(m)
    assert firing.get("EdgeBatteryLow") == {"low"}
    assert firing.get("EdgeAvailabilityLow") == {"flaky"}
    assert firing.get("EdgeNodeOffline") == {"flaky"}  # silent for 150 s > 2 m
    assert c.conflicts == 0
    rows = {r["node_id"]: r for r in c.agents()}
    assert rows["flaky"]["availability"] < 0.8 and rows["steady"]["availability"] == 1.0


def test_offline_records_carry_no_heartbeat_flag() -> None:
    clock = ManualClock(T0)
    c = Coordinator(heartbeat_timeout="5s", clock=clock)
    c.subscribe()
    f = Fleet(c, clock, [SimAgent("gw", battery=50.0)])
    f.run(3)
    f.agents["gw"].alive = False
    f.run(10)
    df = heartbeat_frame(c.drain_records(100))
    assert df["heartbeat"].to_list() == [True, True, True, False]
    last = df.row(-1, named=True)
    assert last["status"] == "offline" and last["battery_pct"] is None
    assert last["availability"] < 1.0 and last["node_id"] == "gw"


def test_heartbeat_source_in_a_running_flow() -> None:
    c = Coordinator(heartbeat_timeout="5s")
    flow = Flow("edge")
    out = MemorySink()
    flow.source(EdgeHeartbeatSource(c), key="node_id").sink(out, name="out")
    runner = Runner(flow, max_delay="5ms", tick="20ms")

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        await asyncio.sleep(0.2)
        for _ in range(3):
            SimAgent("gw").beat(c, c.registry.now_us())
        for _ in range(200):
            if sum(df.height for df in out.frames) >= 3:
                break
            await asyncio.sleep(0.01)
        runner.stop()
        await task

    asyncio.run(main())
    got = pl.concat([df for df in out.frames if df.height])
    assert got["node_id"].to_list() == ["gw"] * 3 and got["heartbeat"].all()


def test_sensor_discovery_and_cloud_only_steps_in_a_flow() -> None:
    from tidegauge.edge.flow import CloudOnlyStep, SensorDiscoveryStep
    from tidegauge.simulate import FleetConfig, FleetSimulator

    clock = ManualClock(T0)
    c = Coordinator("geo_proximity", heartbeat_timeout="5s", clock=clock, settle="0s")
    readings = FleetSimulator(FleetConfig(sensors=20, seed=2)).next_batch(200)
    # first pass: the flow discovers the fleet (with coordinates); no agent yet, so everything is cloud
    flow = Flow("up")
    out = MemorySink()
    flow.source(MemorySource(readings, batch_rows=50)).then(SensorDiscoveryStep(c)).then(CloudOnlyStep(c)).sink(out)
    flow.run()
    assert len(c.catalog) == 20 and all(s.latitude is not None for s in c.catalog.values())
    assert sum(df.height for df in out.frames) == 200
    # an agent takes every sensor: the cloud side keeps nothing of them any more
    f = Fleet(c, clock, [SimAgent("gw", location=(0.0, 0.0))])
    f.run(3)
    assert len(f.agents["gw"].sensors) == 20
    flow2 = Flow("up2")
    out2 = MemorySink()
    flow2.source(MemorySource(readings)).then(CloudOnlyStep(c)).sink(out2)
    flow2.run()
    assert sum(df.height for df in out2.frames) == 0
