"""History queries from the real PostgreSQL, checked against the DuckDB-over-Parquet backend on the same data.

One flow writes its readings and its windows both to Parquet (FileSink) and to PostgreSQL (PostgresSink);
two apps over the same runner answer the query endpoints, one per backend: the answers must be equal.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique
from tests.server.helpers import TOKENS, auth, server_config
from tidegauge.connectors.files import FileSink
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.connectors.postgres import PostgresSink
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.errors import ConfigError
from tidegauge.server import build_app
from tidegauge.server.config import HistoryConfig
from tidegauge.windows import Tumbling

pytestmark = pytest.mark.server

START = 1767225600  # 2026-01-01T00:00:00Z


def _lines() -> bytes:
    return b"".join(json.dumps({"sensor_id": f"S{i % 3}", "timestamp": START + i // 3,
                                "temperature": float(i % 17), "humidity": 40.0 + i % 5}).encode() + b"\n"
                    for i in range(180))  # 60 s of event time for 3 sensors


def _count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
            return 0
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        return int(row[0]) if row else 0


def test_query_endpoints_answer_the_same_from_postgresql_and_duckdb(tmp_path: Path) -> None:
    require("postgres")
    readings_t, windows_t = unique("hist_r"), unique("hist_w")
    source = HttpIngestSource(tmp_path / "intake", durability="os")
    flow = Flow("history")
    s = flow.source(source)
    s.sink(FileSink(tmp_path / "readings.parquet"), name="readings_file")
    s.sink(PostgresSink(readings_t, key=["sensor_id", "timestamp"], conninfo=POSTGRES_CONNINFO, create=True),
           name="readings_pg")
    w = s.window(Tumbling("10s"), {"temperature": ["count", "mean", "max"]})
    w.sink(FileSink(tmp_path / "windows.parquet"), name="windows_file")
    w.sink(PostgresSink(windows_t, key=["sensor_id", "window_start"], conninfo=POSTGRES_CONNINFO, create=True),
           name="windows_pg")
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="100ms"), max_delay="2ms",
                    tick="20ms")
    env = {"TG_TEST_ADMIN": TOKENS["admin"]}
    duck = build_app(runner, server_config(history=HistoryConfig(
        readings=str(tmp_path / "readings.parquet"), windows=str(tmp_path / "windows.parquet"))), environ=env)
    pg = build_app(runner, server_config(history=HistoryConfig(
        postgres=POSTGRES_CONNINFO, readings=readings_t, windows=windows_t)), environ=env)
    queries = [
        ("/api/v1/sensors", {}),
        ("/api/v1/sensors/S1/series", {}),
        ("/api/v1/sensors/S1/series", {"start": "2026-01-01T00:00:10Z", "end": "2026-01-01T00:00:20Z"}),
        ("/api/v1/sensors/S2/series", {"window": "15s", "agg": "mean", "field": "temperature"}),
        ("/api/v1/sensors/S0/series", {"window": "7s", "agg": "count", "field": "humidity"}),
        ("/api/v1/windows", {"sensor_id": "S1"}),
        ("/api/v1/windows", {"start": "2026-01-01T00:00:20Z", "limit": "100"}),
    ]

    async def main() -> list[tuple[Any, Any]]:
        task = asyncio.create_task(runner.run_async())
        try:
            while source.logic is None:
                await asyncio.sleep(0.005)
            answers = []
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=duck), base_url="http://tg") as d, \
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=pg), base_url="http://tg") as p:
                empty = (await p.get("/api/v1/windows", headers=auth("read"))).json()
                assert empty["rows"] == [] and "no windows history yet" in empty["note"]  # no table yet
                r = await d.post("/api/v1/ingest", content=_lines(),
                                 headers={**auth("ingest"), "content-type": "application/x-ndjson"})
                assert r.json()["accepted"] == 180
                for _ in range(1500):  # 5 closed windows per sensor; the one at 50 s stays open
                    if _count(POSTGRES_CONNINFO, readings_t) == 180 and _count(POSTGRES_CONNINFO, windows_t) == 15:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # the Parquet parts of the same checkpoint
                for path, params in queries:
                    a = (await d.get(path, params=params, headers=auth("read"))).json()
                    b = (await p.get(path, params=params, headers=auth("read"))).json()
                    answers.append((a, b))
                bad = await p.get("/api/v1/sensors/S1/series", params={"window": "10s", "field": "nope"},
                                  headers=auth("read"))
                assert bad.status_code == 400 and "query failed" in bad.json()["error"]
            return answers
        finally:
            runner.stop()
            await task
            with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
                for t in (readings_t, windows_t):
                    conn.execute(f'DROP TABLE IF EXISTS "{t}", "{t}__tg_pending"')

    answers = asyncio.run(main())
    for (path, params), (duck_answer, pg_answer) in zip(queries, answers, strict=True):
        assert "rows" in duck_answer and "rows" in pg_answer, (path, duck_answer, pg_answer)
        assert duck_answer["rows"], (path, params)
        # same rows (tied rows may come in either order)
        key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
        assert sorted(duck_answer["rows"], key=key) == sorted(pg_answer["rows"], key=key), (path, params)
    sensors = answers[0][1]["rows"]
    assert [(r["sensor_id"], r["last_seen"]) for r in sensors] == [
        ("S0", "2026-01-01T00:00:59Z"), ("S1", "2026-01-01T00:00:59Z"), ("S2", "2026-01-01T00:00:59Z")]
    assert [r["n"] for r in answers[4][1]["rows"]] == [7, 7, 7, 7, 7, 7, 7, 7, 4]  # 7 s buckets from the epoch


def test_history_postgres_needs_table_names() -> None:
    with pytest.raises(ConfigError, match=r"history\.readings"):
        HistoryConfig(postgres=POSTGRES_CONNINFO, readings="out/readings.parquet")
