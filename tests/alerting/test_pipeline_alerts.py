"""Pipeline files with an ``alerts:`` section, end to end through the CLI: ``tidegauge run`` evaluating the rules
on readings and window results and paging a real webhook receiver; a receiver that is down; ``tidegauge run`` of
a served pipeline with the alert API over real HTTP; bad sections and rules files refused at load."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import psycopg
import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique
from tests.net import free_port
from tidegauge.alerting import AlertStore
from tidegauge.errors import ConfigError
from tidegauge.pipeline import load_pipeline
from tidegauge.simulate import FleetConfig
from tidegauge.simulate.files import write_readings

RULES = """
rules:
  - name: Hot
    expr: temperature > {hot}
    severity: major
    annotations: {{summary: "sensor {{sensor_id}} at {{temperature:.1f}}"}}
  - name: HotWindow
    expr: temperature_max > {hot}
    severity: warning
    annotations: {{summary: "{{sensor_id}} window max {{temperature_max:.1f}}"}}
route: {{receiver: hook, group_by: [alertname], group_wait: 0s, group_interval: 1m}}
receivers:
  - {{name: hook, kind: webhook, url: "{url}", timeout: 2s, max_attempts: {attempts}, backoff: 100ms}}
"""

PIPELINE = """
source: {file: readings.parquet}
steps:
  - window: {type: tumbling, size: 10s, aggregate: {temperature: [max]}}
sink: {file: windows.parquet}
alerts: {rules: rules.yaml, store: state/alerts.db}
"""


def _tidegauge(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidegauge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _files(tmp: Path, url: str, *, hot: float = 30.0, attempts: int = 8) -> pl.DataFrame:
    write_readings(tmp / "readings.parquet", FleetConfig(sensors=20, rate=50.0, seed=1), rows=20_000)
    (tmp / "rules.yaml").write_text(RULES.format(hot=hot, url=url, attempts=attempts))
    (tmp / "pipeline.yaml").write_text(PIPELINE)
    return pl.read_parquet(tmp / "readings.parquet")


def _sensors(payload: dict[str, Any]) -> list[str]:
    return sorted(a["labels"]["sensor_id"] for a in payload["alerts"])


def test_run_pages_a_webhook_for_readings_and_windows(tmp_path: Path, http_server: Any) -> None:
    url, got = http_server
    readings = _files(tmp_path, url)
    hot = sorted(readings.filter(pl.col("temperature") > 30)["sensor_id"].unique().to_list())
    assert 0 < len(hot) < 20  # the threshold splits the fleet: a rule that matched everything would pass too
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    assert "notifications: 2 sent, 0 failed, 0 waiting" in " ".join(done.stdout.split())
    by_rule = {p["groupLabels"]["alertname"]: p for p in got}
    assert sorted(by_rule) == ["Hot", "HotWindow"] and len(got) == 2
    assert _sensors(by_rule["Hot"]) == hot
    # the window rule saw window results: every sensor whose 10 s window max exceeded 30 is a sensor with a
    # reading above 30, the same set
    assert _sensors(by_rule["HotWindow"]) == hot
    alert = next(a for a in by_rule["Hot"]["alerts"] if a["labels"]["sensor_id"] == hot[0])
    first_hot = readings.filter((pl.col("sensor_id") == hot[0]) & (pl.col("temperature") > 30))["temperature"]
    assert alert["annotations"]["summary"].startswith(f"sensor {hot[0]} at ")
    assert float(alert["annotations"]["summary"].rsplit(" ", 1)[1]) in {round(v, 1) for v in first_hot.to_list()}
    assert by_rule["Hot"]["version"] == "4" and alert["status"] == "firing"

    ls = _tidegauge(tmp_path, "alerts", "ls", "--db", "state/alerts.db", "--json", "--state", "firing")
    assert ls.returncode == 0, ls.stderr
    listed = json.loads(ls.stdout)
    assert sorted(a["labels"]["sensor_id"] for a in listed if a["rule"] == "Hot") == hot

    # a second run over the same data: the alerts are still firing, nothing is paged again
    again = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert again.returncode == 0, again.stderr
    assert len(got) == 2


def test_a_finite_run_notifies_the_groups_still_waiting_at_its_end(tmp_path: Path, http_server: Any) -> None:
    """A run over a file ends long before a 5-minute group_wait: its end is when they are notified."""
    url, got = http_server
    readings = _files(tmp_path, url)
    (tmp_path / "rules.yaml").write_text((tmp_path / "rules.yaml").read_text().replace("group_wait: 0s",
                                                                                        "group_wait: 5m"))
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    assert "notifications: 2 sent, 0 failed, 0 waiting" in " ".join(done.stdout.split())
    by_rule = {p["groupLabels"]["alertname"]: p for p in got}
    hot = sorted(readings.filter(pl.col("temperature") > 30)["sensor_id"].unique().to_list())
    assert sorted(by_rule) == ["Hot", "HotWindow"] and _sensors(by_rule["Hot"]) == hot


def test_a_receiver_that_is_down_never_fails_the_pipeline(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    _files(tmp_path, dead, attempts=3)
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "windows.parquet").height > 0  # every result written
    assert "receiver hook: attempt 1 failed" in done.stderr  # reported
    store = AlertStore(tmp_path / "state" / "alerts.db")
    log = store.notifications()
    store.close()
    assert len(log) == 2 and all(e.state in ("pending", "failed") and e.attempts >= 1 for e in log)
    assert all(dead.split("/hook")[0] in (e.last_error or "") for e in log)
    summary = " ".join(done.stdout.split())
    assert "notifications: 0 sent" in summary


def test_alert_state_in_postgresql(tmp_path: Path, http_server: Any) -> None:
    """``alerts.store`` as a postgresql:// URL: the pipeline and the CLI share the alert state there."""
    require("postgres")
    url, got = http_server
    readings = _files(tmp_path, url)
    schema = unique("tg_pipe_alerts")
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        db = f"{POSTGRES_CONNINFO}?options=-csearch_path%3D{schema}"
        (tmp_path / "pipeline.yaml").write_text(PIPELINE.replace("store: state/alerts.db", f'store: "{db}"'))
        done = _tidegauge(tmp_path, "run", "pipeline.yaml")
        assert done.returncode == 0, done.stderr
        assert len(got) == 2
        ls = _tidegauge(tmp_path, "alerts", "ls", "--db", db, "--json", "--state", "firing")
        assert ls.returncode == 0, ls.stderr
        hot = readings.filter(pl.col("temperature") > 30)["sensor_id"].unique().sort().to_list()
        assert sorted(a["labels"]["sensor_id"] for a in json.loads(ls.stdout) if a["rule"] == "Hot") == hot
        assert not (tmp_path / "state").exists()
        with psycopg.connect(db) as conn:
            (n,) = conn.execute("SELECT COUNT(*) FROM notifications WHERE state = 'sent'").fetchone() or (0,)
        assert n == 2
    finally:
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("command", ["run", "serve"])
def test_served_pipeline_alert_api_over_http(tmp_path: Path, http_server: Any, command: str) -> None:
    from tidegauge.server import hash_token

    url, got = http_server
    (tmp_path / "rules.yaml").write_text(RULES.format(hot=40, url=url, attempts=8))
    port = free_port()
    (tmp_path / "pipeline.yaml").write_text(f"""
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out.parquet}}
checkpoint: {{dir: cp, interval: 200ms}}
server:
  port: {port}
  tokens:
    - {{name: gw, hash: "{hash_token('tok-gw')}", scopes: [ingest]}}
    - {{name: ana, hash: "{hash_token('tok-ana')}", scopes: [read, admin]}}
alerts: {{rules: rules.yaml, store: alerts.db, streams: [readings, health]}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "tidegauge", command, "pipeline.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    ops = {"authorization": "Bearer tok-ana"}
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            for _ in range(300):  # ready: the flow reads its source (ingest before that is a 503)
                try:
                    if c.get("/readyz", headers=ops).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
            lines = [json.dumps({"sensor_id": s, "timestamp": "2026-01-01T00:00:00Z", "temperature": t})
                     for s, t in (("S1", 55.0), ("S2", 20.0), ("S3", 41.5))]
            r = c.post("/api/v1/ingest", content="\n".join(lines), headers={"authorization": "Bearer tok-gw"})
            assert r.json()["accepted"] == 3, r.text
            for _ in range(300):
                if got:
                    break
                time.sleep(0.05)
            assert [(p["groupLabels"], _sensors(p)) for p in got] == [({"alertname": "Hot"}, ["S1", "S3"])]

            listed = c.get("/api/v1/alerts", params={"state": "firing"}, headers=ops).json()["alerts"]
            assert sorted(a["labels"]["sensor_id"] for a in listed) == ["S1", "S3"]
            fp = next(a["fingerprint"] for a in listed if a["labels"]["sensor_id"] == "S1")
            acked = c.post(f"/api/v1/alerts/{fp}/ack", json={"comment": "on it"}, headers=ops)
            assert acked.status_code == 200 and acked.json()["ack"]["by"] == "ana"
            assert c.get("/api/v1/alerts", headers={"authorization": "Bearer tok-gw"}).status_code == 403
            made = c.post("/api/v1/silences", json={"matchers": ["sensor_id=S3"], "duration": "1h"}, headers=ops)
            assert made.status_code == 201, made.text
            sid = made.json()["id"]
            # the CLI reads the same store while the pipeline runs
            ls = _tidegauge(tmp_path, "silence", "ls", "--db", "alerts.db", "--json")
            assert [s["id"] for s in json.loads(ls.stdout)] == [sid]
            muted = {a["labels"]["sensor_id"]: a["muted_by"] for a in
                     c.get("/api/v1/alerts", headers=ops).json()["alerts"]}
            assert muted == {"S1": None, "S3": f"silence:{sid}"}
            assert c.delete(f"/api/v1/silences/{sid}", headers=ops).json()["state"] == "expired"
            doc = c.get("/openapi.json", headers=ops).json()
            assert {"/api/v1/alerts", "/api/v1/alerts/{fingerprint}/ack", "/api/v1/silences",
                    "/api/v1/silences/{silence_id}"} <= set(doc["paths"])
            metrics = c.get("/metrics", headers=ops).text
            assert 'tidegauge_alerts{state="firing"} 2.0' in metrics
            assert 'tidegauge_alert_notifications_sent_total{receiver="hook"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "notifications: 1 sent" in " ".join(out.split())
    ls = _tidegauge(tmp_path, "alerts", "ls", "--db", "alerts.db", "--json")
    acks = {a["labels"]["sensor_id"]: (a["ack"] or {}).get("by") for a in json.loads(ls.stdout)}
    assert acks == {"S1": "ana", "S3": None}


@pytest.mark.parametrize(("section", "rules", "where", "fix"), [
    ("{rules: rules.yaml, stream: [readings]}", None, "$.alerts", "valid keys here: rules, store, streams"),
    ("{rules: rules.yaml, streams: [raw]}", None, "$.alerts.streams[0]", "readings"),
    ("{rules: missing.yaml}", None, "$.alerts.rules", "check the path"),
    ("{rules: rules.yaml}", "rules: [{name: x, expr: 'temperature >'}]", "$.rules[0].expr",
     "write an SQL condition"),
    ("{rules: rules.yaml}", "rules: [{name: x, expr: 't > 1', for: soon}]", "$.rules[0].for", "'30s'"),
    ("{rules: rules.yaml, health_interval: often}", None, "$.alerts.health_interval", "'1s'"),
])
def test_bad_alerts_section_or_rules_file_refused_at_load(tmp_path: Path, section: str, rules: str | None,
                                                          where: str, fix: str) -> None:
    (tmp_path / "rules.yaml").write_text(rules or "rules: [{name: x, expr: 'temperature > 1'}]")
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"source: {{file: r.parquet}}\nalerts: {section}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and where in msg and fix in msg, msg
    if rules is not None:
        assert str(tmp_path / "rules.yaml") in msg  # the rules file and the path inside it


def test_windows_stream_without_a_window_step(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("rules: [{name: x, expr: 'temperature > 1'}]")
    write_readings(tmp_path / "r.parquet", FleetConfig(sensors=2, rate=1.0, seed=1), rows=10)
    (tmp_path / "pipeline.yaml").write_text(
        "source: {file: r.parquet}\nalerts: {rules: rules.yaml, streams: [windows]}\n")
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 2
    assert "$.alerts.streams" in done.stderr and "no window step" in done.stderr


def test_cli_error_for_a_bad_rules_file(tmp_path: Path) -> None:
    _files(tmp_path, "http://127.0.0.1:9/hook")
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: Hot\n    expr: temperature > 30\n    severity: urgent\n")
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "pipeline.yaml: at $.alerts.rules:" in err and "rules.yaml: $.rules[0].severity" in err, err
    assert not (tmp_path / "windows.parquet").exists()
    assert os.path.exists(tmp_path / "readings.parquet")


def test_default_rules_on_a_detected_stream(tmp_path: Path) -> None:
    """`rules: default`: the demo's fleet health rules on readings after `detect`, and on the health records."""
    write_readings(tmp_path / "readings.parquet", FleetConfig(sensors=50, rate=1000.0, seed=4, anomaly_rate=0.02),
                   rows=30_000)
    (tmp_path / "pipeline.yaml").write_text("""
source: {file: readings.parquet}
steps:
  - detect: {type: zscore, fields: [temperature, vibration]}
sink: {file: scored.parquet}
alerts: {rules: default, store: alerts.db, streams: [readings, health]}
""")
    done = _tidegauge(tmp_path, "run", "pipeline.yaml")
    assert done.returncode == 0, done.stderr
    scored = pl.read_parquet(tmp_path / "scored.parquet")
    critical = set(scored.filter(pl.col("is_anomaly") & (pl.col("score") > 0.9))["sensor_id"].to_list())
    in_alert = set(scored.filter(pl.col("operational_status") == "alert")["sensor_id"].to_list())
    ls = _tidegauge(tmp_path, "alerts", "ls", "--db", "alerts.db", "--json")
    alerts = json.loads(ls.stdout)
    by_rule: dict[str, set[str]] = {}
    for a in alerts:
        by_rule.setdefault(a["rule"], set()).add(a["labels"].get("sensor_id", ""))
    assert critical and by_rule.get("CriticalAnomaly") and by_rule["CriticalAnomaly"] <= critical
    assert all(a["severity"] == "critical" for a in alerts if a["rule"] == "CriticalAnomaly")
    assert by_rule.get("SensorAlertStatus", set()) <= in_alert
    # nothing for the edge rules (no heartbeat records) nor for latency (a fast run)
    assert not {"EdgeNodeOffline", "EdgeAvailabilityLow", "EdgeBatteryLow"} & set(by_rule)
