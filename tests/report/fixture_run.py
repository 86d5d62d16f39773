"""A small but real run directory, as the demo writes it: simulator -> detect -> FileSink (unpaced), windows,
dead letters, an alert store filled by a real AlertManager, and edge heartbeats."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tidegauge._time import ManualClock, to_micros
from tidegauge.alerting import AlertManager, default_config
from tidegauge.connectors.files import FileSink
from tidegauge.connectors.simulator import SimulatorSource
from tidegauge.dataflow import Flow, Runner, WatermarkConfig
from tidegauge.detectors import default_detector
from tidegauge.edge.heartbeat import Heartbeat, Resources
from tidegauge.simulate import FaultConfig, FleetConfig
from tidegauge.windows import Tumbling

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIELDS = ["temperature", "vibration", "power_consumption"]


def _stamp(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.lit(time.perf_counter_ns(), dtype=pl.Int64).alias("latency_t0"))


def _latency(df: pl.DataFrame) -> pl.DataFrame:
    now = time.perf_counter_ns()
    return df.with_columns(((now - pl.col("latency_t0")) / 1e6).alias("latency_ms")).drop("latency_t0")


def make_run(data_dir: Path, *, sensors: int = 20, rate: float = 100.0, seconds: int = 600, latency: bool = True,
             alerts: bool = True, edge: bool = True, name: str = "run-20260301T120000") -> Path:
    run_dir = data_dir / name
    fleet = FleetConfig(sensors=sensors, rate=rate, seed=3, start=START, anomaly_rate=0.03,
                        faults=FaultConfig(malformed=0.002))
    flow = Flow("fixture", watermark=WatermarkConfig.of(max_delay="2s"))
    readings = flow.source(SimulatorSource(fleet, limit=int(rate * seconds)))
    if latency:
        readings = readings.map_batches(_stamp, name="stamp")
    readings = readings.detect(default_detector(fields=FIELDS), name="detect")
    if latency:
        readings = readings.map_batches(_latency, name="latency")
    readings.sink(FileSink(run_dir / "readings.parquet"), name="readings")
    aggs = {f: ["count", "mean", "max"] for f in FIELDS}
    readings.window(Tumbling("1m"), aggs, name="w1").sink(FileSink(run_dir / "windows_1m.parquet"), name="windows_1m")
    readings.window(Tumbling("5m"), aggs, name="w5").sink(FileSink(run_dir / "windows_5m.parquet"), name="windows_5m")
    flow.dead_letters().sink(FileSink(run_dir / "dead_letters.jsonl"), name="dead")
    run_dir.mkdir(parents=True, exist_ok=True)
    Runner(flow, max_batch=2_000, max_delay="1ms").run()
    if alerts:
        raise_alerts(run_dir)
    if edge:
        write_edge(run_dir, seconds=seconds)
    return run_dir


def raise_alerts(run_dir: Path) -> None:
    """Drive a real AlertManager (the demo's default rules) over the readings in 10 s chunks of event time."""
    df = pl.read_parquet(run_dir / "readings.parquet").sort("timestamp")
    clock = ManualClock(to_micros(START))
    manager = AlertManager(default_config(), store=run_dir / "alerts.sqlite", clock=clock, delivery="none")
    try:
        chunks = df.with_columns((pl.col("timestamp").dt.epoch("s") // 10).alias("_chunk")).partition_by(
            "_chunk", maintain_order=True, include_key=False)
        for chunk in chunks:
            now = int(chunk["timestamp"].dt.epoch("us").max()) + 1
            manager.evaluate(chunk, now)
    finally:
        manager.close()


def write_edge(run_dir: Path, *, seconds: int) -> None:
    """Heartbeat records of three gateways every 10 s; gw-3 drops offline for the middle third."""
    rng = np.random.default_rng(5)
    rows = []
    for i, node in enumerate(("gw-1", "gw-2", "gw-3")):
        battery = 90.0 - 20 * i
        for k in range(0, seconds, 10):
            t = START + timedelta(seconds=k)
            offline = node == "gw-3" and seconds / 3 <= k < 2 * seconds / 3
            battery = max(battery - rng.uniform(0.0, 0.5), 0.0)
            hb = Heartbeat(node_id=node, sent_at_us=to_micros(t), version="0.1.0",
                           resources=Resources(cpu_pct=float(rng.uniform(5, 60)), memory_pct=float(rng.uniform(20, 50)),
                                               battery_pct=battery), outbox_depth=int(k * 3) if offline else 0,
                           link="down" if offline else "up")
            rows.append({"node_id": hb.node_id, "timestamp": t, "status": "offline" if offline else "online",
                         "availability": 0.0 if offline else float(rng.uniform(0.95, 1.0)),
                         "battery_pct": hb.resources.battery_pct, "cpu_pct": hb.resources.cpu_pct,
                         "memory_pct": hb.resources.memory_pct, "outbox_depth": hb.outbox_depth})
    pl.DataFrame(rows).write_parquet(run_dir / "edge.parquet")
