"""Per-partition watermarks (:mod:`tidegauge.dataflow.partitions`)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.dataflow.base import NO_WATERMARK
from tidegauge.dataflow.partitions import PartitionedSourceClock
from tidegauge.dataflow.watermark import SourceClock, SourceClockSnapshot
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


# -- the future check with partitions ------------------------------------------------------------------
NOW = 1_767_225_600 * S
H = 3_600 * S
FUTURE = WatermarkConfig(max_delay=S, idle_timeout=S, max_future=H, partition_idle_timeout=600 * S)


def partition_reference(ts: list[int], nodes: list[str], first_len: int,
                        cfg: WatermarkConfig) -> tuple[list[int], list[bool]]:
    """Record-at-a-time oracle with every partition active: the source's watermark is the highest minimum
    over the partitions' watermarks so far; a record is a candidate when more than ``max_future`` ahead of
    it and of its own partition's, and future when more than half of the records before it (the first
    batch's sample standing in for the history) are more than ``max_future - max_delay`` behind it."""
    d, mf, window = cfg.max_delay, cfg.max_future or 0, cfg.future_window
    stand_in = ts[:first_len:-(-first_len // window)][-window:]
    top: dict[str, int] = {}
    combined = NO_WATERMARK
    wms, flags = [], []
    for i, (t, p) in enumerate(zip(ts, nodes, strict=True)):
        wms.append(combined)
        own = top[p] - d if p in top else combined
        voters = ((stand_in if i < first_len else []) + ts[:i])[-window:]
        behind = sum(v < t - mf + d for v in voters)
        if t > max(combined, own) + mf and (not voters or 2 * behind > len(voters)):
            flags.append(True)
            continue
        flags.append(False)
        top[p] = max(top.get(p, t), t)
        combined = max(combined, min(top.values()) - d)
    return wms, flags


def feed_partitioned(clock: PartitionedSourceClock, ts: list[int], nodes: list[str],
                     cuts: list[int]) -> tuple[list[int], list[bool]]:
    wms: list[int] = []
    flags: list[bool] = []
    i = 0
    for c in [*cuts, len(ts)]:
        if i < len(ts):
            wm, fut = clock.assign_partitioned(np.array(ts[i: i + c], dtype=np.int64), parts(*nodes[i: i + c]), 0)
            wms += wm.tolist()
            flags += fut.tolist()
        i += c
    return wms, flags


_RECORDS = st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from("abc")), min_size=1, max_size=150)


@settings(max_examples=200, deadline=None)
@given(records=_RECORDS, first=st.integers(1, 30), cuts=st.lists(st.integers(1, 40), max_size=8),
       window=st.sampled_from([1, 3, 8, 1024]), mf=st.sampled_from([100, 2_000]))
def test_partitioned_decisions_match_the_record_at_a_time_rule_however_the_stream_is_cut(
    records: list[tuple[int, str]], first: int, cuts: list[int], window: int, mf: int
) -> None:
    cfg = WatermarkConfig(max_delay=S, max_future=mf * S, partition_idle_timeout=600 * S, future_window=window)
    ts, nodes = [t * S for t, _ in records], [n for _, n in records]
    first = min(first, len(ts))
    got = feed_partitioned(PartitionedSourceClock(cfg, partition_by="node"), ts, nodes, [first, *cuts])
    assert got == partition_reference(ts, nodes, first, cfg)


@settings(max_examples=100, deadline=None)
@given(records=_RECORDS, cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8), at=st.integers(1, 8))
def test_a_restored_partitioned_clock_makes_the_same_decisions(records: list[tuple[int, str]], cuts: list[int],
                                                                at: int) -> None:
    cfg = WatermarkConfig(max_delay=S, max_future=1_000 * S, partition_idle_timeout=600 * S, future_window=8)
    ts, nodes = [t * S for t, _ in records], [n for _, n in records]
    whole = feed_partitioned(PartitionedSourceClock(cfg, partition_by="node"), ts, nodes, cuts)
    split = sum(cuts[:min(at, len(cuts))])
    if split >= len(ts):
        return
    before = PartitionedSourceClock(cfg, partition_by="node")
    head = feed_partitioned(before, ts[:split], nodes[:split], cuts[:at])
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(before.snapshot()), type=SourceClockSnapshot)
    tail = feed_partitioned(PartitionedSourceClock(cfg, snap, partition_by="node"), ts[split:], nodes[split:],
                            cuts[at:])
    assert (head[0] + tail[0], head[1] + tail[1]) == whole


def test_a_slow_partition_holding_the_minimum_does_not_make_the_others_look_future() -> None:
    """Node a's gateway clock is 2 h slow; after b's first reading, a sends twice as much as b. b's current
    readings used to be dead-lettered as 'ahead of the watermark' (the minimum, held by a); now they are
    judged against b's own watermark too, which they are not far ahead of."""
    clock = PartitionedSourceClock(FUTURE, partition_by="node")
    _, first = clock.assign_partitioned(np.array([NOW]), parts("b"), now_us=NOW)
    flags: list[bool] = first.tolist()
    for s in range(0, 3 * 3_600, 10):  # three hours, a batch every 10 s: two from a, one from b
        ts = np.array([NOW - 2 * H + s * S, NOW - 2 * H + s * S + 1, NOW + s * S])
        _, fut = clock.assign_partitioned(ts, parts("a", "a", "b"), now_us=NOW + s * S)
        flags += fut.tolist()
    assert not any(flags)
    assert clock.partitions["b"] == NOW + (3 * 3_600 - 10) * S - S
    assert clock.watermark == NOW - 2 * H + (3 * 3_600 - 10) * S + 1 - S, "a still holds the minimum"


def test_a_fast_partition_is_dead_lettered_in_a_flow_with_its_reason() -> None:
    """Three edge nodes; node c's gateway clock is 3 h fast: its readings are dead letters, a's and b's windows
    come out as without it."""
    n = 3_000
    node = np.array(["a", "b", "c"])[np.arange(n) % 3]
    ts = NOW + np.arange(n) * 100_000 + np.where(node == "c", 3 * H, 0)
    data = pl.DataFrame({"sensor_id": [f"s-{x}" for x in node], "node": node, "timestamp": ts, "v": 1.0})
    data = data.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    flow = Flow("p", watermark=WatermarkConfig.of(max_delay="1s", idle_timeout="1h"))
    out, dead = MemorySink(), MemorySink()
    flow.source(MemorySource(data, batch_rows=50), partition_by="node").window(
        Tumbling("10s"), {"v": ["count"]}).sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    dl = dead.to_frame()
    assert dl.height == 1_000 and dl["reason"].str.contains(r"^future: timestamp is 10[78]\d\d\.\d+s ahead").all()
    windows = out.to_frame()
    assert sorted(windows["sensor_id"].unique().to_list()) == ["s-a", "s-b"]
    assert windows.group_by("sensor_id").agg(pl.col("v_count").sum())["v_count"].to_list() == [1_000, 1_000]


def test_an_old_record_first_does_not_black_hole_a_partitioned_source() -> None:
    clock = PartitionedSourceClock(FUTURE, partition_by="node")
    clock.assign_partitioned(np.array([NOW - 90 * 24 * H]), parts("a"), now_us=0)
    flags: list[bool] = []
    for s in range(200):  # a and b each send one current reading a second, one per batch
        for node in "ab":
            _, fut = clock.assign_partitioned(np.array([NOW + s * S]), parts(node), now_us=s * S)
            flags += fut.tolist()
    assert flags[0] and not any(flags[1:]), "one current reading outvoted by the lone old one, then none"
    assert clock.watermark == NOW + 198 * S
