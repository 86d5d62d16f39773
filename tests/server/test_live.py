"""LiveState fed by a real flow, and the dashboard's session login, cookie auth and live endpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import numpy as np
import polars as pl
import pytest

from tests.net import free_port
from tidegauge.connectors.simulator import SimulatorSource
from tidegauge.dataflow import Flow, Runner
from tidegauge.detectors import default_detector
from tidegauge.server import ServerConfig, TokenConfig, build_app
from tidegauge.server.live import LatencyStep, LiveState, LiveStep
from tidegauge.simulate import FleetConfig
from tidegauge.testing import MemorySink

FIELDS = ["temperature", "vibration", "power_consumption"]


def _fed(rows: int = 3000, sensors: int = 6) -> tuple[LiveState, pl.DataFrame, Runner]:
    live = LiveState(FIELDS, history_s=60)
    flow = Flow("live-test")
    fleet = FleetConfig(sensors=sensors, rate=1000.0, seed=3, anomaly_rate=0.2, start=datetime(2026, 1, 1, tzinfo=UTC))
    scored = flow.source(SimulatorSource(fleet, limit=rows)).detect(default_detector(fields=FIELDS)) \
        .then(LatencyStep(), name="latency")
    scored.then(LiveStep(live), name="live")
    out = MemorySink()
    scored.sink(out)
    runner = Runner(flow, max_batch=700)
    runner.run()
    return live, out.to_frame(), runner


def test_live_state_matches_the_readings_it_was_fed() -> None:
    live, df, _ = _fed()
    assert live.readings_total == df.height == 3000
    assert live.anomalies_total == int(df["is_anomaly"].sum())
    assert live.injected_total == int(df["truth_anomaly"].sum())
    assert live.true_positives == int((df["truth_anomaly"] & df["is_anomaly"]).sum())
    assert sorted(live.names) == sorted(df["sensor_id"].unique().to_list())
    # per-second buckets equal an independent polars group-by (mean of each field, count, anomalies)
    oracle = (df.group_by("sensor_id", pl.col("timestamp").dt.epoch("us") // 1_000_000)
              .agg(pl.len().alias("n"), pl.col("temperature").mean(), pl.col("is_anomaly").sum().alias("a"))
              .sort("sensor_id", "timestamp"))
    for sid in live.names:
        d = live.sensor_detail(live.names.index(sid))
        want = oracle.filter(pl.col("sensor_id") == sid)
        assert d["series"]["t"] == (want["timestamp"] * 1000).to_list()
        assert d["series"]["n"] == want["n"].to_list()
        assert d["series"]["anomalies"] == want["a"].to_list()
        np.testing.assert_allclose(d["series"]["fields"]["temperature"], want["temperature"].to_numpy(), rtol=1e-5)
        last = df.filter(pl.col("sensor_id") == sid).tail(1)
        assert d["last"]["temperature"] == pytest.approx(last["temperature"].item())
        assert d["latitude"] == pytest.approx(last["latitude"].item(), abs=1e-5)
        assert d["anomalies_total"] == int(df.filter(pl.col("sensor_id") == sid)["is_anomaly"].sum())
    assert sum(live.status_counts().values()) == len(live.names)


def test_sensor_status_follows_reported_status_and_recent_anomalies() -> None:
    live, df, _ = _fed()
    codes = live.statuses(now_us=int(df["timestamp"].max().timestamp() * 1e6))  # type: ignore[union-attr]
    last = df.group_by("sensor_id").agg(pl.all().last())
    for sid, status, score in last.select("sensor_id", "operational_status", "score").iter_rows():
        i = live.names.index(sid)
        flagged = df.filter((pl.col("sensor_id") == sid) & pl.col("is_anomaly"))
        recent = flagged.height and (df["timestamp"].max() - flagged["timestamp"].max()).total_seconds() <= 30
        expected = 2 if recent or status == "alert" else 1 if status == "warning" or score >= 0.999 else 0
        assert codes[i] == expected, (sid, status, score)
    # long after the last anomaly, only the reported status counts
    later = live.statuses(now_us=int(df["timestamp"].max().timestamp() * 1e6) + 3_600_000_000)  # type: ignore[union-attr]
    assert all(later[live.names.index(s)] == (2 if st == "alert" else later[live.names.index(s)])
               for s, st in last.select("sensor_id", "operational_status").iter_rows())


@asynccontextmanager
async def _server(fed: tuple[LiveState, pl.DataFrame, Runner]) -> AsyncIterator[tuple[str, LiveState]]:
    """The app on a real uvicorn server on a free port (WebSockets included), in this event loop."""
    import uvicorn

    live, _, runner = fed
    config = ServerConfig(tokens=[TokenConfig("ops", ["read", "admin"], env="TG_LIVE_TOKEN"),
                                  TokenConfig("ingester", ["ingest"], env="TG_LIVE_INGEST")])
    app = build_app(runner, config, environ={"TG_LIVE_TOKEN": "s3cret-ops", "TG_LIVE_INGEST": "s3cret-in"},
                    live=live)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", live
    finally:
        server.should_exit = True
        await task


def test_login_sets_an_httponly_session_cookie_that_authenticates() -> None:
    fed = _fed(rows=1000)

    async def main() -> None:
        async with _server(fed) as (url, live), httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/api/v1/live/overview")).status_code == 401
            assert (await client.get("/api/v1/session")).status_code == 401
            assert (await client.post("/api/v1/session", json={"token": "wrong"})).status_code == 401
            assert (await client.post("/api/v1/session", content=b"not json")).status_code == 400
            r = await client.post("/api/v1/session", json={"token": "s3cret-ops"})
            assert r.status_code == 200 and r.json() == {"name": "ops", "scopes": ["admin", "read"]}
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
            assert "s3cret-ops" not in cookie and "s3cret-ops" not in r.text
            assert (await client.get("/api/v1/session")).json()["name"] == "ops"
            overview = (await client.get("/api/v1/live/overview")).json()
            assert overview["sensors"] == len(live.names) and len(overview["status"]) == len(live.names)
            assert overview["totals"]["readings"] == 1000
            assert {row["id"] for row in overview["pipeline"]} >= {"latency", "live"}
            assert (await client.get("/api/v1/live/sensors")).json()["ids"] == live.names
            assert (await client.get(f"/api/v1/live/sensors/{live.names[0]}")).json()["id"] == live.names[0]
            assert (await client.get("/api/v1/live/sensors/nope")).status_code == 404
            # a cookie-authenticated write from another origin is refused
            host = url.removeprefix("http://")
            assert (await client.delete("/api/v1/session", headers={"origin": "http://evil.example"})).status_code \
                == 403
            assert (await client.delete("/api/v1/session", headers={"origin": f"http://{host}"})).status_code == 200
            client.cookies.clear()
            assert (await client.get("/api/v1/live/overview")).status_code == 401
            # an ingest token logs in but cannot read
            await client.post("/api/v1/session", json={"token": "s3cret-in"})
            assert (await client.get("/api/v1/live/overview")).status_code == 403

    asyncio.run(main())


def test_the_websocket_pushes_live_data_to_a_session_and_refuses_others() -> None:
    import websockets

    fed = _fed(rows=1000)

    async def main() -> None:
        async with _server(fed) as (url, live), httpx.AsyncClient(base_url=url) as client:
            r = await client.post("/api/v1/session", json={"token": "s3cret-ops"})
            sid = r.cookies["tg_session"]
            ws_url = url.replace("http://", "ws://") + "/api/v1/live/ws"
            async with websockets.connect(ws_url, additional_headers={"Cookie": f"tg_session={sid}"}) as ws:
                first = json.loads(await ws.recv())
                assert first["type"] == "overview" and first["totals"]["readings"] == 1000
                await ws.send(json.dumps({"watch": live.names[1]}))
                seen = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
                assert any(m["type"] == "sensor" and m["id"] == live.names[1] for m in seen)
            with pytest.raises(websockets.exceptions.InvalidStatus):
                async with websockets.connect(ws_url) as ws:
                    await ws.recv()

    asyncio.run(main())


def test_dashboard_and_plotly_are_served_from_the_package() -> None:
    fed = _fed(rows=1000)

    async def main() -> None:
        async with _server(fed) as (url, _), httpx.AsyncClient(base_url=url) as client:
            page = await client.get("/")
            assert page.status_code == 200 and "/vendor/plotly.min.js" in page.text
            assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
            js = await client.get("/vendor/plotly.min.js")
            assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
            app_js = await client.get("/static/app.js")
            assert app_js.status_code == 200 and "https://" not in app_js.text

    asyncio.run(main())
