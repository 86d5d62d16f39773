"""The ingest stage: what every source's batches go through before the first step.

In order: rows the source marked unparsable (``_tg_error``) are dead-lettered; rows without a key or
with a missing/unreadable event time are dead-lettered; the time column is normalised to
``Datetime("us", "UTC")``; keys are encoded to dense ids; each record gets the watermark in force when it
arrived; records stamped too far in the future are dead-lettered. What is left carries the internal
columns described in :mod:`tidegauge.dataflow.base`.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from tidegauge._time import format_duration, timestamp_column_to_micros
from tidegauge.dataflow.base import (
    END_OF_TIME,
    ERROR,
    INTERNAL_COLUMNS,
    KEY_ID,
    RAW,
    TS,
    WM,
    StepContext,
    with_series,
    without,
)
from tidegauge.dataflow.partitions import PartitionedSourceClock
from tidegauge.dataflow.watermark import SourceClock

__all__ = ["ingest_batch"]

_UTC_US = pl.Datetime("us", "UTC")

logger = logging.getLogger(__name__)


def ingest_batch(
    df: pl.DataFrame, clock: SourceClock, ctx: StepContext, *, other_watermark: int
) -> pl.DataFrame:
    """Validate, key and timestamp one raw source batch; rejects go to ``ctx.dead_letter``.

    ``other_watermark`` is the lowest watermark of the flow's other sources: a record's ``_tg_wm`` is
    the flow's watermark when it arrived, so it is capped by it.
    """
    df = without(df, INTERNAL_COLUMNS)  # without/with_series: no polars query per batch for column moves
    if ERROR in df.columns:
        # the null count first: a batch without unparsable rows (the usual one) then costs no filter query
        if df[ERROR].null_count() < df.height:
            bad = df.filter(pl.col(ERROR).is_not_null())
            payload = bad.select(pl.col(RAW).alias("payload")) if RAW in bad.columns else bad.drop(ERROR)
            ctx.dead_letter(payload, bad[ERROR])
            df = df.filter(pl.col(ERROR).is_null())
    df = without(df, (ERROR, RAW))
    if not df.height:
        return df
    key, time = ctx.key_column, ctx.time_column
    for column in (key, time):
        if column not in df.columns:
            ctx.dead_letter(df, f"missing column {column!r} (the flow's {'key' if column == key else 'time'})")
            return df.clear()
    if df[key].null_count():
        ctx.dead_letter(df.filter(pl.col(key).is_null()), f"missing key {key!r}")
        df = df.filter(pl.col(key).is_not_null())
    try:
        ts = timestamp_column_to_micros(df[time])
    except TypeError as exc:
        ctx.dead_letter(df, str(exc))
        return df.clear()
    if ts.null_count():
        bad_ts = ts.is_null()
        ctx.dead_letter(df.filter(bad_ts), f"missing or unreadable timestamp in {time!r}")
        df, ts = df.filter(~bad_ts), ts.filter(~bad_ts)
    if not df.height:
        return df
    ts_np = ts.to_numpy()
    if isinstance(clock, PartitionedSourceClock):
        part = clock.partition_by
        wm, future = clock.assign_partitioned(ts_np, df[part] if part in df.columns else None, ctx.now_us)
    else:
        wm, future = clock.assign(ts_np, ctx.now_us)
    if other_watermark < END_OF_TIME:
        wm = np.minimum(wm, other_watermark)
    normalised = [] if df.schema[time] == _UTC_US else [pl.Series(time, ts_np).cast(_UTC_US)]
    df = with_series(
        df,
        *normalised,
        ctx.keys.encode(df[key]),
        pl.Series(TS, ts_np, dtype=pl.Int64),
        pl.Series(WM, wm, dtype=pl.Int64),
    )
    if future.any():
        fut = pl.Series("future", future)
        limit = format_duration(clock.config.max_future or 0)
        rows = df.filter(fut)
        # the distance from what the record was judged against: the watermark, or what most recent records
        # say if that is later (see tidegauge.dataflow.watermark)
        ahead = pl.Series("ahead", (ts_np[future] - clock.future_refs) / 1_000_000).round(3)
        reason = pl.format("future: timestamp is {}s ahead of the watermark and of most recent records "
                           "(max_future {})", pl.lit(ahead), pl.lit(limit))
        ctx.dead_letter(rows, pl.select(reason).to_series())
        df = df.filter(~fut)
    return df


def user_columns(df: pl.DataFrame) -> list[str]:
    """Column names of ``df`` that are not tidegauge's."""
    return [c for c in df.columns if c not in (KEY_ID, TS, WM)]
