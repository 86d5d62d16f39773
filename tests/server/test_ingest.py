from __future__ import annotations

import asyncio
import json
from pathlib import Path

import polars as pl

from tests.server.helpers import auth, harness
from tidegauge.server import RateLimitConfig

GOOD = b'{"sensor_id":"S1","timestamp":"2026-01-01T00:00:00Z","temperature":21.5}'
GOOD2 = b'{"sensor_id":"S2","timestamp":1767225601.5,"humidity":40}'


def test_ndjson_and_array_accepted_and_processed(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            r = await h.client.post("/api/v1/ingest", content=GOOD + b"\n" + GOOD2 + b"\n",
                                    headers={**auth("ingest"), "content-type": "application/x-ndjson"})
            assert r.status_code == 200, r.text
            assert r.json() == {"accepted": 2, "rejected": []}
            r = await h.client.post("/api/v1/ingest", content=b"[" + GOOD + b",\n " + GOOD2 + b"]",
                                    headers={**auth("ingest"), "content-type": "application/json"})
            assert r.json() == {"accepted": 2, "rejected": []}
            await h.drained()
            df = h.out.to_frame()
            assert df.height == 4
            assert df.schema["timestamp"] == pl.Datetime("us", "UTC")
            assert sorted(df["sensor_id"].to_list()) == ["S1", "S1", "S2", "S2"]
            assert df.filter(pl.col("sensor_id") == "S2")["timestamp"].dt.epoch("us").to_list() == [
                1767225601500000] * 2

    asyncio.run(main())


def test_partial_rejects_are_dead_lettered_and_valid_kept(tmp_path: Path) -> None:
    body = b"\n".join([GOOD, b"{not json", b'{"sensor_id":"S3","timestamp":"2026-01-01T00:00:00"}',
                       b'{"sensor_id":"S4","timestamp":"2026-01-01T00:00:00Z","temperature":"hot"}', GOOD2])
    async def main() -> None:
        async with harness(tmp_path) as h:
            r = await h.client.post("/api/v1/ingest", content=body, headers=auth("ingest"))
            assert r.status_code == 200
            answer = r.json()
            assert answer["accepted"] == 2
            assert [x["index"] for x in answer["rejected"]] == [1, 2, 3]
            assert answer["rejected"][0]["reason"].startswith("malformed:")
            assert "timezone" in answer["rejected"][1]["reason"]
            await h.drained()
            assert h.out.to_frame().height == 2
            dead = h.dead.to_frame()
            assert dead.height == 3
            assert dead["payload"].to_list()[0] == "{not json"

    asyncio.run(main())


def test_auth_scopes_and_device_sensors(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            assert (await h.client.post("/api/v1/ingest", content=GOOD)).status_code == 401
            bad = {"authorization": "Bearer nope"}
            assert (await h.client.post("/api/v1/ingest", content=GOOD, headers=bad)).status_code == 401
            assert (await h.client.post("/api/v1/ingest", content=GOOD, headers=auth("read"))).status_code == 403
            assert (await h.client.post("/api/v1/ingest", content=GOOD, headers=auth("admin"))).status_code == 200
            assert (await h.client.get("/metrics")).status_code == 401
            assert (await h.client.get("/metrics", headers=auth("read"))).status_code == 200
            assert (await h.client.get("/healthz")).status_code == 200
            own = b'{"sensor_id":"S7","timestamp":"2026-01-01T00:00:00Z"}'
            r = await h.client.post("/api/v1/ingest", content=own + b"\n" + GOOD, headers=auth("device"))
            assert r.json()["accepted"] == 1
            assert r.json()["rejected"][0]["reason"].startswith("forbidden:")
            await h.drained()
            assert h.dead.to_frame().height == 1

    asyncio.run(main())


def test_limits_413_429_503(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path, max_body_bytes=200, rate_limit=RateLimitConfig(0.001, 3)) as h:
            r = await h.client.post("/api/v1/ingest", content=GOOD * 5, headers=auth("ingest"))
            assert r.status_code == 413
            for _ in range(2):
                assert (await h.client.post("/api/v1/ingest", content=GOOD, headers=auth("ingest"))).status_code == 200
            r = await h.client.post("/api/v1/ingest", content=GOOD, headers=auth("ingest"))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        async with harness(tmp_path / "b", max_lag_bytes=1) as h:
            h.runner.stop()  # the flow stops reading: the server must refuse instead of buffering
            while not h.source.logic or not h.source.logic.closed:
                await asyncio.sleep(0.005)
            r = await h.client.post("/api/v1/ingest", content=GOOD, headers=auth("ingest"))
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            ready = await h.client.get("/readyz", headers=auth("read"))
            assert ready.status_code == 503 and ready.json()["reasons"]

    asyncio.run(main())


def test_metrics_exposes_flow_and_server_counters(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path, open_metrics=True) as h:
            await h.client.post("/api/v1/ingest", content=GOOD + b"\nxx", headers=auth("ingest"))
            await h.drained()
            text = (await h.client.get("/metrics")).text
            assert 'tidegauge_records_in_total{step="http"} 2.0' in text
            assert 'tidegauge_dead_letters_total{reason="malformed"} 1.0' in text
            assert 'tidegauge_ingest_rejected_records_total{reason="malformed"} 1.0' in text
            assert "tidegauge_connector_up" in text
            ready = await h.client.get("/readyz", headers=auth("read"))
            assert ready.status_code == 200, ready.text
            spec = (await h.client.get("/openapi.json", headers=auth("read"))).json()
            assert "/api/v1/ingest" in spec["paths"]
            json.dumps(spec)

    asyncio.run(main())
