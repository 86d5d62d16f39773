"""Per-partition watermarks (:mod:`tidegauge.dataflow.partitions`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.dataflow.partitions import PartitionedSourceClock
from tidegauge.dataflow.watermark import SourceClock
from tidegauge.testing import MemorySink, MemorySource
from tidegauge.windows import Tumbling

S = 1_000_000
CFG = WatermarkConfig(max_delay=S, idle_timeout=S, max_future=None, partition_idle_timeout=60 * S)


def parts(*values: str) -> pl.Series:
    return pl.Series(values, dtype=pl.String)


def test_the_watermark_is_the_minimum_over_partitions_and_never_goes_back() -> None:
    clock = PartitionedSourceClock(CFG, partition_by="node")
    wm, _ = clock.assign_partitioned(np.array([10 * S, 20 * S, 30 * S]), parts("a", "b", "b"), now_us=0)
    assert clock.watermark == 9 * S, "a is behind: it holds the source back"
    wm, _ = clock.assign_partitioned(np.array([40 * S, 11 * S, 50 * S]), parts("b", "a", "a"), now_us=S)
    # per record: the minimum in force before it (a's 11 s raised the minimum to 10 s before a's 50 s came)
    assert wm.tolist() == [9 * S, 9 * S, 10 * S]
    assert clock.watermark == 39 * S and clock.partitions == {"a": 49 * S, "b": 39 * S}
    # a new partition with old data does not pull the watermark back
    clock.assign_partitioned(np.array([1 * S]), parts("c"), now_us=2 * S)
    assert clock.watermark == 39 * S


def test_a_quiet_partition_holds_time_until_its_idle_timeout_then_is_dropped() -> None:
    clock = PartitionedSourceClock(CFG, partition_by="node")
    clock.assign_partitioned(np.array([10 * S, 10 * S]), parts("a", "b"), now_us=0)
    for t in range(1, 60):  # b keeps sending for a minute, a is quiet
        clock.assign_partitioned(np.array([(10 + t) * S]), parts("b"), now_us=t * S)
        clock.on_idle(t * S)
    assert clock.watermark == 9 * S
    # a's replay comes in: on time, and it releases the watermark
    wm, _ = clock.assign_partitioned(np.arange(11, 70) * S, parts(*["a"] * 59), now_us=59 * S)
    assert (wm < np.arange(11, 70) * S).all() and wm.min() == 9 * S, "each record ahead of the watermark"
    assert clock.watermark == 68 * S
    # now a goes quiet for longer than partition_idle_timeout: dropped from the minimum
    for t in range(60, 125):
        clock.assign_partitioned(np.array([(70 + t) * S]), parts("b"), now_us=t * S)
        clock.on_idle(t * S)
    assert clock.watermark == (70 + 124) * S - S


def test_the_whole_source_idles_only_after_the_partition_timeout() -> None:
    clock = PartitionedSourceClock(CFG, partition_by="node")
    clock.assign_partitioned(np.array([10 * S]), parts("a"), now_us=0)
    clock.on_idle(30 * S)  # quiet for 30 s: far past idle_timeout (1 s), within partition_idle_timeout
    assert clock.watermark == 9 * S
    clock.on_idle(61 * S)
    assert clock.watermark == 9 * S + 61 * S


def test_snapshot_and_restore() -> None:
    clock = PartitionedSourceClock(CFG, partition_by="node")
    clock.assign_partitioned(np.array([10 * S, 30 * S]), parts("a", "b"), now_us=0)
    again = PartitionedSourceClock(CFG, clock.snapshot(), partition_by="node")
    assert again.watermark == clock.watermark == 9 * S and again.partitions == clock.partitions
    again.on_idle(100 * S)  # quiet time counts from the restore, not from before it
    assert again.watermark == 9 * S
    plain = SourceClock(CFG, clock.snapshot())  # the same snapshot type: a plain clock reads it too
    assert plain.max_event == 30 * S


def test_replayed_partition_is_not_late_in_a_flow_and_is_without_partition_by() -> None:
    """Two producers in one source; b sends 0-4 s, goes offline, and its 5-19 s come after a's 5-39 s."""
    a = pl.DataFrame({"sensor_id": "sa", "node": "a", "timestamp": np.arange(0, 40) * S, "v": 1.0})
    b = pl.DataFrame({"sensor_id": "sb", "node": "b", "timestamp": np.arange(0, 20) * S, "v": 2.0})
    data = pl.concat([a[:5], b[:5], a[5:], b[5:]]).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))

    def run(partition_by: str | None) -> tuple[pl.DataFrame, int]:
        flow = Flow("p", watermark=WatermarkConfig.of(max_delay="0s", idle_timeout="1h", max_future=None))
        out, late = MemorySink(), MemorySink()
        w = flow.source(MemorySource(data, batch_rows=10), partition_by=partition_by).window(
            Tumbling("10s"), {"v": ["count"]})
        w.sink(out)
        w.late().sink(late)
        flow.run()
        return pl.concat(out.frames), sum(f.height for f in late.frames)

    windows, late = run("node")
    assert late == 0
    got = windows.filter(pl.col("sensor_id") == "sb").sort("window_start")["v_count"].to_list()
    assert got == [10, 10]
    _, late_plain = run(None)
    assert late_plain == 15, "one watermark for both: b's replayed records are all behind a's"


def test_a_pipeline_file_sets_partition_by_and_the_timeout(tmp_path: Path) -> None:
    from tidegauge.pipeline import build_pipeline, load_pipeline

    (tmp_path / "r.csv").write_text("sensor_id,timestamp,edge_node\ns1,2026-01-01T00:00:00Z,gw-1\n")
    path = tmp_path / "p.yaml"
    path.write_text("source: {file: r.csv, partition_by: edge_node}\nsink: {file: out.parquet}\n"
                    "watermark: {partition_idle_timeout: 90s}\n")
    built = build_pipeline(load_pipeline(path), base_dir=tmp_path)
    node = next(n for n in built.flow.nodes.values() if n.kind == "source")
    assert node.partition_by == "edge_node" and built.flow.watermark.partition_idle_timeout == 90 * S
