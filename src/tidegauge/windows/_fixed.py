"""Tumbling and sliding windows: columnar pane state folded by compiled kernels.

Event time is cut into panes of length ``p`` (the window size for tumbling windows, the slide for sliding
ones); a window is ``m`` consecutive panes and is identified by its last pane ``w`` (it ends at
``offset + (w + 1) * p``). Mergeable aggregations live in flat arrays indexed by
``(pane % ring) * key_capacity + key_id``; exact quantiles and custom expressions buffer their rows in
polars frames, and sketch quantiles keep bucket counts per pane. Everything of a window is freed once the
watermark passes ``window_end + allowed_lateness``.

Lateness is judged per record against its own ``_tg_wm``: a record is late when every window holding it
has ``end + allowed_lateness <= _tg_wm``. For sliding windows, a record that is too late for only some of
its windows splits the batch there, so that the expired windows are finalised before it is folded and
results never depend on batch boundaries.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
import polars as pl

from tidegauge.aggregate.sketch import bucket_expr, sketch_quantiles
from tidegauge.aggregate.spec import AggSpec, polars_expression
from tidegauge.checkpoint.codec import ArrayBlob, frame_to_ipc, ipc_to_frame, pack_array, unpack_array
from tidegauge.dataflow.base import KEY_ID, TS, WM, StepContext
from tidegauge.errors import CheckpointError
from tidegauge.windows._fixed_state import PaneState
from tidegauge.windows._output import W, check_columns, clean_nan, result_frame

__all__ = ["FixedWindowSnapshot", "FixedWindower"]

logger = logging.getLogger(__name__)

PANE = "_tg_pane"


class FixedWindowSnapshot(msgspec.Struct, frozen=True, tag="windows.fixed/1"):
    """Open state of a tumbling/sliding window step."""

    spec: str
    ring: int
    keys: int
    lo: int | None
    hi: int
    closed: int
    freed: int
    arrays: dict[str, ArrayBlob]
    buffer: bytes | None
    sketches: dict[str, bytes]


class FixedWindower:
    """Logic of a tumbling (``panes=1``) or sliding window step. Built by :class:`WindowStep`."""

    def __init__(
        self,
        *,
        pane_us: int,
        panes: int,
        offset_us: int,
        lateness_us: int,
        specs: Sequence[AggSpec],
        emit: Literal["close", "update"],
        quantiles: Literal["exact", "sketch"],
        alpha: float,
        spec_text: str,
        resume: FixedWindowSnapshot | None = None,
    ) -> None:
        self._p, self._m, self._off, self._late = pane_us, panes, offset_us, lateness_us
        self._specs = tuple(specs)
        self._emit_mode = emit
        self._alpha = alpha
        self._spec_text = spec_text
        self._fast = [s for s in specs if s.fast]
        self._sketch = [s for s in specs if s.agg == "quantile" and quantiles == "sketch"]
        self._buffered = [s for s in specs if not s.fast and s not in self._sketch]
        self._buf_exprs = [polars_expression(s, TS) for s in self._buffered]
        self._buf_cols = list(dict.fromkeys(c for s in self._buffered for c in s.columns))
        self._sketch_fields = list(dict.fromkeys(s.field for s in self._sketch if s.field))
        self._state = PaneState(self._fast, panes)
        self._buf: list[pl.DataFrame] = []
        self._sk: dict[str, list[pl.DataFrame]] = {f: [] for f in self._sketch_fields}
        self._pending: list[pl.DataFrame] = []
        self._checked = False
        if resume is not None:
            self._restore(resume)

    # -- introspection ------------------------------------------------------------------------------------
    @property
    def open_windows(self) -> int:
        """Number of (key, pane) cells holding data (for tumbling windows: open (key, window) pairs)."""
        return self._state.open_cells

    @property
    def buffered_rows(self) -> int:
        """Raw rows held for exact quantiles / custom expressions, plus sketch bucket rows."""
        return sum(f.height for f in self._buf) + sum(f.height for fs in self._sk.values() for f in fs)

    # -- StepLogic ----------------------------------------------------------------------------------------
    def process(self, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame | None:
        if df.height:
            self._process(df, ctx)
        if self._emit_mode == "update":
            self._emit_dirty(self._state.top)
        return self._flush(ctx)

    def on_watermark(self, ctx: StepContext) -> pl.DataFrame | None:
        self._advance(ctx.watermark)
        return self._flush(ctx)

    def snapshot(self) -> FixedWindowSnapshot:
        st = self._state
        return FixedWindowSnapshot(
            spec=self._spec_text,
            ring=st.ring,
            keys=st.kcap,
            lo=st.lo,
            hi=st.hi,
            closed=st.closed,
            freed=st.freed,
            arrays={k: pack_array(v) for k, v in st.arrays.items()},
            buffer=frame_to_ipc(pl.concat(self._buf)) if self._buf else None,
            sketches={f: frame_to_ipc(pl.concat(fs)) for f, fs in self._sk.items() if fs},
        )

    def _restore(self, snap: FixedWindowSnapshot) -> None:
        if snap.spec != self._spec_text:
            raise CheckpointError(
                f"window snapshot was taken with a different definition ({snap.spec}); "
                f"this step is {self._spec_text}. Restore with the same window and aggregations."
            )
        st = self._state
        st.ring, st.kcap, st.lo, st.hi = snap.ring, snap.keys, snap.lo, snap.hi
        st.closed, st.freed = snap.closed, snap.freed
        st.arrays = {k: unpack_array(v) for k, v in snap.arrays.items()}
        self._buf = [ipc_to_frame(snap.buffer)] if snap.buffer is not None else []
        for f, data in snap.sketches.items():
            self._sk[f] = [ipc_to_frame(data)]

    # -- folding ------------------------------------------------------------------------------------------
    def _process(self, df: pl.DataFrame, ctx: StepContext) -> None:
        if not self._checked:
            check_columns(df, self._specs)
            self._checked = True
        p, m, st = self._p, self._m, self._state
        ts = df[TS].to_numpy()
        j = (ts - self._off) // p
        # last expired window for each record; never below what is already freed
        f = np.maximum((df[WM].to_numpy() - self._late - self._off) // p - 1, st.freed)
        late = j + (m - 1) <= f
        if late.any():
            ctx.emit("late", df.filter(pl.Series(late)))
            keep = ~late
            df, ts, j, f = df.filter(pl.Series(keep)), ts[keep], j[keep], f[keep]
            if not df.height:
                return
        starts = [0]
        if m > 1:
            # records too late for their earliest window(s): finalise those windows before folding them
            starts += [int(i) for i in np.flatnonzero(j <= f) if i > 0]
        wms = df[WM].to_numpy()
        starts.append(df.height)
        for a, b in itertools.pairwise(starts):
            if a > 0:
                self._advance(int(wms[a]))
            seg = df.slice(a, b - a) if (a, b) != (0, df.height) else df
            self._fold(seg, ts[a:b], j[a:b], f[a:b])

    def _fold(self, df: pl.DataFrame, ts: np.ndarray, j: np.ndarray, f: np.ndarray) -> None:
        key = df[KEY_ID].to_numpy()
        st = self._state
        st.fold(
            key,
            ts,
            j,
            f,
            {s.field: df[s.field] for s in self._fast if s.field is not None},
            update=self._emit_mode == "update",
        )
        if self._buffered:
            cols = [*self._buf_cols, KEY_ID, TS]
            self._buf.append(clean_nan(df.select(cols), self._buf_cols).with_columns(pl.Series(PANE, j)))
        for field in self._sketch_fields:
            counts = (
                clean_nan(df.select(field, KEY_ID), [field])
                .select(pl.Series(PANE, j), KEY_ID, bucket_expr(field, self._alpha).alias("b"))
                .drop_nulls("b")
                .group_by([PANE, KEY_ID, "b"])
                .agg(pl.len().cast(pl.Int64).alias("n"))
            )
            self._sk[field].append(counts)
            if len(self._sk[field]) > 16:  # bound the number of chunks; amortised compaction
                self._sk[field] = [self._compact(self._sk[field])]

    @staticmethod
    def _compact(frames: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(frames).group_by([PANE, KEY_ID, "b"]).agg(pl.col("n").sum())

    # -- closing and emitting -----------------------------------------------------------------------------
    def _advance(self, wm: int) -> None:
        """Emit what ``wm`` closes (and dirty windows), then free what it expires."""
        st, p, off = self._state, self._p, self._off
        last_closed = (wm - off) // p - 1
        last_expired = max((wm - self._late - off) // p - 1, st.freed)
        if self._emit_mode == "close":
            self._emit_dirty(st.closed)
            if st.lo is not None and last_closed > st.closed:
                pairs = st.closed_pairs(st.closed, last_closed)
                if pairs is not None:
                    self._pending.append(self._emit(*pairs))
            st.closed = max(st.closed, last_closed)
        else:
            self._emit_dirty(last_expired)
        if last_expired > st.freed:
            st.free(last_expired)
            lim = last_expired - self._m + 1
            if self._buf:
                kept = pl.concat(self._buf).filter(pl.col(PANE) > lim)
                self._buf = [kept] if kept.height else []
            for field, frames in self._sk.items():
                if frames:
                    kept = self._compact(frames).filter(pl.col(PANE) > lim)
                    self._sk[field] = [kept] if kept.height else []

    def _emit_dirty(self, upto: int) -> None:
        pairs = self._state.dirty_pairs(upto)
        if pairs is not None:
            self._pending.append(self._emit(*pairs))

    def _emit(self, w: np.ndarray, key: np.ndarray) -> pl.DataFrame:
        """Current values of windows ``w`` for keys ``key`` (parallel arrays)."""
        body = pl.DataFrame({W: w, KEY_ID: pl.Series(key, dtype=pl.UInt32)})
        fast = self._state.aggregate(w, key, self._fast)
        body = body.with_columns(pl.Series(name, values) for name, values in fast.items())
        by = [W, KEY_ID]
        if self._buffered and self._buf:
            rows = self._explode(pl.concat(self._buf)).join(body.select(by), on=by, how="semi")
            res = rows.group_by(by).agg(self._buf_exprs)
            body = body.join(res, on=by, how="left", maintain_order="left")
        for field in self._sketch_fields:
            qs = {s.name: s.q for s in self._sketch if s.field == field and s.q is not None}
            if self._sk[field]:
                rows = self._explode(pl.concat(self._sk[field])).join(body.select(by), on=by, how="semi")
                body = body.join(sketch_quantiles(rows, by, qs), on=by, how="left", maintain_order="left")
            else:
                body = body.with_columns(pl.lit(None, pl.Float64).alias(n) for n in qs)
        start = (pl.col(W) - (self._m - 1)) * self._p + self._off
        return body.with_columns(window_start=start, window_end=(pl.col(W) + 1) * self._p + self._off)

    def _explode(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Rows tagged with every window their pane belongs to."""
        if self._m == 1:
            return rows.with_columns(pl.col(PANE).alias(W))
        return rows.with_columns(pl.int_ranges(PANE, pl.col(PANE) + self._m).alias(W)).explode(W)

    def _flush(self, ctx: StepContext) -> pl.DataFrame | None:
        if not self._pending:
            return None
        body = pl.concat(self._pending, how="vertical_relaxed")
        self._pending = []
        return result_frame(body, self._specs, ctx)
