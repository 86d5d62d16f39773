"""Per-partition watermarks: the cost of ``partition_by`` against one watermark per source, in the same run.

Two measurements, each repeated and interleaved (``--reps``), medians printed:

- *clock*: per-record watermarks for 65,536-row batches (sorted event times, partitions drawn at random)
  with a plain :class:`SourceClock` and a :class:`PartitionedSourceClock` (10 and 1,000 partitions);
- *flow*: readings through ``source -> 10 s tumbling windows (count, mean) -> sink`` with and without
  ``partition_by="edge_node"`` (10 agents, 1,000 sensors), readings/s.

    python benchmarks/partition_watermarks.py [--rows 1000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import polars as pl

from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.dataflow.partitions import PartitionedSourceClock
from tidegauge.dataflow.watermark import SourceClock
from tidegauge.testing import MemorySink, MemorySource
from tidegauge.windows import Tumbling

S = 1_000_000
BATCH = 65_536


def clock_ms(partitions: int | None, reps: int) -> float:
    rng = np.random.default_rng(1)
    ts = np.sort(rng.integers(0, 10**9, BATCH)).astype(np.int64)
    nodes = pl.Series([f"gw-{i}" for i in rng.integers(0, partitions or 1, BATCH)])
    cfg = WatermarkConfig(max_delay=S, max_future=None)
    times = []
    for _ in range(reps):
        clock = SourceClock(cfg) if partitions is None else PartitionedSourceClock(cfg, partition_by="n")
        t0 = time.perf_counter()
        for k in range(20):
            if isinstance(clock, PartitionedSourceClock):
                clock.assign_partitioned(ts + k * 10**9, nodes, k)
            else:
                clock.assign(ts + k * 10**9, k)
        times.append((time.perf_counter() - t0) / 20 * 1e3)
    return statistics.median(times)


def flow_rate(rows: int, partition_by: str | None) -> float:
    rng = np.random.default_rng(2)
    data = pl.DataFrame({
        "sensor_id": pl.Series(rng.integers(0, 1000, rows)).cast(pl.String),
        "timestamp": pl.Series(np.arange(rows, dtype=np.int64) * 1000).cast(pl.Datetime("us", "UTC")),
        "temperature": rng.normal(20, 3, rows),
        "edge_node": pl.Series(rng.integers(0, 10, rows)).cast(pl.String),
    })
    flow = Flow("bench", watermark=WatermarkConfig.of(max_delay="1s", max_future=None))
    flow.source(MemorySource(data, batch_rows=BATCH), partition_by=partition_by).window(
        Tumbling("10s"), {"temperature": ["count", "mean"]}).sink(MemorySink())
    t0 = time.perf_counter()
    flow.run(max_batch=BATCH)
    return rows / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    clock_ms(10, 1)
    flow_rate(BATCH * 2, "edge_node")  # compile the numba kernels first
    plain = clock_ms(None, args.reps)
    for p in (10, 1000):
        part = clock_ms(p, args.reps)
        print(f"clock, {BATCH:,}-row batch: plain {plain:.2f} ms, {p} partitions {part:.2f} ms "
              f"({part / BATCH * 1e6:.0f} ns a record)")
    rates: dict[str, list[float]] = {"plain": [], "edge_node": []}
    for _ in range(args.reps):  # interleaved: machine load falls on both alike
        rates["plain"].append(flow_rate(args.rows, None))
        rates["edge_node"].append(flow_rate(args.rows, "edge_node"))
    a, b = statistics.median(rates["plain"]), statistics.median(rates["edge_node"])
    print(f"flow, {args.rows:,} readings, 10 s windows: one watermark {a:,.0f}/s, per edge_node {b:,.0f}/s "
          f"(ratio {b / a:.2f}x)")


if __name__ == "__main__":
    main()
