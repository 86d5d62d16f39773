"""Acceptance: alerts raised on the edge while offline reach the upstream after the reconnect with their
original times; one that resolved while the link was down is recorded upstream but does not page.

The upstream is a real process (paging to a webhook this test serves); the agent runs in this process with
a flow whose readings the test hands in at chosen moments (real alert rules, outbox and uplink), and the
link is the killable TCP proxy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from tests.edge.procs import TOKEN, LinkProxy, free_port, received, upstream, wait_for
from tidegauge.alerting import AlertStep, parse_config
from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.edge.agent import AgentConfig, run_agent
from tidegauge.edge.outbox import Outbox, StreamPolicy
from tidegauge.edge.sink import OutboxSink


class _Position(msgspec.Struct, frozen=True, tag="test-queue/1"):
    n: int


class QueueSource:
    """Readings the test puts in, as they come (not replayable: this test does not crash the agent)."""

    name = "queue"
    snapshot_type = _Position
    guarantee = "at-most-once"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pl.DataFrame] = asyncio.Queue()
        self.n = 0

    def build(self, resume_state: Any) -> QueueSource:
        return self

    async def next_batch(self, max_rows: int, max_delay_s: float) -> pl.DataFrame | None:
        try:
            df = await asyncio.wait_for(self.queue.get(), timeout=max(max_delay_s, 0.01))
        except TimeoutError:
            return pl.DataFrame()
        self.n += df.height
        return df

    def snapshot(self) -> _Position:
        return _Position(self.n)

    async def ack(self, position: Any) -> None:
        pass

    async def close(self) -> None:
        pass


def reading(sensor: str, temperature: float) -> pl.DataFrame:
    return pl.DataFrame({"sensor_id": [sensor], "timestamp": [datetime.now(UTC)], "temperature": [temperature]},
                        schema={"sensor_id": pl.String, "timestamp": pl.Datetime("us", "UTC"),
                                "temperature": pl.Float64})


class Webhook:
    def __init__(self) -> None:
        self.pages: list[dict[str, Any]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.pages.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paged(self) -> list[tuple[str, str]]:
        return [(a["fingerprint"], a["status"]) for p in self.pages for a in p["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_offline_alerts_keep_their_times_and_resolved_ones_do_not_page(tmp_path: Path) -> None:
    hook = Webhook()
    up_port = free_port()
    up = upstream(tmp_path / "upstream", up_port, hook.url)
    proxy = LinkProxy(up_port)
    rules = parse_config({"rules": [{"name": "hot", "expr": "temperature > 100", "for": "0s",
                                     "severity": "critical"}]})
    src = QueueSource()
    streams = {"alerts": StreamPolicy(priority=8)}

    def flow(box: Outbox) -> Flow:
        f = Flow("edge-alerts", watermark=WatermarkConfig.of(max_delay="1s", idle_timeout="1s"))
        f.source(src).then(AlertStep(rules, store=str(tmp_path / "agent" / "alerts.db"), delivery="none"),
                           name="rules").sink(OutboxSink(box, "alerts"))
        return f

    config = AgentConfig(node_id="gw-a", upstream=f"http://127.0.0.1:{proxy.port}", token=TOKEN,
                         data_dir=str(tmp_path / "agent"), streams=streams, heartbeat_interval="1s")
    times: dict[str, float] = {}

    async def scenario() -> dict[str, Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, flow=flow, stop=stop))
        await asyncio.sleep(1.0)
        times["live"] = time.time()
        await src.queue.put(reading("live", 150.0))  # fires with the link up: pages at once
        await _until(lambda: len(hook.pages) >= 1, 30)
        proxy.cut()
        await asyncio.sleep(1.5)
        times["s1"] = time.time()
        await src.queue.put(reading("s1", 150.0))  # fires while offline ...
        await asyncio.sleep(1.5)
        await src.queue.put(reading("s1", 20.0))  # ... and resolves while offline: recorded, not paged
        await asyncio.sleep(0.5)
        times["s2"] = time.time()
        await src.queue.put(reading("s2", 150.0))  # fires while offline and is still firing: pages
        await asyncio.sleep(3.0)  # checkpoints commit them to the outbox; the link is still down
        times["reconnect"] = time.time()
        proxy.restore()
        await _until(lambda: received(tmp_path / "upstream", "alerts").height >= 4, 60)
        await _until(lambda: len(hook.pages) >= 2, 30)
        await asyncio.sleep(1.0)
        stop.set()
        return {"result": await task}

    try:
        asyncio.run(scenario())
        wait_for(lambda: received(tmp_path / "upstream", "alerts").height >= 4, 30, "alerts upstream", up)
        df = received(tmp_path / "upstream", "alerts").with_columns(
            pl.col("at").str.to_datetime(time_zone="UTC"), sensor=pl.col("labels").str.json_path_match("$.sensor_id"))
        firing = df.filter(pl.col("state") == "firing")
        by = {(r["sensor"], r["state"]): r for r in df.to_dicts()}
        assert {("live", "firing"), ("s1", "firing"), ("s1", "resolved"), ("s2", "firing")} <= set(by), df
        # original times: when the edge raised them, long before the reconnect
        for sensor in ("s1", "s2"):
            at = by[(sensor, "firing")]["at"].timestamp()
            assert times[sensor] - 1 <= at <= times[sensor] + 1.5, (sensor, at, times)
            assert at < times["reconnect"] - 1
            assert by[(sensor, "firing")]["edge_replay"] is True
        assert by[("live", "firing")]["edge_replay"] is False
        assert by[("s1", "resolved")]["at"] > by[("s1", "firing")]["at"]
        paged = hook.paged()
        fp = {s: by[(s, "firing")]["fingerprint"] for s in ("live", "s1", "s2")}
        assert (fp["live"], "firing") in paged
        assert (fp["s2"], "firing") in paged
        assert not [p for p in paged if p[0] == fp["s1"]], f"s1 resolved while offline, it must not page: {paged}"
        assert firing.height == 3
    finally:
        proxy.close()
        up.stop()
        hook.close()


async def _until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)
