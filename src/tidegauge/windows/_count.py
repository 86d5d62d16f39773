"""Count windows: per key, every ``n`` records in arrival order.

The records of each key's unfinished window are buffered; a window is emitted as soon as it holds ``n``
records. With ``emit="update"`` the unfinished windows touched by a batch are emitted after it too. When
the watermark reaches end of time (end of input), unfinished windows are emitted as they are. Count
windows have no lateness: every record counts. ``window_start``/``window_end`` are the smallest and largest
event time of the window's records (``window_end`` inclusive, so ``_tg_ts = window_end``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec
import polars as pl

from tidegauge.aggregate.spec import AggSpec
from tidegauge.checkpoint.codec import frame_to_ipc, ipc_to_frame
from tidegauge.dataflow.base import END_OF_TIME, KEY_ID, TS, StepContext
from tidegauge.errors import CheckpointError
from tidegauge.windows._buffered import SEQ, aggregate_rows, needed_columns
from tidegauge.windows._output import W, check_columns, clean_nan, result_frame

__all__ = ["CountWindowSnapshot", "CountWindower"]

logger = logging.getLogger(__name__)


class CountWindowSnapshot(msgspec.Struct, frozen=True, tag="windows.count/1"):
    """Open state of a count window step: the rows of unfinished windows and the arrival counter."""

    spec: str
    seq: int
    rows: bytes | None


class CountWindower:
    """Logic of a :class:`~tidegauge.windows.Count` window step."""

    def __init__(
        self,
        *,
        n: int,
        specs: Sequence[AggSpec],
        emit: Literal["close", "update"],
        quantiles: Literal["exact", "sketch"],
        alpha: float,
        spec_text: str,
        resume: CountWindowSnapshot | None = None,
    ) -> None:
        self._n = n
        self._specs = tuple(specs)
        self._emit_mode = emit
        self._sketch = quantiles == "sketch"
        self._alpha = alpha
        self._spec_text = spec_text
        self._cols = needed_columns(specs)
        self._rows: pl.DataFrame | None = None
        self._seq = 0
        if resume is not None:
            if resume.spec != spec_text:
                raise CheckpointError(f"count-window snapshot is for {resume.spec}; this step is {spec_text}")
            self._seq = resume.seq
            self._rows = ipc_to_frame(resume.rows) if resume.rows is not None else None

    @property
    def open_windows(self) -> int:
        """Number of unfinished windows (keys with buffered records)."""
        return 0 if self._rows is None else int(self._rows[KEY_ID].n_unique())

    @property
    def buffered_rows(self) -> int:
        return 0 if self._rows is None else self._rows.height

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        if not df.height:
            return None
        check_columns(df, self._specs)
        part = clean_nan(df.select(*self._cols, KEY_ID, TS), self._cols).with_columns(
            pl.int_range(self._seq, self._seq + df.height, dtype=pl.Int64).alias(SEQ)
        )
        self._seq += df.height
        rows = part if self._rows is None else pl.concat([self._rows, part])
        rows = rows.sort(SEQ).with_columns((pl.int_range(pl.len()).over(KEY_ID) // self._n).alias(W))
        full = pl.len().over(KEY_ID, W) == self._n
        out = [rows.filter(full)]
        rest = rows.filter(~full)
        if self._emit_mode == "update":
            touched = part[KEY_ID].unique()
            out.append(rest.filter(pl.col(KEY_ID).is_in(touched.implode())))
        self._rows = rest.drop(W) if rest.height else None
        return self._result(pl.concat(out), ctx)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        if ctx.watermark < END_OF_TIME or self._rows is None:
            return None
        rows, self._rows = self._rows.with_columns(pl.lit(0, pl.Int64).alias(W)), None
        return self._result(rows, ctx)

    def snapshot(self) -> CountWindowSnapshot:
        rows = None if self._rows is None else frame_to_ipc(self._rows)
        return CountWindowSnapshot(spec=self._spec_text, seq=self._seq, rows=rows)

    def _result(self, rows: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        if not rows.height:
            return None
        rows = rows.with_columns(
            pl.col(TS).min().over(KEY_ID, W).alias("window_start"),
            pl.col(TS).max().over(KEY_ID, W).alias("window_end"),
        )
        body = aggregate_rows(
            rows, [KEY_ID, W, "window_start", "window_end"], self._specs, sketch=self._sketch, alpha=self._alpha
        )
        return result_frame(body, self._specs, ctx, end_inclusive=True)
