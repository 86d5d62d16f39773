"""An agent offline for a while replays its backlog: upstream, its windows come out as with no outage.

Two agents send readings at a steady rate (as NDJSON edge batches, the wire format of the uplink) to an
upstream with 1-second tumbling windows. Agent ``gw-a`` goes offline for 2.5 s, keeps its readings, and
sends them after the reconnect marked ``edge_replay``; ``gw-b`` keeps sending all along. With the
receiver as ``tidegauge serve --edge-db`` sets it up (one watermark per ``edge_node``), nothing is late and
``gw-a``'s windows equal the ones computed from everything it sent; with one watermark for the source
(the control), ``gw-a``'s backlog is late.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import polars as pl

from tests.net import until
from tidegauge.dataflow import Flow, Runner, WatermarkConfig
from tidegauge.edge import wire
from tidegauge.edge.receiver import EdgeReceiver, edge_sources, receiver_for_flow
from tidegauge.server import build_app
from tidegauge.server.config import ServerConfig, TokenConfig, hash_token
from tidegauge.testing import MemorySink
from tidegauge.windows import Tumbling

TOKEN = "tok-replay"
STEP_S = 0.05  # each agent sends one reading per sensor every 50 ms
OUTAGE = (1.0, 3.5)  # gw-a's link is down from 1 s to 3.5 s into the run
END_S = 5.0
SENSORS = {"gw-a": ["a1", "a2"], "gw-b": ["b1", "b2"]}


def _run(tmp: Path, *, per_agent: bool) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Windows, late records and every reading sent, for one run of the scenario."""
    sources = edge_sources(tmp / "intake", ["readings"], durability="os")
    flow = Flow("upstream", watermark=WatermarkConfig.of(max_delay="200ms", idle_timeout="300ms",
                                                         partition_idle_timeout="30s"))
    src = sources["readings"]
    out, late = MemorySink(), MemorySink()
    w = flow.source(src, key=src.key, time=src.time).window(Tumbling("1s"), {"temperature": ["count", "mean"]})
    w.sink(out)
    w.late().sink(late)
    receiver = receiver_for_flow(flow, tmp / "edge.db") if per_agent else EdgeReceiver(sources, tmp / "edge.db")
    runner = Runner(flow, max_delay="5ms")
    app = build_app(runner, ServerConfig(tokens=[TokenConfig("agents", ["ingest"], hash=hash_token(TOKEN))]),
                    edge_receiver=receiver)
    sent: list[dict[str, Any]] = []
    seq = {node: 0 for node in SENSORS}

    async def post(c: httpx.AsyncClient, node: str, records: list[dict[str, Any]], *, replay: bool) -> None:
        first = seq[node] + 1
        lines = []
        for r in records:
            seq[node] += 1
            stamped = {**r, "timestamp": datetime.fromtimestamp(r["timestamp"] / 1e6, UTC).isoformat()}
            lines.append(msgspec.json.encode({**stamped, "edge_node": node, "edge_stream": "readings",
                                              "edge_seq": seq[node], "edge_replay": replay}))
        headers = {"Authorization": f"Bearer {TOKEN}", wire.NODE: node, wire.STREAM: "readings",
                   wire.FIRST: str(first), wire.LAST: str(seq[node]), wire.PREV: str(first - 1),
                   wire.REPLAY: "1" if replay else "0"}
        while True:
            r = await c.post(wire.PATH, content=b"\n".join(lines) + b"\n", headers=headers)
            if r.status_code != 503:  # 503 until the flow reads the source
                break
            await asyncio.sleep(0.01)
        assert r.status_code == 200, r.text

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        backlog: list[dict[str, Any]] = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://up") as c:
            t0 = time.monotonic()
            step = 0
            while (elapsed := time.monotonic() - t0) < END_S:
                now_us = time.time_ns() // 1000
                for node, sensors in SENSORS.items():
                    records = [{"sensor_id": s, "timestamp": now_us, "temperature": float(step % 7 + i)}
                               for i, s in enumerate(sensors)]
                    sent.extend({**r, "edge_node": node} for r in records)
                    if node == "gw-a" and OUTAGE[0] <= elapsed < OUTAGE[1]:
                        backlog += records  # offline: kept in its outbox
                        continue
                    if node == "gw-a" and backlog:  # the link is back: the backlog first, in order
                        await post(c, node, backlog, replay=True)
                        backlog = []
                    await post(c, node, records, replay=False)
                step += 1
                await asyncio.sleep(max(0.0, t0 + step * STEP_S - time.monotonic()))
            # both agents move on (a reading 3 s later each): every window of the run closes
            closer = time.time_ns() // 1000 + 3_000_000
            for node in SENSORS:
                await post(c, node, [{"sensor_id": f"closer-{node}", "timestamp": closer, "temperature": 0.0}],
                           replay=False)
            # the end of the run's last 1 s window (the closer's is later): wait until each agent's has closed
            # (each agent has a watermark of its own: one agent's windows closing says nothing of the other's)
            last_end_us = (max(r["timestamp"] for r in sent) // 1_000_000 + 1) * 1_000_000

            def last_windows_closed() -> bool:
                done = pl.concat(out.frames) if out.frames else pl.DataFrame()
                ends = [done.filter(pl.col("sensor_id") == s)["window_end"].max() if done.height else None
                        for s in ("a1", "b1")]
                return all(e is not None and round(e.timestamp() * 1e6) >= last_end_us for e in ends)

            await until(last_windows_closed, timeout=20, every=0.05)  # if not, the assertions say what is missing
        runner.stop()
        await task

    asyncio.run(main())
    receiver.close()
    windows = pl.concat(out.frames) if out.frames else pl.DataFrame()
    late_rows = pl.concat(late.frames) if late.frames else pl.DataFrame()
    return windows, late_rows, pl.DataFrame(sent)


def _expected(sent: pl.DataFrame, node: str) -> pl.DataFrame:
    """The 1-second windows of everything ``node`` sent, computed directly (what a run with no outage gives)."""
    return (sent.filter(pl.col("edge_node") == node)
            .with_columns(window_start=(pl.col("timestamp") // 1_000_000 * 1_000_000).cast(pl.Datetime("us", "UTC")))
            .group_by("sensor_id", "window_start")
            .agg(temperature_count=pl.len().cast(pl.Int64), temperature_mean=pl.col("temperature").mean())
            .sort("sensor_id", "window_start"))


def test_replayed_backlog_is_on_time_with_one_watermark_per_agent(tmp_path: Path) -> None:
    windows, late, sent = _run(tmp_path, per_agent=True)
    assert late.height == 0, late
    for node in SENSORS:
        want = _expected(sent, node)
        got = (windows.filter(pl.col("sensor_id").is_in(SENSORS[node]))
               .select("sensor_id", "window_start", pl.col("temperature_count").cast(pl.Int64), "temperature_mean")
               .sort("sensor_id", "window_start"))
        assert got.height == want.height and got.height >= 2 * END_S, (node, got, want)
        assert got.select("sensor_id", "window_start", "temperature_count").equals(
            want.select("sensor_id", "window_start", "temperature_count")), (node, got, want)
        assert (got["temperature_mean"] - want["temperature_mean"]).abs().max() < 1e-9


def test_without_it_the_backlog_is_late(tmp_path: Path) -> None:
    _, late, sent = _run(tmp_path, per_agent=False)
    offline = sent.filter(pl.col("edge_node") == "gw-a").height * (OUTAGE[1] - OUTAGE[0]) / END_S
    assert late.height > offline / 2, "the control: one watermark for every agent makes the replay late"
    assert set(late["sensor_id"]) <= {"a1", "a2"}
