"""The README's first command: the demo runs, stops after --duration, and leaves data behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl


def test_demo_runs_for_its_duration_and_writes_history(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidegauge", "demo", "--duration", "4s", "--sensors", "20", "--rate", "400",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "summary after" in done.stdout
    (run_dir,) = tmp_path.iterdir()
    readings = pl.read_parquet(run_dir / "readings.parquet")
    assert readings.height > 500  # about 4 s at 400 readings/s, less the start-up
    assert {"score", "is_anomaly", "truth_anomaly"} <= set(readings.columns)
    assert readings["sensor_id"].n_unique() == 20
