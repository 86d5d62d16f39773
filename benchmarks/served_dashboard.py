"""The dashboard's cost in a served pipeline: the flow with and without its live steps, in the same run.

The flow a ``server: {dashboard: true}`` pipeline file gets: readings -> z-score detector -> 10 s tumbling
windows -> sink, plus (with the dashboard) :func:`tidegauge.server.attach_dashboard`'s live steps on the
scored readings, the windows and the dead letters. Readings/s through it for batches of 1,000 rows (what HTTP
ingest hands the flow) and 16,384 rows, with and without the dashboard, repeated and interleaved (``--reps``),
medians printed.

    python benchmarks/served_dashboard.py [--rows 400000] [--sensors 2000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import polars as pl

from tidegauge.dataflow import Flow, Runner, WatermarkConfig
from tidegauge.detectors import ZScore
from tidegauge.server import DashboardConfig, attach_dashboard
from tidegauge.testing import MemorySink, MemorySource
from tidegauge.windows import Tumbling

T0 = 1_767_225_600_000_000


def readings(rows: int, sensors: int) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    return pl.DataFrame({
        "sensor_id": pl.Series(rng.integers(0, sensors, rows)).cast(pl.String),
        "timestamp": pl.Series(T0 + np.arange(rows, dtype=np.int64) * 100).cast(pl.Datetime("us", "UTC")),
        "temperature": rng.normal(20, 3, rows),
        "pressure": rng.normal(1, 0.1, rows),
    })


def rate(data: pl.DataFrame, batch: int, dashboard: bool) -> float:
    flow = Flow("bench", watermark=WatermarkConfig.of(max_delay="1s"))
    scored = flow.source(MemorySource(data, batch_rows=batch)).detect(ZScore(["temperature"], key="sensor_id"))
    windows = scored.window(Tumbling("10s"), {"temperature": ["count", "mean"]})
    windows.sink(MemorySink())
    if dashboard:
        attach_dashboard(flow, scored, [windows], DashboardConfig())
    t0 = time.perf_counter()
    Runner(flow, max_batch=batch).run()
    return data.height / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--sensors", type=int, default=2_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    data = readings(args.rows, args.sensors)
    rate(data.head(20_000), 1_000, True)  # compile the numba kernels first
    for batch in (1_000, 16_384):
        got: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.reps):  # interleaved: machine load falls on both alike
            for dashboard in (False, True):
                got[dashboard].append(rate(data, batch, dashboard))
        off, on = statistics.median(got[False]), statistics.median(got[True])
        print(f"{batch:,}-row batches, {args.sensors:,} sensors: without the dashboard {off:,.0f} readings/s, "
              f"with {on:,.0f} (ratio {on / off:.2f}x)")


if __name__ == "__main__":
    main()
