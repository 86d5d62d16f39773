"""Watermarks and the future check (:mod:`tidegauge.dataflow.watermark`)."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegauge.dataflow import Flow, WatermarkConfig
from tidegauge.dataflow.base import NO_WATERMARK
from tidegauge.dataflow.watermark import SourceClock, SourceClockSnapshot
from tidegauge.testing import MemorySink, MemorySource
from tidegauge.windows import Tumbling

S = 1_000_000
H = 3_600 * S
NOW = 1_767_225_600 * S  # 2026-01-01: "live" event times
MONTHS_AGO = NOW - 120 * 86_400 * S


def reference(ts: list[int], first_len: int, cfg: WatermarkConfig) -> tuple[list[int], list[bool], list[int]]:
    """Record-at-a-time oracle of the documented rule: the watermark before each record, the future flags,
    and what each future record was judged against. ``first_len``: the size of the source's first batch,
    whose evenly spaced sample stands in for the missing history."""
    d, mf, window = cfg.max_delay, cfg.max_future, cfg.future_window
    step = -(-first_len // window)
    stand_in = ts[:first_len:step][-window:]
    m = NO_WATERMARK
    wms, flags, refs = [], [], []
    for i, t in enumerate(ts):
        w = NO_WATERMARK if m == NO_WATERMARK else m - d
        wms.append(w)
        voters = ((stand_in if i < first_len else []) + ts[:i])[-window:]
        if mf is not None and t > w + mf:
            behind = sum(v < t - mf + d for v in voters)
            if not voters or 2 * behind > len(voters):
                flags.append(True)
                upper_median = sorted(voters)[len(voters) // 2] if voters else NO_WATERMARK
                refs.append(max(w, upper_median - d))
                continue
        flags.append(False)
        m = max(m, t)
    return wms, flags, refs


def feed(clock: SourceClock, ts: list[int], cuts: list[int]) -> tuple[list[int], list[bool], list[int]]:
    """Feed ``ts`` in batches of the sizes in ``cuts`` (the rest in one batch)."""
    wms: list[int] = []
    flags: list[bool] = []
    refs: list[int] = []
    i = 0
    for c in [*cuts, len(ts)]:
        part = np.array(ts[i : i + c], dtype=np.int64)
        if part.size:
            wm, fut = clock.assign(part, 0)
            wms += wm.tolist()
            flags += fut.tolist()
            refs += clock.future_refs.tolist()
        i += c
        if i >= len(ts):
            break
    return wms, flags, refs


_CONFIGS = st.builds(
    lambda delay, mf, window: WatermarkConfig(max_delay=delay * S, max_future=mf * S, future_window=window),
    st.integers(0, 30), st.sampled_from([100, 1_000, 5_000]), st.sampled_from([1, 2, 3, 8, 1024]),
)


@settings(max_examples=300, deadline=None)
@given(
    ts=st.lists(st.integers(0, 20_000), min_size=1, max_size=200),
    first=st.integers(1, 50),
    cuts=st.lists(st.integers(1, 50), max_size=10),
    cfg=_CONFIGS,
)
def test_decisions_match_the_record_at_a_time_rule_however_the_stream_is_cut(
    ts: list[int], first: int, cuts: list[int], cfg: WatermarkConfig
) -> None:
    """After the first batch, watermarks, future flags and their references do not depend on the cuts."""
    ts_us = [t * S for t in ts]
    first = min(first, len(ts))
    want = reference(ts_us, first, cfg)
    got = feed(SourceClock(cfg), ts_us, [first, *cuts])
    assert got == want
    assert all(a <= b for a, b in itertools.pairwise(got[0])), "watermark went backwards"


@settings(max_examples=150, deadline=None)
@given(
    ts=st.lists(st.integers(0, 20_000), min_size=2, max_size=200),
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=10),
    at=st.integers(1, 10),
    cfg=_CONFIGS,
)
def test_a_restored_clock_makes_the_same_decisions(ts: list[int], cuts: list[int], at: int,
                                                    cfg: WatermarkConfig) -> None:
    ts_us = [t * S for t in ts]
    whole = feed(SourceClock(cfg), ts_us, cuts)
    at = min(at, len(cuts))
    split = sum(cuts[:at])
    if split >= len(ts):
        return
    before = SourceClock(cfg)
    first = feed(before, ts_us[:split], cuts[:at])
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(before.snapshot()), type=SourceClockSnapshot)
    after = feed(SourceClock(cfg, snap), ts_us[split:], cuts[at:])
    assert tuple(a + b for a, b in zip(first, after, strict=True)) == whole


def test_one_old_record_first_does_not_black_hole_a_live_stream() -> None:
    """The bug: a warm-up reading months old came first; every live reading after it was dead-lettered."""
    clock = SourceClock(WatermarkConfig.of(max_delay="5s"))
    clock.assign(np.array([MONTHS_AGO]), 0)
    live = NOW + np.arange(5_000) * 10_000
    # 5,000 live readings: the first ten one a batch (as single HTTP posts come), then 100 a batch
    flags: list[bool] = []
    for lo, hi in itertools.pairwise([*range(10), *range(10, 5_000, 100), 5_000]):
        _, fut = clock.assign(live[lo:hi], 0)
        flags += fut.tolist()
    assert len(flags) == 5_000
    # the lone old record outvotes the first live one (one voter, one against); from the second on, live
    # readings are the majority of the recent records
    assert flags[0] and not any(flags[1:])
    assert clock.watermark == NOW + 4_999 * 10_000 - 5 * S
    # in one first batch, the batch stands in for the history: nothing is lost
    clock = SourceClock(WatermarkConfig.of(max_delay="5s"))
    _, fut = clock.assign(np.concatenate(([MONTHS_AGO], NOW + np.arange(100) * S)), 0)
    assert not fut.any() and clock.watermark == NOW + 94 * S


def test_k_old_records_cost_at_most_k_live_ones() -> None:
    clock = SourceClock(WatermarkConfig.of(max_delay="0s", future_window=64))
    clock.assign(np.array([MONTHS_AGO]), 0)
    clock.assign(MONTHS_AGO + np.arange(1, 10) * S, 0)  # 10 old records in all
    _, fut = clock.assign(NOW + np.arange(1_000) * S, 0)
    assert fut.tolist() == [True] * 10 + [False] * 990


def test_a_fast_clock_minority_is_dead_lettered_forever_with_its_reason() -> None:
    """20 sensors, one of them two hours fast, in a flow: all of its readings are dead letters."""
    n = 20 * 300
    ts = NOW + np.arange(n) * 50_000  # 20 sensors, one reading each a second
    sensor = np.arange(n) % 20
    ts = np.where(sensor == 7, ts + 2 * H, ts)
    data = pl.DataFrame({"sensor_id": [f"s{i}" for i in sensor], "timestamp": ts, "v": 1.0}).with_columns(
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    flow = Flow("fast", watermark=WatermarkConfig.of(max_delay="2s", idle_timeout="1h"))
    out, dead = MemorySink(), MemorySink()
    flow.source(MemorySource(data, batch_rows=97)).window(Tumbling("10s"), {"v": ["count"]}).sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    dl = dead.to_frame()
    assert dl.height == 300
    ahead = dl["reason"].str.extract(r"is ([0-9.]+)s ahead").cast(pl.Float64)
    assert dl["reason"].str.starts_with("future: timestamp is").all()
    assert ((ahead > 7_190) & (ahead < 7_210)).all(), ahead.describe()  # 2 h, give or take the delay
    windows = out.to_frame()
    assert "s7" not in windows["sensor_id"].to_list()
    assert windows["window_end"].max() <= pl.Series([NOW + n * 50_000 + 10 * S]).cast(pl.Datetime("us", "UTC"))[0]


@settings(max_examples=100, deadline=None)
@given(
    fast=st.lists(st.booleans(), min_size=1, max_size=300),
    cuts=st.lists(st.integers(1, 40), max_size=12),
    window=st.sampled_from([4, 16, 1024]),
)
def test_fast_records_are_caught_while_they_are_a_minority_of_the_recent_ones(
    fast: list[bool], cuts: list[int], window: int
) -> None:
    """Whatever the interleaving and batching, a fast record is dead-lettered when fewer than half of the
    records before it (in the vote window) were fast, and time never jumps ahead."""
    cfg = WatermarkConfig.of(max_delay="1s", max_future="1h", future_window=window)
    kinds = [False]  # the first record is a normal one, alone in its batch
    for f in fast:  # keep the fast ones a minority of every vote
        recent = kinds[-window:]
        kinds.append(f and 2 * sum(recent) + 2 < len(recent))
    ts = [NOW + i * S + (2 * H if f else 0) for i, f in enumerate(kinds)]
    wms, flags, _ = feed(SourceClock(cfg), ts, [1, *cuts])
    assert flags == kinds
    assert max(wms) < NOW + len(ts) * S


def test_a_clock_that_jumps_forward_for_good_is_believed_after_half_the_window() -> None:
    clock = SourceClock(WatermarkConfig.of(max_delay="0s"))
    clock.assign(NOW + np.arange(2_000) * S, 0)
    _, fut = clock.assign(NOW + 2 * H + np.arange(2_000, 4_000) * S, 0)
    assert fut.tolist() == [True] * 512 + [False] * 1_488
    assert clock.watermark == NOW + 2 * H + 3_999 * S


def test_a_burst_of_fast_records_is_dead_lettered_whole_and_leaves_time_alone() -> None:
    clock = SourceClock(WatermarkConfig.of(max_delay="0s"))
    clock.assign(NOW + np.arange(2_000) * S, 0)
    batch = np.concatenate((NOW + 2 * H + np.arange(2_000, 2_400) * S, NOW + np.arange(2_400, 3_000) * S))
    _, fut = clock.assign(batch, 0)
    assert fut.tolist() == [True] * 400 + [False] * 600
    assert clock.watermark == NOW + 2_999 * S
    assert (clock.future_refs == NOW + 1_999 * S).all(), "judged against the watermark in force"


def test_future_records_do_not_advance_time() -> None:
    clock = SourceClock(WatermarkConfig(max_delay=2 * S, max_future=60 * S))
    wm, fut = clock.assign(np.array([10, 11, 10_000, 12], dtype=np.int64) * S, 0)
    assert fut.tolist() == [False, False, True, False]
    assert wm.tolist()[3] == 9 * S
    assert clock.watermark == 10 * S


def test_a_fast_clock_in_the_first_record_cannot_poison_time() -> None:
    clock = SourceClock(WatermarkConfig(max_delay=0, max_future=60 * S))
    _, fut = clock.assign(np.array([100_000, 10, 11, 12], dtype=np.int64) * S, 0)
    assert fut.tolist() == [True, False, False, False]
    assert clock.watermark == 12 * S
    assert clock.future_refs.tolist() == [12 * S], "the first batch's upper median stood in for the watermark"


def test_an_old_snapshot_without_recent_event_times_is_judged_by_the_watermark() -> None:
    old = msgspec.msgpack.encode({"type": "source-clock/1", "max_event": 100 * S, "floor": NO_WATERMARK,
                                  "finished": False})
    snap = msgspec.msgpack.decode(old, type=SourceClockSnapshot)
    clock = SourceClock(WatermarkConfig(max_future=60 * S), snap)
    _, fut = clock.assign(np.array([1_000, 101, 102], dtype=np.int64) * S, 0)
    assert fut.tolist() == [True, False, False]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"max_future .* must be greater than watermark\.max_delay"):
        WatermarkConfig.of(max_delay="1h", max_future="30m")
    with pytest.raises(ValueError, match="future_window"):
        WatermarkConfig.of(future_window=0)
    WatermarkConfig.of(max_delay="2h", max_future=None)  # no check: any delay


def test_idle_source_advances_with_processing_time() -> None:
    cfg = WatermarkConfig(max_delay=5 * S, idle_timeout=10 * S)
    clock = SourceClock(cfg)
    clock.assign(np.array([100 * S], dtype=np.int64), now_us=1_000 * S)
    clock.on_idle(1_009 * S)  # quiet 9 s < idle timeout: nothing moves
    assert clock.watermark == 95 * S
    clock.on_idle(1_012 * S)  # quiet 12 s: event time assumed to have moved on 12 s
    assert clock.watermark == 107 * S
    # a record arriving later is judged against the advanced watermark, which never goes back
    wm, _ = clock.assign(np.array([101 * S], dtype=np.int64), now_us=1_013 * S)
    assert wm.tolist() == [107 * S]
    assert clock.watermark == 107 * S


def test_snapshot_round_trip() -> None:
    clock = SourceClock(WatermarkConfig(max_delay=S))
    clock.assign(np.array([5 * S, 7 * S], dtype=np.int64), 0)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(clock.snapshot()), type=SourceClockSnapshot)
    again = SourceClock(WatermarkConfig(max_delay=S), snap)
    assert again.watermark == clock.watermark == 6 * S
    assert again.recent.tolist() == [5 * S, 7 * S]


@settings(max_examples=300, deadline=None)
@given(
    ts=st.lists(st.integers(0, 10_000), min_size=1, max_size=60),
    max_event=st.one_of(st.just(NO_WATERMARK), st.integers(0, 10_000)),
    floor=st.one_of(st.just(NO_WATERMARK), st.integers(0, 10_000)),
    max_delay=st.integers(0, 500),
    max_future=st.integers(0, 3_000),
    window=st.integers(0, 8),
    voters=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_vectorised_assignment_equals_the_compiled_loop_or_defers_to_it(
    ts: list[int], max_event: int, floor: int, max_delay: int, max_future: int, window: int, voters: list[int]
) -> None:
    """The numpy path (numba left unloaded) gives the kernel's answer, or none when a record may be judged
    future (the vote then decides, in the kernel)."""
    from tidegauge.dataflow.watermark import _assign, _assign_vectorised

    arr = np.array(ts, np.int64)
    args = (arr, max_event, floor, max_delay, max_future, window, np.array(voters, np.int64))
    wm, future, m, refs = _assign(*args)
    fast = _assign_vectorised(*args)
    if fast is None:
        assert window > 0 and bool((arr > wm + max_future).any())
    else:
        assert not future.any() and refs.size == 0
        assert fast[0].tolist() == wm.tolist() and not fast[1].any() and fast[2] == int(m)
