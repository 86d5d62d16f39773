"""The flow's own health records (RunnerHealthSource) and the demo's default rules: processing latency fires
when a step is made slow; the edge rules on heartbeat records; default_alerting's store and receiver."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest

from tests.alerting.helpers import T0, Recorder, S
from tidegauge._time import ManualClock
from tidegauge.alerting import AlertingConfig, RunnerHealthSource, default_alerting, default_config, watch, watch_health
from tidegauge.alerting.health import histogram_quantile
from tidegauge.connectors.simulator import SimulatorSource
from tidegauge.dataflow import Flow
from tidegauge.dataflow.flow import Stream
from tidegauge.dataflow.metrics import LatencyHistogram
from tidegauge.edge import Heartbeat, Resources
from tidegauge.simulate import FleetConfig
from tidegauge.testing import MemorySink


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    h = LatencyHistogram(bounds=(0.1, 0.2, 0.4))
    for v in (0.05, 0.15, 0.15, 0.3):
        h.observe(v)
    # rank 0.5 * 4 = 2 falls in (0.1, 0.2], the bucket holding observations 2 and 3: 0.1 + 0.1 * (2 - 1) / 2
    assert histogram_quantile(0.5, h.bounds, h.counts) == pytest.approx(0.15)
    assert histogram_quantile(0.99, h.bounds, h.counts) == pytest.approx(0.2 + 0.2 * (3.96 - 3))
    h.observe(9.0)  # beyond the last bound: the largest finite bound, as Prometheus answers
    assert histogram_quantile(1.0, h.bounds, h.counts) == 0.4
    assert histogram_quantile(0.99, h.bounds, [0, 0, 0, 0]) is None


def _latency_rules(base: AlertingConfig) -> AlertingConfig:
    """The default rules with ProcessingLatencyHigh pending for 0 s instead of 1 m, and no group wait."""
    rules = [msgspec.structs.replace(r, for_="0s") if r.name == "ProcessingLatencyHigh" else r for r in base.rules]
    route = msgspec.structs.replace(base.route, group_wait="0s")
    return msgspec.structs.replace(base, rules=rules, route=route)


def _run_with_step_taking(tmp: Path, seconds: float) -> tuple[Recorder, pl.DataFrame, list[Any]]:
    rec = Recorder("log")
    manager = default_alerting(tmp, config=_latency_rules(default_config()), notifiers={"log": rec},
                               delivery="inline")
    flow = Flow("plant")
    readings = flow.source(SimulatorSource(FleetConfig(sensors=5, rate=40.0, seed=3), limit=120, paced=True))

    def slow(df: pl.DataFrame) -> pl.DataFrame:
        time.sleep(seconds)
        return df

    watch(manager, readings.map_batches(slow))
    health = watch_health(manager, flow, interval="300ms")
    records = MemorySink()
    Stream(flow, health.name).sink(records)  # the health records themselves, to check their figures
    runner = flow.runner(max_delay="5ms")
    health.attach(runner)
    runner.run()
    alerts = manager.list_alerts()
    manager.close()
    return rec, records.to_frame(), alerts


def test_processing_latency_rule_fires_when_a_step_is_slow(tmp_path: Path) -> None:
    rec, health, alerts = _run_with_step_taking(tmp_path, 0.3)
    assert health.height >= 3
    assert set(health.columns) >= {"flow", "timestamp", "processing_latency_ms", "batch_mean_ms", "batches",
                                   "readings_per_s", "dead_letters_per_s", "watermark_lag_s", "queue_depth"}
    measured = health.filter(pl.col("batches") > 0)
    assert measured.height and (measured["processing_latency_ms"] > 100).all()
    # each reading batch sleeps 300 ms; the health records' own batches are fast and count in the mean too
    assert (measured["batch_mean_ms"] > 100).all()
    assert health["readings_per_s"].sum() > 0 and (health["flow"] == "plant").all()
    fired = [p for _, p in rec.sent if p["groupLabels"].get("alertname") == "ProcessingLatencyHigh"]
    assert fired and fired[0]["status"] == "firing"
    summary = fired[0]["alerts"][0]["annotations"]["summary"]
    assert summary.startswith("processing latency ") and float(summary.split()[2]) > 100
    assert "ProcessingLatencyHigh" in {a.rule for a in alerts}


def test_processing_latency_rule_quiet_for_a_fast_flow(tmp_path: Path) -> None:
    _, health, _ = _run_with_step_taking(tmp_path, 0.0)
    measured = health.filter(pl.col("batches") > 0)
    assert measured.height >= 2
    # a busy shared machine can stall one batch; the typical batch is far below the 100 ms threshold
    assert float(np.median(measured["batch_mean_ms"].to_numpy())) < 20


def test_health_source_must_be_attached() -> None:
    flow = Flow("f")
    health = RunnerHealthSource()
    flow.source(health, key="flow")
    with pytest.raises(ValueError, match="attach"):
        flow.run()
    with pytest.raises(ValueError, match="not a source"):
        RunnerHealthSource().attach(flow.runner())


def _heartbeats(t: int, rows: dict[str, tuple[float, float | None]]) -> pl.DataFrame:
    """Heartbeat records as the coordinator emits them: node_id, heartbeat, availability, battery_pct."""
    return pl.DataFrame({
        "node_id": list(rows),
        "timestamp": pl.Series([t] * len(rows), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "heartbeat": [True] * len(rows),
        "availability": [a for a, _ in rows.values()],
        "battery_pct": [b for _, b in rows.values()],
    }, schema_overrides={"battery_pct": pl.Float64})


def test_default_edge_rules_on_heartbeat_records(tmp_path: Path) -> None:
    # the column names are the edge heartbeat contract's (availability is the coordinator's own figure)
    assert "node_id" in Heartbeat.__struct_fields__ and "battery_pct" in Resources.__struct_fields__
    clock = ManualClock(T0)
    rec = Recorder("log", clock)
    m = default_alerting(tmp_path, clock=clock, notifiers={"log": rec}, delivery="inline")
    # gw-1 healthy; gw-2 low battery (no `for`); gw-3 availability low (for 5m); gw-4 stops after 60 s
    for t in range(0, 601, 30):
        rows = {"gw-1": (0.99, 90.0), "gw-2": (0.95, 15.0 if t < 400 else 30.0), "gw-3": (0.5, None)}
        if t <= 60:
            rows["gw-4"] = (1.0, 80.0)
        clock.set(T0 + t * S)
        m.evaluate(_heartbeats(clock.now_us(), rows))
    got = [((t - T0) // S, p["groupLabels"]["alertname"], p["status"],
            sorted((a["labels"]["node_id"], a["status"]) for a in p["alerts"])) for t, p in rec.sent]
    # group_wait 30 s, group_interval 5 m (group_by alertname): battery at 0 -> paged at 30; gw-4 silent for
    # 2 m at 180 -> paged at 210; gw-3 pending at 0, firing at 300 -> paged at 330; gw-2's battery back above
    # 25 at 400 -> resolution paged at the group's next flush (30 + 5 m + 5 m = 630: after this run)
    assert got == [
        (30, "EdgeBatteryLow", "firing", [("gw-2", "firing")]),
        (210, "EdgeNodeOffline", "firing", [("gw-4", "firing")]),
        (330, "EdgeAvailabilityLow", "firing", [("gw-3", "firing")]),
    ]
    states = {(a.rule, a.labels["node_id"]): a.state for a in m.list_alerts()}
    assert states == {("EdgeBatteryLow", "gw-2"): "resolved", ("EdgeNodeOffline", "gw-4"): "firing",
                      ("EdgeAvailabilityLow", "gw-3"): "firing"}
    summaries = {p["groupLabels"]["alertname"]: p["alerts"][0]["annotations"]["summary"] for _, p in rec.sent}
    assert summaries == {"EdgeBatteryLow": "edge node gw-2 battery 15%", "EdgeNodeOffline": "edge node gw-4 offline",
                         "EdgeAvailabilityLow": "edge node gw-3 availability 50%"}
    m.close()
    assert (tmp_path / "alerts.db").exists()


def test_edge_node_offline_does_not_mute_fleet_alerts(tmp_path: Path) -> None:
    """The default inhibition (critical mutes lower alerts of the same sensor) leaves alerts without a
    sensor_id alone: an offline edge node must not mute the fleet's anomaly-rate alert."""
    clock = ManualClock(T0)
    m = default_alerting(tmp_path, clock=clock, notifiers={"log": Recorder("log", clock)}, delivery="inline")
    m.evaluate(_heartbeats(T0, {"gw-9": (1.0, 90.0)}))
    n = 200
    readings = pl.DataFrame({
        "sensor_id": [f"s{i}" for i in range(n)],
        "timestamp": pl.Series([T0] * n, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "score": [0.5] * n, "is_anomaly": [i % 2 == 0 for i in range(n)],
        "operational_status": ["normal"] * n,
    })
    for t in range(0, 241, 30):
        clock.set(T0 + t * S)
        m.evaluate(readings.with_columns(pl.lit(clock.now_us()).cast(pl.Datetime("us", "UTC")).alias("timestamp")))
    firing = {a.rule: a.fingerprint for a in m.list_alerts(state="firing")}
    assert {"EdgeNodeOffline", "HighAnomalyRate"} <= set(firing)
    assert firing["HighAnomalyRate"] not in m.muted()
    m.close()
