"""Window results against independent polars group-by oracles, for every window kind and aggregation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.windows.helpers import (
    ORACLE_AGGS,
    S,
    assert_frames_close,
    last_per_window,
    make_stream,
    oracle_exprs,
    run,
    with_watermarks,
)
from tidegauge.windows import Count, Session, Sliding, Tumbling, WindowStep

AGGS = {"temperature": ORACLE_AGGS}
OUT_COLS = ["sensor_id", "window_start", "window_end", *[e.meta.output_name() for e in oracle_exprs()]]


def _finish(df: pl.DataFrame, start: pl.Expr, end: pl.Expr) -> pl.DataFrame:
    dt = pl.Datetime("us", "UTC")
    return (
        df.fill_nan(None)
        .with_columns(window_start=start, window_end=end)
        .group_by(["sensor_id", "window_start", "window_end"], maintain_order=True)
        .agg(oracle_exprs())
        .with_columns(pl.col("window_start").cast(dt), pl.col("window_end").cast(dt))
        .sort(["sensor_id", "window_start", "window_end"])
        .select(OUT_COLS)
    )


def oracle_fixed(df: pl.DataFrame, size: int, slide: int, offset: int, delay: int, lateness: int) -> pl.DataFrame:
    """Every record in each window [s, s + size) with s on the slide grid, unless too late for it."""
    d = with_watermarks(df, delay)
    first = ((pl.col("_tg_ts") - offset) // slide) * slide + offset
    d = d.with_columns(pl.int_ranges(0, size // slide).alias("_i")).explode("_i")
    d = d.with_columns((first - pl.col("_i") * slide).alias("_s"))
    d = d.filter(pl.col("_s") + size + lateness > pl.col("_tg_wm"))
    return _finish(d, pl.col("_s"), pl.col("_s") + size)


def oracle_session(df: pl.DataFrame, gap: int) -> pl.DataFrame:
    d = with_watermarks(df, 0).with_row_index("_seq").sort(["sensor_id", "_tg_ts", "_seq"])
    brk = (pl.col("_tg_ts").diff().over("sensor_id") >= gap).fill_null(True)
    d = d.with_columns(brk.cum_sum().over("sensor_id").alias("_sid")).sort("_seq")
    start = pl.col("_tg_ts").min().over("sensor_id", "_sid")
    return _finish(d, start, pl.col("_tg_ts").max().over("sensor_id", "_sid") + gap)


def oracle_count(df: pl.DataFrame, n: int) -> pl.DataFrame:
    d = with_watermarks(df, 0).with_columns((pl.int_range(pl.len()).over("sensor_id") // n).alias("_c"))
    over = ("sensor_id", "_c")
    return _finish(d, pl.col("_tg_ts").min().over(over), pl.col("_tg_ts").max().over(over))


def got(result: pl.DataFrame) -> pl.DataFrame:
    return last_per_window(result).select(OUT_COLS)


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
@pytest.mark.parametrize(
    ("window", "size", "slide", "offset"),
    [
        (Tumbling("5s"), 5 * S, 5 * S, 0),
        (Tumbling("5s", offset="2s"), 5 * S, 5 * S, 2 * S),
        (Sliding("6s", "2s"), 6 * S, 2 * S, 0),
    ],
    ids=["tumbling", "tumbling-offset", "sliding"],
)
def test_fixed_windows_match_oracle_in_order(
    window: Tumbling | Sliding, size: int, slide: int, offset: int, batch: int
) -> None:
    df = make_stream(120, keys=3, seed=1)
    result, late = run(WindowStep(window, AGGS), df, batch=batch)
    assert late.height == 0
    assert_frames_close(got(result), oracle_fixed(df, size, slide, offset, 0, 0))


@pytest.mark.parametrize("batch", [1, 5, 33, 1000])
@pytest.mark.parametrize("window", [Tumbling("4s"), Sliding("6s", "2s")], ids=["tumbling", "sliding"])
@pytest.mark.parametrize("lateness", [0, 3 * S])
def test_fixed_windows_out_of_order(window: Tumbling | Sliding, lateness: int, batch: int) -> None:
    """Disorder beyond the watermark bound: late rows, allowed lateness, same final values for any batching."""
    delay = 2 * S
    df = make_stream(150, keys=3, seed=2, disorder=14 * S)
    step = WindowStep(window, AGGS, allowed_lateness=f"{lateness}us")
    result, late = run(step, df, batch=batch, max_delay=delay)
    size = window.size_us
    slide = window.size_us if isinstance(window, Tumbling) else window.slide_us
    assert_frames_close(got(result), oracle_fixed(df, size, slide, 0, delay, lateness))
    # late rows: exactly those whose every window ended lateness before their watermark
    d = with_watermarks(df, delay)
    last_end = (pl.col("_tg_ts") // slide) * slide + size
    want_late = d.filter(last_end + lateness <= pl.col("_tg_wm"))
    assert late.select("timestamp", "temperature").equals(want_late.select("timestamp", "temperature"))
    assert want_late.height > 0  # the scenario really exercises lateness


@pytest.mark.parametrize("batch", [1, 9, 1000])
def test_session_matches_oracle(batch: int) -> None:
    rng = np.random.default_rng(3)
    df = make_stream(100, keys=3, seed=3, step_us=1 * S)
    # irregular spacing so sessions both merge and split
    gaps = np.cumsum(rng.choice([1, 1, 2, 9], size=df.height)) * S
    df = df.with_columns(pl.Series("timestamp", 1_767_225_600 * S + gaps).cast(pl.Datetime("us", "UTC")))
    result, late = run(WindowStep(Session("4s"), AGGS), df, batch=batch)
    assert late.height == 0
    assert_frames_close(got(result), oracle_session(df, 4 * S))


@pytest.mark.parametrize("batch", [1, 4, 1000])
def test_session_out_of_order_merges(batch: int) -> None:
    """A record arriving late (within the bound) between two sessions merges them."""
    base = 1_767_225_600 * S
    ts = [0, 1, 7, 8, 4, 20]  # 4 bridges 1 and 7 with gap 4s
    df = pl.DataFrame(
        {
            "sensor_id": ["a"] * 6,
            "timestamp": pl.Series([base + t * S for t in ts]).cast(pl.Datetime("us", "UTC")),
            "temperature": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "humidity": [0.0] * 6,
        }
    )
    result, late = run(
        WindowStep(Session("4s"), {"temperature": ["count", "sum", "first", "last"]}), df, batch=batch, max_delay=5 * S
    )
    final = last_per_window(result)
    assert final["temperature_count"].to_list() == [5, 1]
    assert final["temperature_sum"].to_list() == [15.0, 6.0]
    assert final["temperature_first"].to_list() == [1.0, 6.0]
    assert final["temperature_last"].to_list() == [4.0, 6.0]
    assert late.height == 0


@pytest.mark.parametrize("batch", [1, 6, 1000])
def test_count_windows_match_oracle(batch: int) -> None:
    df = make_stream(100, keys=3, seed=4, disorder=3 * S)
    result, _ = run(WindowStep(Count(7), AGGS), df, batch=batch, max_delay=3 * S)
    want = oracle_count(df, 7)
    assert_frames_close(got(result), want)
    # partial windows (fewer than 7 records) were emitted at end of input
    assert (want["temperature_count"] < 7).any()


def test_count_windows_emit_as_soon_as_full() -> None:
    df = make_stream(12, keys=1, seed=5, null_frac=0)
    result, _ = run(WindowStep(Count(5), {"temperature": ["count"]}), df, batch=12, final=False)
    assert result["temperature_count"].to_list() == [5, 5]  # the partial window of 2 waits for end of input


def test_sketch_quantiles_within_documented_error() -> None:
    df = make_stream(400, keys=2, seed=6, null_frac=0).with_columns(pl.col("temperature").abs() + 1)
    aggs = {"temperature": ["p50", "p90", "p99", "quantile(0.75)"]}
    for window in (Tumbling("60s"), Sliding("60s", "20s"), Session("2s"), Count(50)):
        exact, _ = run(WindowStep(window, aggs), df, batch=37)
        approx, _ = run(WindowStep(window, aggs, quantiles="sketch", sketch_alpha=0.01), df, batch=37)
        e, a = last_per_window(exact), last_per_window(approx)
        assert e.height == a.height > 0
        for col in ("temperature_p50", "temperature_p90", "temperature_p99", "temperature_p75"):
            ev, av = e[col].to_numpy(), a[col].to_numpy()
            assert np.all(np.abs(av - ev) <= 0.01 * np.abs(ev) + 1e-12), (window, col)
            assert not np.allclose(av, ev, rtol=1e-12)  # it is an approximation, not the exact path
