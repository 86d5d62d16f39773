"""Crash test: a 1,000,000-reading file through a YAML pipeline, SIGKILLed at random moments and
restarted; the final output must equal an uninterrupted run's, row for row."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

PIPELINE = """
source: {file: readings.parquet, key: sensor_id, time: timestamp, speed: 500}
steps:
  - filter: "temperature > -40"
  - window: {type: tumbling, size: 10s, aggregate: {temperature: [count, mean, min, max, p99]}}
sink: {file: windows.parquet}
checkpoint: {dir: ./state, interval: 1s}
watermark: {max_delay: 5s}
batch: {max_rows: 16384}
"""


def make_readings(path: Path, n: int = 1_000_000, sensors: int = 1_000) -> None:
    rng = np.random.default_rng(7)
    ts = np.arange(n, dtype=np.int64) * 10_000 + rng.integers(0, 4_000_000, n)  # 100/s, shuffled within 4 s
    pl.DataFrame(
        {
            "sensor_id": pl.Series([f"sensor-{i:04d}" for i in rng.integers(0, sensors, n)]),
            "timestamp": pl.Series(ts + 1_767_225_600_000_000).cast(pl.Datetime("us", "UTC")),
            "temperature": rng.normal(25, 5, n).round(2),
        }
    ).write_parquet(path, row_group_size=50_000)


def tidegauge(workdir: Path, *, capture: bool = True) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidegauge", "run", "pipeline.yaml", "--quiet"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_sigkill_and_restart_gives_identical_output(tmp_path: Path) -> None:
    data = tmp_path / "readings.parquet"
    make_readings(data)
    runs = {}
    for name in ("reference", "crashed"):
        d = tmp_path / name
        d.mkdir()
        (d / "readings.parquet").symlink_to(data)
        (d / "pipeline.yaml").write_text(PIPELINE)
        runs[name] = d

    ref = tidegauge(runs["reference"])
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err.decode()

    # Kill at a random moment after each restart has made progress (a new checkpoint appeared), so
    # every kill lands mid-run and the restarts must resume from checkpoints. The source replays at
    # 500x event time (about 20 s of work) so five kills fit well inside one run.
    rnd = random.Random(20261123)
    state = runs["crashed"] / "state"
    epochs: list[str] = []
    for _ in range(5):
        before = max((p.name for p in state.glob("chk-*")), default="")
        proc = tidegauge(runs["crashed"], capture=False)
        deadline = time.monotonic() + 120
        while max((p.name for p in state.glob("chk-*")), default="") <= before:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        time.sleep(rnd.uniform(0.0, 1.0))
        assert proc.poll() is None, "the run ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        epochs.append(max(p.name for p in state.glob("chk-*")))
    final = tidegauge(runs["crashed"])
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err.decode()

    assert epochs == sorted(set(epochs)), epochs  # every restart resumed and made progress
    want = pl.read_parquet(runs["reference"] / "windows.parquet")
    got = pl.read_parquet(runs["crashed"] / "windows.parquet")
    assert want.height > 90_000
    assert got.equals(want), (got.height, want.height)


def test_module_entry_point_exists() -> None:
    # the crash test drives `python -m tidegauge`; make sure that entry point is real
    out = subprocess.run([sys.executable, "-m", "tidegauge", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "120"})
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout
