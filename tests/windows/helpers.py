"""Test helpers: synthetic keyed streams with per-record watermarks, a driver and polars oracles."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import polars as pl

from tidegauge.dataflow.base import END_OF_TIME, NO_WATERMARK, TS, WM, StepContext
from tidegauge.dataflow.keys import KeyDictionary

S = 1_000_000
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def with_watermarks(df: pl.DataFrame, max_delay: int) -> pl.DataFrame:
    """Add ``_tg_ts`` and ``_tg_wm`` (running max of the previous records' ts - max_delay)."""
    ts = df["timestamp"].dt.cast_time_unit("us").to_physical().to_numpy().astype(np.int64)
    prev_max = np.concatenate([[NO_WATERMARK + max_delay], np.maximum.accumulate(ts)[:-1]])
    return df.with_columns(pl.Series(TS, ts), pl.Series(WM, prev_max - max_delay))


def make_stream(
    n: int,
    *,
    keys: int = 3,
    seed: int = 0,
    disorder: int = 0,
    step_us: int = 700_000,
    null_frac: float = 0.05,
    nan_frac: float = 0.0,
) -> pl.DataFrame:
    """Readings ``step_us`` apart with up to ``disorder`` µs of shuffling (the watermark is not built yet)."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(n, dtype=np.int64) * step_us
    if disorder:
        ts = ts + rng.integers(-disorder, 1, size=n)
    temp = rng.normal(20, 5, n).round(3)
    temp[rng.random(n) < null_frac] = np.nan
    temp_col = pl.Series("temperature", temp).fill_nan(None)
    if nan_frac:
        nan = rng.random(n) < nan_frac
        temp_col = temp_col.scatter(np.flatnonzero(nan), float("nan"))
    return pl.DataFrame(
        {
            "sensor_id": [f"s{k}" for k in rng.integers(0, keys, n)],
            "timestamp": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "temperature": temp_col,
            "humidity": rng.uniform(0, 100, n).round(2),
        }
    )


def new_ctx() -> StepContext:
    return StepContext(step_id="w", key_column="sensor_id", time_column="timestamp", keys=KeyDictionary())


def encode(df: pl.DataFrame, ctx: StepContext, max_delay: int) -> pl.DataFrame:
    df = with_watermarks(df, max_delay)
    return df.with_columns(ctx.keys.encode(df["sensor_id"]))


def run(
    step: Any,
    df: pl.DataFrame,
    *,
    batch: int,
    max_delay: int = 0,
    snapshot_at: int | None = None,
    final: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Drive ``step`` over ``df`` in batches; returns (results, late rows).

    With ``snapshot_at`` the logic is snapshotted after that many batches, the snapshot goes through
    msgpack, and a rebuilt logic continues.
    """
    ctx = new_ctx()
    data = encode(df, ctx, max_delay)
    logic = step.build(None)
    outs: list[pl.DataFrame] = []
    ts_max = NO_WATERMARK + max_delay
    for i, start in enumerate(range(0, data.height, batch)):
        if snapshot_at is not None and i == snapshot_at:
            blob = msgspec.msgpack.encode(logic.snapshot())
            logic = step.build(msgspec.msgpack.decode(blob, type=step.snapshot_type))
        part = data.slice(start, batch)
        ts_max = max(ts_max, int(part[TS].max()))  # type: ignore[arg-type]
        ctx.watermark = ts_max - max_delay
        for out in (logic.process(part, ctx), logic.on_watermark(ctx)):
            if out is not None:
                outs.append(out)
    if final:
        ctx.watermark = END_OF_TIME
        out = logic.on_watermark(ctx)
        if out is not None:
            outs.append(out)
    late = ctx.side_outputs.get("late", [])
    result = pl.concat(outs) if outs else pl.DataFrame()
    return result, (pl.concat(late) if late else data.clear())


def last_per_window(result: pl.DataFrame) -> pl.DataFrame:
    """Final value per (key, window): the last emitted row."""
    return (
        result.drop(WM)
        .group_by(["sensor_id", "window_start", "window_end"], maintain_order=True)
        .last()
        .sort(["sensor_id", "window_start", "window_end"])
    )


ORACLE_AGGS = ["count", "sum", "mean", "min", "max", "std", "var", "first", "last", "p50", "p99", "quantile(0.75)"]


def oracle_exprs(field: str = "temperature") -> list[pl.Expr]:
    """Independent polars definitions of :data:`ORACLE_AGGS` (input sorted by arrival, NaN -> null)."""
    c = pl.col(field)
    by_time = c.sort_by("timestamp", maintain_order=True).drop_nulls()
    return [
        c.count().alias(f"{field}_count"),
        c.sum().alias(f"{field}_sum"),
        c.mean().alias(f"{field}_mean"),
        c.min().alias(f"{field}_min"),
        c.max().alias(f"{field}_max"),
        c.std().alias(f"{field}_std"),
        c.var().alias(f"{field}_var"),
        by_time.first().alias(f"{field}_first"),
        by_time.last().alias(f"{field}_last"),
        c.quantile(0.5, interpolation="linear").alias(f"{field}_p50"),
        c.quantile(0.99, interpolation="linear").alias(f"{field}_p99"),
        c.quantile(0.75, interpolation="linear").alias(f"{field}_p75"),
    ]


def assert_frames_close(got: pl.DataFrame, want: pl.DataFrame, *, rel: float = 1e-9) -> None:
    """Same columns and rows; floats within ``rel`` (nulls must match)."""
    assert got.columns == want.columns, (got.columns, want.columns)
    assert got.height == want.height, (got.height, want.height)
    for col in want.columns:
        g, w = got[col], want[col]
        assert g.null_count() == w.null_count() and (g.is_null() == w.is_null()).all(), col
        if w.dtype.is_float():
            gv, wv = g.drop_nulls().to_numpy(), w.drop_nulls().to_numpy()
            np.testing.assert_allclose(gv, wv, rtol=rel, atol=1e-9, err_msg=col)
        else:
            assert g.cast(w.dtype).to_list() == w.to_list(), col
