"""The README's first command: the demo serves the dashboard, stops after --duration, and leaves history behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from tests.net import free_port


def test_demo_serves_stops_after_its_duration_and_writes_history(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TIDEGAUGE_DEMO_TOKEN"}  # a random token is printed
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidegauge", "demo", "--duration", "10s", "--sensors", "40", "--rate", "800",
         "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    line = ""
    deadline = time.monotonic() + 120
    while "dashboard:" not in line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    m = re.search(r"dashboard: (http://\S+)\s+token: (\S+)", line)
    assert m, f"no dashboard line: {line!r}"
    url, token = m.group(1), m.group(2)
    assert url == f"http://127.0.0.1:{port}/"
    assert token not in url
    # the server is up with the printed token, refuses without it, and serves the page and plotly locally
    assert httpx.get(url + "api/v1/live/overview", timeout=10).status_code == 401
    live = httpx.get(url + "api/v1/live/overview", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert live.status_code == 200 and live.json()["sensors"] <= 40
    assert "<title>tidegauge</title>" in httpx.get(url, timeout=10).text
    js = httpx.get(url + "vendor/plotly.min.js", timeout=10)
    assert js.status_code == 200 and len(js.content) > 1_000_000
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert token not in err  # nor in any log line
    text = line + out
    assert "summary after" in text
    rate = float(re.search(r"readings \(([\d,]+)/s over", text).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert rate > 0
    for what in ("anomalies:", "injected", "alerts:", "latency (event time to score): p50"):
        assert what in text, text

    (run_dir,) = tmp_path.iterdir()
    assert re.fullmatch(r"run-\d{8}T\d{6}", run_dir.name)
    readings = pl.read_parquet(run_dir / "readings.parquet")
    assert readings.height > 2000  # ~10 s at 800 readings/s, less the start-up
    assert {"score", "is_anomaly", "truth_anomaly", "truth_type", "latency_ms", "latitude"} <= set(readings.columns)
    assert readings.schema["latency_ms"] == pl.Float64
    assert readings["latency_ms"].min() >= 0  # type: ignore[operator]
    assert readings["sensor_id"].n_unique() == 40
    assert (run_dir / "alerts.sqlite").stat().st_size > 0
    assert (run_dir / "dead_letters.jsonl").exists()
