"""The edge endpoints of a served pipeline with a ``coordinator:`` section, and the section's validation."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.connectors.servers import require_promtool
from tests.server.helpers import TOKENS
from tidegauge.cli.serve import build_served_pipeline
from tidegauge.edge.heartbeat import Assignment, Heartbeat, Resources
from tidegauge.errors import ConfigError
from tidegauge.pipeline import load_pipeline
from tidegauge.server import build_app, hash_token

PIPELINE = f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os}}}}
steps:
  - cloud_only: {{}}
sink: {{file: out/cloud.parquet}}
checkpoint: {{dir: cp, interval: 100ms}}
coordinator:
  strategy: round_robin
  heartbeat_timeout: 2s
  settle: 0s
  sensors: {{simulator: {{sensors: 6, seed: 3}}}}
  heartbeats: {{file: out/heartbeats.jsonl}}
server:
  tokens:
    - {{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest]}}
    - {{name: ops, hash: "{hash_token(TOKENS['read'])}", scopes: [read]}}
"""

AGENT_FIELDS = {"node_id", "status", "last_seen", "availability", "location", "capacity", "labels", "load",
                "cpu_pct", "memory_pct", "disk_pct", "battery_pct", "outbox_depth", "outbox_age_s", "link",
                "version", "sensors", "generation"}


def test_heartbeat_agents_assignments_and_metrics(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    runner, config = build_served_pipeline(path)
    app = build_app(runner, config)
    ingest = {"authorization": f"Bearer {TOKENS['ingest']}"}
    read = {"authorization": f"Bearer {TOKENS['read']}"}

    async def beat(c: httpx.AsyncClient, node: str, gen: int, sensors: list[str]) -> Assignment:
        hb = Heartbeat(node_id=node, sent_at_us=0, version="t", generation=gen, sensors=sensors,
                       resources=Resources(cpu_pct=5.0, battery_pct=None), location=(1.0, 2.0))
        r = await c.post("/api/v1/edge/heartbeat", content=hb.encode(), headers=ingest)
        assert r.status_code == 200, r.text
        return _decode(r.content)

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg") as c:
            state = {"gw-1": (0, []), "gw-2": (0, [])}
            for _ in range(4):  # 1: gw-1 alone takes all; 2: gw-1 drops half; 3: acknowledged, gw-2 granted
                for node, (gen, sensors) in state.items():
                    a = await beat(c, node, gen, sensors)
                    state[node] = (a.generation, a.sensors)
            assert sorted(len(s) for _, s in state.values()) == [3, 3]
            agents = (await c.get("/api/v1/edge/agents", headers=read)).json()
            assert [a["node_id"] for a in agents] == ["gw-1", "gw-2"]
            assert AGENT_FIELDS <= set(agents[0]) and agents[0]["status"] == "online"
            assert agents[0]["sensors"] == 3 and agents[0]["location"] == [1.0, 2.0]
            rows = (await c.get("/api/v1/edge/assignments", headers=read)).json()
            assert len(rows) == 6 and {r["state"] for r in rows} == {"active"}
            assert {r["detection"] for r in rows} == {"edge"}
            one = (await c.get("/api/v1/edge/assignments", headers=read, params={"agent": "gw-1"})).json()
            assert {r["sensor_id"] for r in one} == set(state["gw-1"][1])
            metrics = (await c.get("/metrics", headers=read)).text
            assert 'tidegauge_edge_agents{state="online"} 2.0' in metrics
            assert 'tidegauge_edge_agent_availability{node_id="gw-1"}' in metrics
            assert "tidegauge_edge_reassignments_total" in metrics
            checked = subprocess.run([require_promtool(), "check", "metrics"], input=metrics, capture_output=True,
                                     text=True, check=False)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            # errors: bad token scope, bad body
            assert (await c.post("/api/v1/edge/heartbeat", content=b"{}", headers=read)).status_code == 403
            bad = await c.post("/api/v1/edge/heartbeat", content=b'{"node_id": 5}', headers=ingest)
            assert bad.status_code == 400 and "heartbeat" in bad.json()["error"]
            assert (await c.get("/api/v1/edge/agents")).status_code == 401
            spec = (await c.get("/openapi.json", headers=read)).json()
            assert {"/api/v1/edge/heartbeat", "/api/v1/edge/agents", "/api/v1/edge/assignments"} <= set(spec["paths"])
            beat_schema = spec["paths"]["/api/v1/edge/heartbeat"]["post"]["requestBody"]["content"]
            assert beat_schema["application/json"]["schema"]["$ref"].endswith("/Heartbeat")
            assert "node_id" in spec["components"]["schemas"]["Heartbeat"]["properties"]
            # the cloud_only step: readings of edge-detected sensors are not kept upstream
            edge_sensor = state["gw-1"][1][0]
            lines = "\n".join(f'{{"sensor_id":"{s}","timestamp":1767225600,"temperature":1}}'
                              for s in (edge_sensor, "not-on-any-agent"))
            while runner.flow.nodes["http"].definition.logic is None:  # 503 until the flow reads the source
                assert not task.done(), task.result()
                await asyncio.sleep(0.005)
            assert (await c.post("/api/v1/ingest", content=lines.encode(), headers=ingest)).status_code == 200
            await asyncio.sleep(0.5)
        runner.stop()
        await task

    asyncio.run(main())
    import polars as pl

    kept = pl.read_parquet(tmp_path / "out" / "cloud.parquet")
    assert kept["sensor_id"].to_list() == ["not-on-any-agent"]
    beats = pl.read_ndjson(tmp_path / "out" / "heartbeats.jsonl")
    assert beats.height >= 6 and set(beats["node_id"]) == {"gw-1", "gw-2"}


def _decode(data: bytes) -> Assignment:
    import msgspec

    return msgspec.json.decode(data, type=Assignment)


@pytest.mark.parametrize(("section", "message"), [
    ("{strategy: nearest}", "strategy"),
    ("{heartbeat_timeout: soon}", "heartbeat_timeout"),
    ("{sensors: {ids: [a], file: x.csv}}", "exactly one of simulator, file, ids"),
    ("{heartbeats: {nope: 1}}", "heartbeats"),
    ("{colour: blue}", "valid keys here"),
])
def test_bad_coordinator_sections_name_the_path(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"source: {{file: x.csv}}\ncoordinator: {section}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_pipeline(path)
    assert "coordinator" in str(err.value) and str(path) in str(err.value)


def test_cloud_only_needs_a_coordinator_and_a_coordinator_a_server(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("source: {file: x.csv}\nsteps: [{cloud_only: {}}]\n")
    with pytest.raises(ConfigError, match="coordinator"):
        load_pipeline(path)
    path.write_text("source: {file: x.csv}\ncoordinator: {}\n")
    with pytest.raises(ConfigError, match="needs a 'server:' section"):
        load_pipeline(path)


def test_from_readings_learns_the_fleet_in_a_pipeline(tmp_path: Path) -> None:
    from tidegauge.dataflow import Runner
    from tidegauge.pipeline import build_pipeline
    from tidegauge.simulate import FleetConfig
    from tidegauge.simulate.files import write_readings

    write_readings(tmp_path / "r.parquet", FleetConfig(sensors=12, rate=50.0, seed=4), rows=240)
    path = tmp_path / "p.yaml"
    path.write_text("source: {file: r.parquet}\nsink: {file: out.parquet}\n"
                    "coordinator: {strategy: geo_proximity, from_readings: true, store: null}\nserver: {}\n")
    built = build_pipeline(load_pipeline(path), base_dir=tmp_path)
    coordinator = built.coordinator
    runner = Runner(built.flow, max_delay="5ms")

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        for _ in range(500):  # the heartbeat source keeps a coordinator's flow running: stop it when done
            if len(coordinator.catalog) == 12:
                break
            await asyncio.sleep(0.01)
        runner.stop()
        await task

    asyncio.run(main())
    assert sorted(coordinator.catalog) == [f"sensor-{i:05d}" for i in range(12)]
    assert all(s.latitude is not None and s.longitude is not None for s in coordinator.catalog.values())
