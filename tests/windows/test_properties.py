"""Hypothesis properties: window assignment, restore equivalence, lateness and re-emission."""

from __future__ import annotations

import msgspec
import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.windows.helpers import T0, S, last_per_window, run, with_watermarks
from tidegauge.dataflow.base import KEY_ID, TS, WM
from tidegauge.windows import Count, Session, Sliding, Tumbling, WindowStep

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def streams(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 60))
    offs = draw(st.lists(st.integers(0, 40 * S), min_size=n, max_size=n))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    vals = draw(st.lists(st.one_of(st.none(), st.floats(-100, 100)), min_size=n, max_size=n))
    return pl.DataFrame(
        {
            "sensor_id": keys,
            "timestamp": pl.Series([T0 + o for o in offs]).cast(pl.Datetime("us", "UTC")),
            "temperature": pl.Series(vals, dtype=pl.Float64),
        }
    )


windows = st.sampled_from([Tumbling("3s"), Tumbling("5s", offset="1s"), Sliding("6s", "2s"), Sliding("4s", "4s")])


def _grid(window: Tumbling | Sliding) -> tuple[int, int, int]:
    if isinstance(window, Tumbling):
        return window.size_us, window.size_us, window.offset_us
    return window.size_us, window.slide_us, 0


@SETTINGS
@given(streams(), windows)
def test_each_record_lands_in_exactly_the_windows_containing_it(df: pl.DataFrame, window: Tumbling | Sliding) -> None:
    """With no watermark pressure, the per-window counts equal the number of records each window contains."""
    ones = df.with_columns(pl.lit(1.0).alias("temperature"))
    result, late = run(WindowStep(window, {"temperature": ["count"]}), ones, batch=7, max_delay=10**9 * S)
    assert late.height == 0
    size, _slide, _off = _grid(window)
    ts = with_watermarks(df, 0)[TS].to_numpy()
    keys = df["sensor_id"].to_numpy()
    for row in result.iter_rows(named=True):
        start = pl.Series([row["window_start"]]).dt.epoch("us")[0]
        assert row["window_end"] == pl.Series([start + size]).cast(pl.Datetime("us", "UTC"))[0]
        inside = (ts >= start) & (ts < start + size) & (keys == row["sensor_id"])
        assert row["temperature_count"] == inside.sum() > 0
    # and every record is counted: sum over windows = records x windows per record
    assert int(result["temperature_count"].sum()) == df.height * (size // _slide)


@SETTINGS
@given(
    streams(),
    st.sampled_from([Tumbling("3s"), Sliding("6s", "2s"), Session("2s"), Count(3)]),
    st.integers(1, 10),
    st.integers(0, 8),
    st.sampled_from(["close", "update"]),
    st.sampled_from([0, 2 * S]),
)
def test_restore_is_equivalent_to_uninterrupted(
    df: pl.DataFrame, window: object, batch: int, cut: int, emit: str, lateness: int
) -> None:
    step = WindowStep(
        window,
        {"temperature": ["count", "mean", "std", "first", "p90"]},  # type: ignore[arg-type]
        emit=emit,
        allowed_lateness=f"{lateness}us",
    )  # type: ignore[arg-type]
    full, late_a = run(step, df, batch=batch, max_delay=3 * S)
    resumed, late_b = run(step, df, batch=batch, max_delay=3 * S, snapshot_at=cut)
    assert resumed.equals(full)
    assert late_a.equals(late_b)


@SETTINGS
@given(streams(), st.sampled_from([Tumbling("3s"), Sliding("6s", "2s")]), st.sampled_from([0, 1, 4]), st.integers(1, 9))
def test_late_records_exactly_when_all_windows_expired(
    df: pl.DataFrame, window: Tumbling | Sliding, lateness_s: int, batch: int
) -> None:
    size, slide, off = _grid(window)
    delay = 2 * S
    _, late = run(
        WindowStep(window, {"temperature": ["count"]}, allowed_lateness=lateness_s), df, batch=batch, max_delay=delay
    )
    d = with_watermarks(df, delay)
    last_end = ((pl.col(TS) - off) // slide) * slide + off + size
    want = d.filter(last_end + lateness_s * S <= pl.col(WM))
    assert late.select(TS, "temperature").equals(want.select(TS, "temperature"))
    # late rows keep every column, including the user's ones
    assert set(df.columns) <= set(late.columns)


@SETTINGS
@given(st.integers(1, 3), st.floats(-50, 50))
def test_allowed_lateness_re_emits_an_emitted_window(lateness_s: int, late_value: float) -> None:
    """A record for a closed (emitted) window within the allowed lateness re-emits it with new values."""
    ts = [0.5, 1.0, 3.2, 1.5]  # window [0, 3s) closes at 3.2, then 1.5 arrives within the lateness
    df = pl.DataFrame(
        {
            "sensor_id": ["a"] * 4,
            "timestamp": pl.Series([T0 + int(t * S) for t in ts]).cast(pl.Datetime("us", "UTC")),
            "temperature": [1.0, 2.0, 9.0, late_value],
        }
    )
    step = WindowStep(Tumbling("3s"), {"temperature": ["count", "sum"]}, allowed_lateness=lateness_s)
    result, late = run(step, df, batch=1)
    first = result.filter(pl.col("window_start") == result["window_start"].min())
    assert first["temperature_count"].to_list() == [2, 3]  # original row, then the update row
    assert np.isclose(first["temperature_sum"][1], 3.0 + late_value)
    assert late.height == 0
    assert last_per_window(result).height == 2


def test_record_beyond_allowed_lateness_goes_to_late_output() -> None:
    ts = [0.5, 1.0, 5.5, 1.5]  # 1.5 arrives with watermark 5.5 >= 3 + 2 (lateness)
    df = pl.DataFrame(
        {
            "sensor_id": ["a"] * 4,
            "timestamp": pl.Series([T0 + int(t * S) for t in ts]).cast(pl.Datetime("us", "UTC")),
            "temperature": [1.0, 2.0, 9.0, 4.0],
        }
    )
    result, late = run(WindowStep(Tumbling("3s"), {"temperature": ["count"]}, allowed_lateness="2s"), df, batch=1)
    assert late["temperature"].to_list() == [4.0]
    assert KEY_ID in late.columns and "sensor_id" in late.columns
    assert result["temperature_count"].to_list() == [2, 1]


def test_snapshot_is_msgpack_round_trippable_and_tagged() -> None:
    step = WindowStep(Sliding("6s", "2s"), {"temperature": ["mean", "p50"]})
    logic = step.build(None)
    blob = msgspec.msgpack.encode(logic.snapshot())
    assert b"windows.fixed/1" in blob
    assert isinstance(msgspec.msgpack.decode(blob, type=step.snapshot_type), step.snapshot_type)
