"""A real uvicorn server on a loopback port: NDJSON over HTTP, WebSocket ingest, promtool on /metrics."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.connectors.servers import require_promtool
from tests.net import free_port
from tests.server.helpers import TOKENS, server_config
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.server import serve
from tidegauge.testing import MemorySink

GOOD = b'{"sensor_id":"S1","timestamp":"2026-01-01T00:00:00Z","temperature":21.5}'


async def _with_server(tmp: Path, body: object) -> tuple[object, MemorySink, MemorySink]:
    source = HttpIngestSource(tmp / "intake")
    flow = Flow("live")
    out, dead = MemorySink(), MemorySink()
    flow.source(source).sink(out, name="out")
    flow.dead_letters().sink(dead, name="dead")
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp / "cp", interval="100ms"), max_delay="2ms", tick="20ms")
    port = free_port()
    config = server_config(port=port, access_log=True)
    started = asyncio.Event()
    task = asyncio.create_task(serve(runner, config, environ={"TG_TEST_ADMIN": TOKENS["admin"]}, started=started))
    await asyncio.wait_for(started.wait(), 30)
    try:
        result = await body(f"127.0.0.1:{port}", runner, source)  # type: ignore[operator]
    finally:
        runner.stop()
        await task
    return result, out, dead


def test_http_and_websocket_ingest_on_a_real_server(tmp_path: Path) -> None:
    import websockets

    async def body(addr: str, runner: Runner, source: HttpIngestSource) -> list[dict[str, object]]:
        hdrs = {"authorization": f"Bearer {TOKENS['ingest']}"}
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            r = await client.post("/api/v1/ingest", content=GOOD + b"\n" + GOOD,
                                  headers={**hdrs, "content-type": "application/x-ndjson"})
            assert r.json() == {"accepted": 2, "rejected": []}
        acks = []
        async with websockets.connect(f"ws://{addr}/api/v1/ingest/ws", additional_headers=hdrs) as ws:
            for msg in (GOOD, b"[" + GOOD + b"," + GOOD + b"]", b"oops"):
                await ws.send(msg)
                answer = await ws.recv()
                assert isinstance(answer, str)  # a text frame: what a browser's JSON.parse takes
                acks.append(msgspec.json.decode(answer))
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(f"ws://{addr}/api/v1/ingest/ws"):
                pass
        log = source.open_log()
        while (getattr(runner.positions().get("http"), "offset", 0) or 0) < log.end:
            await asyncio.sleep(0.01)
        return acks

    acks, out, dead = asyncio.run(_with_server(tmp_path, body))
    assert [a["accepted"] for a in acks] == [1, 2, 0]  # type: ignore[index]
    assert [a["seq"] for a in acks] == [0, 1, 2]  # type: ignore[index]
    assert out.to_frame().height == 5
    assert dead.to_frame()["payload"].to_list() == ["oops"]


def test_metrics_pass_promtool(tmp_path: Path) -> None:
    promtool = require_promtool()

    async def body(addr: str, runner: Runner, source: HttpIngestSource) -> str:
        async with httpx.AsyncClient(base_url=f"http://{addr}",
                                     headers={"authorization": f"Bearer {TOKENS['read']}"}) as client:
            ingest = {"authorization": f"Bearer {TOKENS['ingest']}"}
            await client.post("/api/v1/ingest", content=GOOD + b"\nbad", headers=ingest)
            await asyncio.sleep(0.3)  # let a checkpoint and the latency tracker run, so every metric has data
            r = await client.get("/metrics")
            assert r.status_code == 200
            return r.text

    text, _, _ = asyncio.run(_with_server(tmp_path, body))
    assert "tidegauge_e2e_latency_seconds_bucket" in text
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
