"""WindowStep behaviour: custom aggregations, update mode, freeing state, bad input and validation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tests.windows.helpers import T0, S, last_per_window, make_stream, new_ctx, run
from tidegauge.dataflow.base import END_OF_TIME, TS, WM
from tidegauge.windows import Count, Session, Sliding, Tumbling, WindowStep


def _frame(ts: list[float], temps: list[float | None], keys: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sensor_id": keys or ["a"] * len(ts),
            "timestamp": pl.Series([T0 + int(t * S) for t in ts]).cast(pl.Datetime("us", "UTC")),
            "temperature": pl.Series(temps, dtype=pl.Float64),
            "humidity": [50.0] * len(ts),
        }
    )


@pytest.mark.parametrize("window", [Tumbling("10s"), Sliding("20s", "10s"), Session("3s"), Count(4)])
def test_custom_expressions_sql_and_polars(window: object) -> None:
    df = make_stream(60, keys=2, seed=7)
    aggs = {
        "temperature": [
            "max",
            {"name": "temp_range", "expr": "max(temperature) - min(temperature)"},
            (pl.col("humidity").mean() * 2).alias("hum2"),
        ]
    }
    result, _ = run(WindowStep(window, aggs), df, batch=13)  # type: ignore[arg-type]
    assert result.columns[:6] == ["sensor_id", "window_start", "window_end", "temperature_max", "temp_range", "hum2"]
    final = last_per_window(result)
    assert final.height > 0
    # check each window against the raw rows
    for row in final.iter_rows(named=True):
        if isinstance(window, Count):
            continue  # count windows are checked by the oracle tests
        rows = df.filter(
            (pl.col("sensor_id") == row["sensor_id"])
            & (pl.col("timestamp") >= row["window_start"])
            & (pl.col("timestamp") < row["window_end"])
        )
        assert rows.height > 0
        t = rows["temperature"].drop_nulls()
        if t.is_empty():
            assert row["temp_range"] is None
            continue
        assert math.isclose(row["temp_range"], t.max() - t.min())  # type: ignore[operator]
        assert math.isclose(row["hum2"], rows["humidity"].mean() * 2)  # type: ignore[operator]


def test_update_mode_emits_touched_windows_after_each_batch() -> None:
    df = _frame([0.0, 1.0, 2.0, 11.0], [1.0, 2.0, 3.0, 4.0])
    step = WindowStep(Tumbling("10s"), {"temperature": ["count", "sum"]}, emit="update")
    result, _ = run(step, df, batch=2)
    # batch 1 -> window 0 (2 values); batch 2 -> window 0 (3 values) and window 1 (1 value)
    assert result["temperature_count"].to_list() == [2, 3, 1]
    assert result["temperature_sum"].to_list() == [3.0, 6.0, 4.0]


@pytest.mark.parametrize(
    ("window", "aggs"),
    [
        (Tumbling("5s"), ["mean", "max"]),
        (Tumbling("5s"), ["mean", "p90", "quantile(0.2)"]),
        (Sliding("10s", "5s"), ["std", "first", "p50"]),
        (Session("2s"), ["mean", "p50"]),
        (Count(5), ["sum"]),
    ],
)
def test_state_is_freed_when_windows_close(window: object, aggs: list[str]) -> None:
    df = make_stream(200, keys=5, seed=8)
    ctx = new_ctx()
    from tests.windows.helpers import encode

    data = encode(df, ctx, 0)
    for quantiles in ("exact", "sketch"):
        logic = WindowStep(window, {"temperature": aggs}, quantiles=quantiles).build(None)  # type: ignore[arg-type]
        for start in range(0, data.height, 50):
            part = data.slice(start, 50)
            ctx.watermark = int(part[TS].max())  # type: ignore[arg-type]
            logic.process(part, ctx)
            logic.on_watermark(ctx)
        assert logic.open_windows > 0  # the newest windows are still open
        ctx.watermark = END_OF_TIME
        logic.on_watermark(ctx)
        assert logic.open_windows == 0
        assert logic.buffered_rows == 0


def test_open_state_stays_bounded_on_a_long_stream() -> None:
    df = make_stream(3000, keys=4, seed=9)
    ctx = new_ctx()
    from tests.windows.helpers import encode

    data = encode(df, ctx, 0)
    logic = WindowStep(Tumbling("5s"), {"temperature": ["mean", "p99"]}).build(None)
    peak = 0
    for start in range(0, data.height, 100):
        part = data.slice(start, 100)
        ctx.watermark = int(part[TS].max())  # type: ignore[arg-type]
        logic.process(part, ctx)
        logic.on_watermark(ctx)
        peak = max(peak, logic.buffered_rows)
    assert peak < 200  # at most ~ one batch plus one window of rows, not the whole stream


def test_nulls_and_nan_are_ignored() -> None:
    """NaN is a missing reading, like null: it is not counted and does not poison sum/mean/min/max."""
    df = _frame([0.0, 1.0, 2.0, 3.0, 4.0, 20.0], [1.0, None, float("nan"), 3.0, float("nan"), 5.0])
    aggs = ["count", "sum", "mean", "min", "max", "first", "last", "p50", "std"]
    for window in (Tumbling("10s"), Session("5s"), Count(5)):
        result, _ = run(WindowStep(window, {"temperature": aggs}), df, batch=2)
        row = result.row(0, named=True)
        assert row["temperature_count"] == 2
        assert row["temperature_sum"] == 4.0
        assert row["temperature_mean"] == 2.0
        assert (row["temperature_min"], row["temperature_max"]) == (1.0, 3.0)
        assert (row["temperature_first"], row["temperature_last"]) == (1.0, 3.0)
        assert row["temperature_p50"] == 2.0
        assert math.isclose(row["temperature_std"], np.std([1.0, 3.0], ddof=1))


def test_window_of_only_missing_values_has_null_statistics() -> None:
    df = _frame([0.0, 1.0, 12.0], [None, float("nan"), 1.0])
    result, _ = run(WindowStep(Tumbling("10s"), {"temperature": ["count", "mean", "max", "std", "p50"]}), df, batch=3)
    row = result.row(0, named=True)
    assert row["temperature_count"] == 0
    assert row["temperature_mean"] is None and row["temperature_max"] is None
    assert row["temperature_std"] is None and row["temperature_p50"] is None


def test_first_last_follow_event_time_with_ties_by_arrival() -> None:
    df = _frame([2.0, 1.0, 1.0, 5.0, 5.0, 3.0], [20.0, 10.0, 11.0, 50.0, 51.0, 30.0])
    result, _ = run(WindowStep(Tumbling("10s"), {"temperature": ["first", "last"]}), df, batch=2, max_delay=5 * S)
    assert result.row(0)[3:5] == (10.0, 51.0)


def test_output_schema_and_internal_columns() -> None:
    df = _frame([0.0, 1.0, 12.0], [1.0, 2.0, 3.0], keys=["b", "a", "a"])
    result, _ = run(WindowStep(Tumbling("10s"), {"temperature": ["count", "mean"]}), df, batch=3, final=False)
    assert result.schema["window_start"] == pl.Datetime("us", "UTC")
    assert result.columns[-3:] == ["_tg_key", "_tg_ts", "_tg_wm"]
    assert result["sensor_id"].to_list() == ["b", "a"]  # sorted by key id within a window
    assert result[TS].to_list() == [T0 + 10 * S - 1] * 2
    assert result[WM].to_list() == [T0 + 12 * S] * 2


def test_unknown_field_is_a_value_error_listing_columns() -> None:
    df = _frame([0.0], [1.0])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['pressure'\].*temperature"):
        run(WindowStep(Tumbling("10s"), {"pressure": ["mean"]}), df, batch=1)


def test_non_numeric_field_is_a_value_error() -> None:
    df = _frame([0.0], [1.0])
    with pytest.raises(ValueError, match=r"sensor_id.*numeric"):
        run(WindowStep(Tumbling("10s"), {"sensor_id": ["mean"]}), df, batch=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"aggregate": {"t": ["median2"]}}, "unknown aggregation 'median2'.*valid ones are"),
        ({"aggregate": {"t": ["quantile(1.5)"]}}, "quantile"),
        ({"aggregate": {}}, "non-empty"),
        ({"aggregate": {"t": ["mean"]}, "emit": "often"}, "emit='often'"),
        ({"aggregate": {"t": ["mean"]}, "quantiles": "fast"}, "quantiles='fast'"),
        ({"aggregate": {"t": ["mean"]}, "sketch_alpha": 0.9}, "alpha"),
        ({"aggregate": {"t": ["mean", "mean"]}}, "defined twice"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WindowStep(Tumbling("10s"), **kwargs)  # type: ignore[arg-type]


def test_bad_window_kinds() -> None:
    with pytest.raises(ValueError, match="multiple of slide"):
        Sliding("25s", "10s")
    with pytest.raises(ValueError, match="positive"):
        Tumbling(0)
    with pytest.raises(ValueError, match="positive integer"):
        Count(0)
    with pytest.raises(TypeError, match="Tumbling, Sliding, Session or Count"):
        WindowStep("10s", {"t": ["mean"]})  # type: ignore[arg-type]


def test_restore_rejects_snapshot_of_another_definition() -> None:
    from tidegauge.errors import CheckpointError

    snap = WindowStep(Tumbling("10s"), {"t": ["mean"]}).build(None).snapshot()
    with pytest.raises(CheckpointError, match="different definition"):
        WindowStep(Tumbling("10s"), {"t": ["max"]}).build(snap)


def test_public_names() -> None:
    import tidegauge.aggregate as agg
    import tidegauge.windows as win

    for mod in (win, agg):
        for name in mod.__all__:
            assert hasattr(mod, name), name
    assert {"Tumbling", "Sliding", "Session", "Count", "WindowStep"} <= set(win.__all__)
