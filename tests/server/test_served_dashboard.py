"""The dashboard of a served pipeline file (``server: {dashboard: ...}``): a real uvicorn server, the flow in its
own thread, the page, the session login and the live WebSocket with the pipeline's own data."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tests.net import free_port
from tests.server.helpers import TOKENS
from tidegauge.cli.serve import served_pipeline
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.errors import ConfigError
from tidegauge.pipeline import build_pipeline, load_pipeline
from tidegauge.server import hash_token, serve
from tidegauge.server.live import LiveState, LiveStep
from tidegauge.testing import MemorySink, MemorySource

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def pipeline_file(tmp: Path, server_extra: str = "", port: int = 0) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(f"""
name: plant
source: {{http: {{log_dir: intake, durability: os, schema: {{sensor_id: str, timestamp: timestamp,
          temperature: float, pressure: float, site: str}}}}}}
steps:
  - detect: {{type: zscore, fields: [temperature]}}
  - window: {{type: tumbling, size: 10s, aggregate: {{temperature: [count, mean]}}}}
sink: {{file: out/windows.parquet}}
dead_letter: {{file: out/dead.jsonl}}
checkpoint: {{dir: cp, interval: 200ms}}
server:
  port: {port}
  tokens:
    - {{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest]}}
    - {{name: ops, env: TG_OPS, scopes: [read]}}
{server_extra}""")
    return path


def readings(n: int, sensors: int = 3, start: int = T0) -> bytes:
    lines = [json.dumps({"sensor_id": f"pump-{i % sensors}", "timestamp": start + i // sensors,
                         "temperature": 20.0 + i % sensors, "pressure": 1.0, "site": "north"}) for i in range(n)]
    return ("\n".join([*lines, "{not json"]) + "\n").encode()


def test_a_served_pipeline_file_answers_the_page_and_the_live_websocket(tmp_path: Path) -> None:
    import websockets

    path = pipeline_file(tmp_path, port=free_port())
    loaded = load_pipeline(path)
    served = served_pipeline(path, loaded, build_pipeline(loaded, base_dir=tmp_path))
    assert served.live is not None and served.server.flow == "thread"
    nodes = served.runner.flow.nodes
    assert nodes["dashboard"].inputs[0][0].startswith("detect"), "fed with the scored readings"
    assert nodes["dashboard_windows"].inputs[0][0].startswith("window")
    port = served.server.port

    async def main() -> dict[str, Any]:
        started = asyncio.Event()
        task = asyncio.create_task(serve(served.runner, served.server, environ={"TG_OPS": TOKENS["read"]},
                                         live=served.live, started=started))
        await asyncio.wait_for(started.wait(), 60)
        got: dict[str, Any] = {"threads": [t.name for t in threading.enumerate()]}
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                page = await c.get("/")
                assert page.status_code == 200 and 'id="login-button"' in page.text
                assert (await c.get("/vendor/plotly.min.js")).status_code == 200
                for _ in range(600):  # 503 until the flow (starting in its thread) reads the source
                    r = await c.post("/api/v1/ingest", content=readings(300),
                                     headers={"authorization": f"Bearer {TOKENS['ingest']}"})
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(0.05)
                assert r.json()["accepted"] == 300, r.text
                assert (await c.post("/api/v1/session", json={"token": "wrong"})).status_code == 401
                login = await c.post("/api/v1/session", json={"token": TOKENS["read"]})
                assert login.status_code == 200, login.text
                cookie = f"tg_session={c.cookies['tg_session']}"
                async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/live/ws",
                                              additional_headers={"cookie": cookie}) as ws:
                    await ws.send(json.dumps({"watch": "pump-1"}))
                    for _ in range(120):  # pushed once a second: until the flow has caught up
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        got[msg["type"]] = msg
                        ready = got.get("overview", {}).get("totals", {}).get("readings") == 300
                        if ready and "sensor" in got and got["sensor"]["series"]["n"]:
                            break
                got["sensors"] = (await c.get("/api/v1/live/sensors")).json()  # the session cookie
                got["pipeline_page"] = got["overview"]["pipeline"]
                with pytest.raises(websockets.exceptions.InvalidStatus, match="403"):  # no session, no token
                    async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/live/ws"):
                        pass
        finally:
            served.runner.stop()
            await task
        return got

    got = asyncio.run(main())
    assert "tidegauge-flow" in got["threads"], "the flow ran in its own thread beside the dashboard"
    overview = got["overview"]
    assert overview["sensors"] == 3 and overview["totals"]["readings"] == 300
    assert sorted(got["sensors"]["ids"]) == ["pump-0", "pump-1", "pump-2"]
    sensor = got["sensor"]
    assert sensor["id"] == "pump-1" and sensor["last"]["temperature"] == 21.0
    assert set(sensor["series"]["fields"]) == {"temperature", "pressure"}, "numeric columns, not score or site"
    assert sum(sensor["series"]["n"]) == 100
    rows = {row["id"]: row for row in got["pipeline_page"]}
    assert rows["http"]["records_in"] == 301
    # the unparsable line: counted by the dashboard's dead-letter step, under the stage that rejected it
    assert rows["dead_letters"]["records_out"] == 1 and rows["http"]["dead_letters"] == 1, rows["http"]
    # latency: event time to the dashboard step on the wall clock; these readings are from 2026-01-01, older
    # than the histogram's top bound (100 s)
    assert served.live.run_latency() == (100_000.0, 100_000.0)


def test_dashboard_false_leaves_the_flow_and_the_server_as_the_file_says(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, "  dashboard: false\n")
    loaded = load_pipeline(path)
    served = served_pipeline(path, loaded, build_pipeline(loaded, base_dir=tmp_path))
    assert served.live is None
    assert not [n for n in served.runner.flow.nodes if n.startswith("dashboard")]


def test_dashboard_settings_and_their_errors(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, "  dashboard: {fields: [pressure], history: 2m}\n")
    loaded = load_pipeline(path)
    served = served_pipeline(path, loaded, build_pipeline(loaded, base_dir=tmp_path))
    assert served.live is not None and served.live.fields == ["pressure"] and served.live.history_s == 120
    for bad, message in (("{history: 5s}", r"dashboard.history='5s': keep at least 10s"),
                         ("{colour: red}", r"unknown field `colour`"),
                         ("{fields: []}", r"dashboard.fields: list at least one column"),
                         ("maybe", r"Expected `bool \| object`")):
        with pytest.raises(ConfigError, match=message):
            load_pipeline(pipeline_file(tmp_path, f"  dashboard: {bad}\n"))


def test_turning_the_dashboard_on_or_off_keeps_the_checkpoints(tmp_path: Path) -> None:
    """The live steps are not part of the checkpoint fingerprint: a restart with the dashboard toggled resumes."""
    data = pl.DataFrame({"sensor_id": ["a", "b"] * 50, "timestamp": [T0 * 1_000_000 + i for i in range(100)],
                         "v": 1.0}).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))

    def run(dashboard: bool, rows: int) -> Any:
        flow = Flow("f")
        readings = flow.source(MemorySource(data.head(rows), batch_rows=10))
        readings.sink(MemorySink(), name="out")
        if dashboard:
            readings.then(LiveStep(LiveState(None)), name="dashboard")
        return Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", every_batches=1)).run()

    run(True, 50)
    assert run(False, 100).restored_from is not None
    assert run(True, 100).restored_from is not None


def test_fields_are_found_in_the_first_batch() -> None:
    live = LiveState(None, history_s=60)
    data = pl.DataFrame({
        "device": ["a", "b"], "timestamp": [T0 * 1_000_000] * 2, "temperature": [20.5, 21.0], "count": [3, 4],
        "ok": [True, False], "site": ["n", "s"], "score": [0.1, 0.2], "latitude": [1.0, 2.0],
        "truth_anomaly": [0.0, 1.0], "pressure": [1.0, 1.1],
    }).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    flow = Flow("f", key="device")
    flow.source(MemorySource(data)).then(LiveStep(live), name="dashboard")
    Runner(flow).run()
    assert live.fields == ["temperature", "count", "pressure"]
    detail = live.sensor_detail(live.sensor_index("b") or 0)
    assert detail["last"] == {"temperature": 21.0, "count": 4.0, "pressure": 1.1}


def test_the_live_state_is_read_while_a_flow_thread_feeds_it(caplog: pytest.LogCaptureFixture) -> None:
    """The server's loop reads the state (as the live API does) while the flow writes it from its thread; the
    arrays grow under the readers' feet (64 -> 8,192 sensors)."""
    from tidegauge.server.live_api import LiveApi

    n, sensors = 40_000, 5_000
    data = pl.DataFrame({"sensor_id": [f"s{i % sensors:04d}" for i in range(n)],
                         "timestamp": [T0 * 1_000_000 + i * 1_000 for i in range(n)],
                         "temperature": [float(i % 7) for i in range(n)]}).with_columns(
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    live = LiveState(None, history_s=60)
    flow = Flow("f")
    flow.source(MemorySource(data, batch_rows=200)).then(LiveStep(live, latency="arrival"), name="dashboard")
    runner = Runner(flow, max_batch=200)
    api = LiveApi(live, runner, None)
    thread = threading.Thread(target=runner.run, name="tidegauge-flow")
    reads = 0
    with caplog.at_level("ERROR"):
        thread.start()
        while thread.is_alive() or reads == 0:
            api._cache = None  # every read computes a fresh snapshot
            overview = api.overview()
            assert len(overview["status"]) == overview["sensors"]
            ids = live.sensors()["ids"]
            if ids:
                detail = live.sensor_detail(live.sensor_index(ids[-1]) or 0)
                assert detail["id"] == ids[-1] and len(detail["series"]["t"]) == len(detail["series"]["n"])
            reads += 1
        thread.join()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert reads > 10, reads
    assert live.totals()["readings"] == n and len(live.names) == sensors


def test_tidegauge_run_with_a_server_section_serves_the_dashboard(tmp_path: Path) -> None:
    """``tidegauge run`` (not only ``serve``) attaches the live steps and mounts the page."""
    import os
    import signal
    import subprocess
    import sys

    from tests.dashboard.helpers import wait_for

    port = free_port()
    path = pipeline_file(tmp_path, port=port)
    log = tmp_path / "run.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "run", "--quiet", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "TG_OPS": TOKENS["read"]})
    base = f"http://127.0.0.1:{port}"
    read = {"authorization": f"Bearer {TOKENS['read']}"}
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120, every=0.2, what="tidegauge run to serve")
        assert 'id="login-button"' in httpx.get(base + "/").text
        wait_for(lambda: httpx.post(base + "/api/v1/ingest", content=readings(30),
                                    headers={"authorization": f"Bearer {TOKENS['ingest']}"}).status_code == 200,
                 timeout=60, what="the ingest to be accepted")
        ids = wait_for(lambda: httpx.get(base + "/api/v1/live/sensors", headers=read).json()["ids"], timeout=30,
                       what="the live sensors")
        assert sorted(ids) == ["pump-0", "pump-1", "pump-2"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
