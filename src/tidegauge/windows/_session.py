"""Session windows per key: buffered rows, sessions recomputed with sort + gap split.

Open records are kept in one polars frame. At each watermark, sessions are recomputed per key (sorted by
event time, a new session wherever the gap to the previous record is ``>= gap``), so an out-of-order
record can merge two sessions. A session ``[first, last + gap)`` is emitted when the watermark reaches
``last + gap`` and freed when it reaches ``last + gap + allowed_lateness``. A record is late when its own
session ``[ts, ts + gap)`` is already beyond the allowed lateness (``ts + gap + allowed_lateness <= _tg_wm``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
import polars as pl

from tidegauge.aggregate.spec import AggSpec
from tidegauge.checkpoint.codec import frame_to_ipc, ipc_to_frame
from tidegauge.dataflow.base import KEY_ID, TS, WM, StepContext
from tidegauge.errors import CheckpointError
from tidegauge.windows._buffered import SEQ, aggregate_rows, needed_columns
from tidegauge.windows._output import W, check_columns, clean_nan, result_frame

__all__ = ["SessionWindowSnapshot", "SessionWindower"]

logger = logging.getLogger(__name__)

NEW = "_tg_new"


class SessionWindowSnapshot(msgspec.Struct, frozen=True, tag="windows.session/1"):
    """Open state of a session window step: the buffered rows and the arrival counter."""

    spec: str
    seq: int
    rows: bytes | None


class SessionWindower:
    """Logic of a :class:`~tidegauge.windows.Session` window step."""

    def __init__(
        self,
        *,
        gap_us: int,
        lateness_us: int,
        specs: Sequence[AggSpec],
        emit: Literal["close", "update"],
        quantiles: Literal["exact", "sketch"],
        alpha: float,
        spec_text: str,
        resume: SessionWindowSnapshot | None = None,
    ) -> None:
        self._gap, self._late = gap_us, lateness_us
        self._specs = tuple(specs)
        self._emit_mode = emit
        self._sketch = quantiles == "sketch"
        self._alpha = alpha
        self._spec_text = spec_text
        self._cols = needed_columns(specs)
        self._rows: pl.DataFrame | None = None
        self._seq = 0
        self._pending: list[pl.DataFrame] = []
        if resume is not None:
            if resume.spec != spec_text:
                raise CheckpointError(f"session snapshot is for {resume.spec}; this step is {spec_text}")
            self._seq = resume.seq
            self._rows = ipc_to_frame(resume.rows) if resume.rows is not None else None

    @property
    def open_windows(self) -> int:
        """Number of open sessions."""
        return 0 if self._rows is None else int(self._sessions(self._rows)[W].n_unique())

    @property
    def buffered_rows(self) -> int:
        return 0 if self._rows is None else self._rows.height

    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        if df.height:
            check_columns(df, self._specs)
            ts, wm = df[TS].to_numpy(), df[WM].to_numpy()
            late = ts + self._gap + self._late <= wm
            if late.any():
                ctx.emit("late", df.filter(pl.Series(late)))
                df, ts, wm = df.filter(pl.Series(~late)), ts[~late], wm[~late]
            # a record behind the watermark by more than the lateness may find a session already
            # expired: finalise up to its watermark first, as a record-at-a-time engine would
            cuts = [int(i) for i in np.flatnonzero(wm > ts + self._late) if i > 0]
            for a, b in zip([0, *cuts], [*cuts, df.height], strict=False):
                if a > 0:
                    self._advance(int(wm[a]))
                self._append(df.slice(a, b - a))
        if self._emit_mode == "update" and self._rows is not None:
            self._emit(self._sessions(self._rows), pl.lit(True))
        return self._flush(ctx)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        self._advance(ctx.watermark)
        return self._flush(ctx)

    def snapshot(self) -> SessionWindowSnapshot:
        rows = None if self._rows is None else frame_to_ipc(self._rows)
        return SessionWindowSnapshot(spec=self._spec_text, seq=self._seq, rows=rows)

    def _append(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        part = clean_nan(df.select(*self._cols, KEY_ID, TS), self._cols).with_columns(
            pl.int_range(self._seq, self._seq + df.height, dtype=pl.Int64).alias(SEQ), pl.lit(True).alias(NEW)
        )
        self._seq += df.height
        self._rows = part if self._rows is None else pl.concat([self._rows, part])

    def _sessions(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` with a session id and the session's first/last event time."""
        rows = rows.sort([KEY_ID, TS, SEQ])
        brk = (pl.col(KEY_ID) != pl.col(KEY_ID).shift(1)) | (pl.col(TS) - pl.col(TS).shift(1) >= self._gap)
        rows = rows.with_columns(brk.fill_null(True).cum_sum().alias(W))
        return rows.with_columns(
            pl.col(TS).min().over(W).alias("window_start"),
            (pl.col(TS).max().over(W) + self._gap).alias("window_end"),
        )

    def _emit(self, rows: pl.DataFrame, which: pl.Expr) -> None:
        """Emit the sessions of ``rows`` matching ``which`` that hold new rows; mark them emitted."""
        pick = rows.filter((which & pl.col(NEW)).any().over(W))
        if not pick.height:
            return
        body = aggregate_rows(
            pick, [W, KEY_ID, "window_start", "window_end"], self._specs, sketch=self._sketch, alpha=self._alpha
        )
        self._pending.append(body)
        assert self._rows is not None  # rows came from self._rows
        self._rows = rows.with_columns(pl.when(which).then(False).otherwise(pl.col(NEW)).alias(NEW)).select(
            self._rows.columns
        )

    def _advance(self, wm: int) -> None:
        if self._rows is None:
            return
        rows = self._sessions(self._rows)
        closed = pl.col("window_end") <= wm
        self._emit(rows, closed if self._emit_mode == "close" else closed & (pl.col("window_end") + self._late <= wm))
        rows = self._sessions(self._rows)
        kept = rows.filter(pl.col("window_end") + self._late > wm).select(self._rows.columns)
        self._rows = kept if kept.height else None

    def _flush(self, ctx: StepContext) -> pl.DataFrame | None:
        if not self._pending:
            return None
        body = pl.concat(self._pending, how="vertical_relaxed")
        self._pending = []
        return result_frame(body, self._specs, ctx)
