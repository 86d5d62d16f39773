"""Helpers shared by the windowers: input checks and the layout of result frames."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from tidegauge.aggregate.spec import AggSpec
from tidegauge.dataflow.base import KEY_ID, TS, WM, StepContext

__all__ = ["check_columns", "clean_nan", "float_values", "result_frame"]

logger = logging.getLogger(__name__)

W = "_tg_w"
"""Internal column: window id inside a windower (pane index of the window's last pane, session id...)."""


def check_columns(df: pl.DataFrame, specs: Sequence[AggSpec]) -> None:
    """Raise ``ValueError`` naming any field the aggregations need that ``df`` does not have."""
    have = set(df.columns)
    missing = sorted({c for s in specs for c in s.columns if c not in have})
    if missing:
        user = sorted(c for c in df.columns if not c.startswith("_tg_"))
        raise ValueError(f"window aggregate: unknown field(s) {missing}; the stream's columns are {user}")


def clean_nan(df: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    """Replace NaN by null in the float ``columns`` (NaN counts as a missing reading)."""
    floats = [c for c in dict.fromkeys(columns) if df.schema[c] in (pl.Float32, pl.Float64)]
    return df.with_columns(pl.col(c).fill_nan(None) for c in floats) if floats else df


def float_values(series: pl.Series) -> np.ndarray:
    """``series`` as a float64 array, NaN for null or NaN."""
    if not series.dtype.is_numeric() and series.dtype != pl.Boolean:
        raise ValueError(
            f"window aggregate: field {series.name!r} has type {series.dtype}; numeric aggregations need a "
            "numeric column (cast it in a .with_columns step first)"
        )
    s = series if series.dtype == pl.Float64 else series.cast(pl.Float64)
    return s.to_numpy()


def result_frame(
    body: pl.DataFrame,
    specs: Sequence[AggSpec],
    ctx: StepContext,
    *,
    end_inclusive: bool = False,
) -> pl.DataFrame:
    """Final layout of window results.

    ``body`` has ``_tg_key`` (UInt32), ``window_start``/``window_end`` (Int64 µs) and one column per spec.
    Returns the key column (decoded), ``window_start``, ``window_end`` (``Datetime("us", "UTC")``), the
    aggregations in spec order, then ``_tg_key``, ``_tg_ts`` (event time of the result: ``window_end - 1µs``
    for exclusive ends) and ``_tg_wm`` (the watermark at emission), sorted by
    (``window_end``, ``window_start``, ``_tg_key``).
    """
    body = body.sort(["window_end", "window_start", KEY_ID], maintain_order=True)
    keys = ctx.keys.decode(body[KEY_ID]).alias(ctx.key_column)
    dt = pl.Datetime("us", "UTC")
    ts = body["window_end"] if end_inclusive else body["window_end"] - 1
    return pl.DataFrame(
        [
            keys,
            body["window_start"].cast(dt),
            body["window_end"].cast(dt),
            *(body[s.name] for s in specs),
            body[KEY_ID].cast(pl.UInt32),
            ts.cast(pl.Int64).alias(TS),
            pl.Series(WM, np.full(body.height, ctx.watermark, dtype=np.int64)),
        ]
    )
