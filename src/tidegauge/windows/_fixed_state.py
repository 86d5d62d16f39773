"""Columnar state of the fixed-window fast path: a ring of panes x key ids, per statistic.

Every statistic is a 2-D array ``(ring, key_capacity)``; pane ``j`` lives in row ``j % ring``. Windows
(identified by their last pane) use the same ring for their ``dirty`` flag (emitted window updated by a
record within the allowed lateness, or touched in ``emit="update"`` mode). The live range is panes
``lo..hi`` and windows ``lo..hi + m - 1``; the ring and key capacity double on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from tidegauge.aggregate.spec import AggSpec
from tidegauge.windows._kernels import count_rows, fold_field
from tidegauge.windows._output import float_values

__all__ = ["NEVER", "PaneState"]

logger = logging.getLogger(__name__)

NEVER = -(2**63)
"""Frontier value before any window closed (int64 minimum, so it survives msgpack)."""

# statistic suffix -> (dtype, empty value)
_INIT: dict[str, tuple[type, float]] = {
    "cnt": (np.int64, 0),
    "sum": (np.float64, 0.0),
    "m2": (np.float64, 0.0),
    "min": (np.float64, np.inf),
    "max": (np.float64, -np.inf),
    "fts": (np.int64, 0),
    "fv": (np.float64, np.nan),
    "lts": (np.int64, 0),
    "lv": (np.float64, np.nan),
}
_DUMMY_F = np.zeros(1, np.float64)
_DUMMY_I = np.zeros(1, np.int64)


def warm_up() -> None:
    """Load (or compile) the folding kernels now, on a throwaway state, with the argument types a flow
    gives them (event times and values as polars hands them: read-only arrays)."""
    from tidegauge.aggregate.spec import parse_aggregations

    state = PaneState(parse_aggregations({"x": ["mean", "std", "first"]}), 1)
    one = np.zeros(1, np.int64)
    ts = pl.Series([0], dtype=pl.Int64).to_numpy()
    state.fold(one, ts, one, one - 1, {"x": pl.Series("x", [1.0])}, update=True)


class PaneState:
    """Ring of pane statistics for the mergeable aggregations of ``specs``."""

    def __init__(self, specs: Sequence[AggSpec], panes: int) -> None:
        self.m = panes
        self.fields = list(dict.fromkeys(s.field for s in specs if s.field is not None))
        self.want_m2 = {f: any(s.field == f and s.agg in ("std", "var") for s in specs) for f in self.fields}
        self.want_fl = {f: any(s.field == f and s.agg in ("first", "last") for s in specs) for f in self.fields}
        self.ring = 8  # grows to the live span of panes (out-of-orderness + lateness + size) / pane
        self.kcap = 64
        self.lo: int | None = None
        self.hi = 0
        self.closed = NEVER
        self.freed = NEVER
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((self.ring, self.kcap), init, dtype) for name, (dtype, init) in self._layout()
        }

    def _layout(self) -> list[tuple[str, tuple[type, float]]]:
        out: list[tuple[str, tuple[type, float]]] = [("rows", (np.int64, 0)), ("dirty", (np.bool_, False))]
        for i, f in enumerate(self.fields):
            stats = ["cnt", "sum", "min", "max"]
            stats += ["m2"] if self.want_m2[f] else []
            stats += ["fts", "fv", "lts", "lv"] if self.want_fl[f] else []
            out += [(f"{i}.{s}", _INIT[s]) for s in stats]
        return out

    @property
    def open_cells(self) -> int:
        return int(np.count_nonzero(self.arrays["rows"]))

    @property
    def top(self) -> int:
        """Last window that may hold data."""
        return NEVER if self.lo is None else self.hi + self.m - 1

    def _ensure(self, lo: int, hi: int, keys: int) -> None:
        span = hi + self.m - lo
        if span <= self.ring and keys <= self.kcap:
            return
        ring, kcap = self.ring, self.kcap
        while ring < span:
            ring *= 2
        while kcap < keys:
            kcap *= 2
        logger.debug("window state grows to %d panes x %d keys", ring, kcap)
        for name, (dtype, init) in self._layout():
            old = self.arrays[name]
            new: np.ndarray = np.full((ring, kcap), init, dtype)
            if self.lo is not None:
                for w in range(self.lo, self.hi + self.m):
                    new[w % ring, : self.kcap] = old[w % self.ring]
            self.arrays[name] = new
        self.ring, self.kcap = ring, kcap

    def fold(
        self,
        key: np.ndarray,
        ts: np.ndarray,
        j: np.ndarray,
        f: np.ndarray,
        values: dict[str, pl.Series],
        *,
        update: bool,
    ) -> None:
        """Fold records (key id, event time, pane, last expired window) into the ring."""
        if not key.size:
            return
        jmin, jmax = int(j.min()), int(j.max())
        lo = jmin if self.lo is None else min(self.lo, jmin)
        hi = jmax if self.lo is None else max(self.hi, jmax)
        self._ensure(lo, hi, int(key.max()) + 1)
        self.lo, self.hi = lo, hi
        ring, kcap, a = self.ring, self.kcap, self.arrays
        k64 = key.astype(np.int64)
        cell = (j % ring) * kcap + k64
        count_rows(cell, a["rows"].reshape(-1))
        for i, field in enumerate(self.fields):
            x = float_values(values[field])
            m2 = a[f"{i}.m2"].reshape(-1) if self.want_m2[field] else _DUMMY_F
            fl = self.want_fl[field]
            fold_field(
                cell, ts, x,
                a[f"{i}.cnt"].reshape(-1), a[f"{i}.sum"].reshape(-1), m2,
                a[f"{i}.min"].reshape(-1), a[f"{i}.max"].reshape(-1),
                a[f"{i}.fts"].reshape(-1) if fl else _DUMMY_I, a[f"{i}.fv"].reshape(-1) if fl else _DUMMY_F,
                a[f"{i}.lts"].reshape(-1) if fl else _DUMMY_I, a[f"{i}.lv"].reshape(-1) if fl else _DUMMY_F,
                self.want_m2[field], fl,
            )  # fmt: skip
        if not update and jmin > self.closed:
            return
        dirty = a["dirty"].reshape(-1)
        for d in range(self.m):
            w = j + d
            mask = w > f if update else (w > f) & (w <= self.closed)
            if mask.any():
                dirty[(w[mask] % ring) * kcap + k64[mask]] = True

    def free(self, last: int) -> None:
        """Drop every window ``<= last`` and the panes only they used."""
        if self.lo is not None:
            a, ring = self.arrays, self.ring
            for w in range(max(self.freed + 1, self.lo), min(last, self.top) + 1):
                a["dirty"][w % ring] = False
            layout = [(n, init) for n, (_, init) in self._layout() if n != "dirty"]
            for pane in range(self.lo, min(self.hi, last - self.m + 1) + 1):
                for name, init in layout:
                    a[name][pane % ring] = init
            self.lo = max(self.lo, last - self.m + 2)
            if self.lo > self.hi:
                self.lo = None
        self.freed = max(self.freed, last)

    def _panes(self, w: int) -> list[int]:
        assert self.lo is not None  # only called while data is live
        return [p % self.ring for p in range(max(w - self.m + 1, self.lo), min(w, self.hi) + 1)]

    def closed_pairs(self, after: int, upto: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(window, key) pairs with data for windows in ``(after, upto]``."""
        if self.lo is None:
            return None
        ws, ks = [], []
        rows = self.arrays["rows"]
        for w in range(max(after + 1, self.lo), min(upto, self.top) + 1):
            slots = self._panes(w)
            if not slots:
                continue
            keys = np.flatnonzero(rows[slots].sum(axis=0) if len(slots) > 1 else rows[slots[0]])
            ws.append(np.full(keys.size, w, np.int64))
            ks.append(keys)
        return _pairs(ws, ks)

    def dirty_pairs(self, upto: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Dirty (window, key) pairs for windows ``<= upto``; their flags are cleared."""
        dirty = self.arrays["dirty"]
        if self.lo is None or not dirty.any():
            return None
        ws, ks = [], []
        for w in range(max(self.freed + 1, self.lo), min(upto, self.top) + 1):
            row = dirty[w % self.ring]
            keys = np.flatnonzero(row)
            if keys.size:
                row[keys] = False
                ws.append(np.full(keys.size, w, np.int64))
                ks.append(keys)
        return _pairs(ws, ks)

    def aggregate(self, w: np.ndarray, key: np.ndarray, specs: Sequence[AggSpec]) -> dict[str, pl.Series]:
        """Values of the mergeable ``specs`` for (window, key) pairs, combining the window's panes."""
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
        bounds = np.flatnonzero(np.diff(w)) + 1
        for block_w, ks in zip(np.split(w, bounds), np.split(key, bounds), strict=True):
            slots = self._panes(int(block_w[0]))
            for s in specs:
                parts[s.name].append(self._combine(s, slots, ks))
        out: dict[str, pl.Series] = {}
        for s in specs:
            values = np.concatenate(parts[s.name]) if parts[s.name] else np.zeros(0)
            if s.agg == "count":
                out[s.name] = pl.Series(s.name, values, dtype=pl.UInt32)
            else:
                out[s.name] = pl.Series(s.name, values, dtype=pl.Float64).fill_nan(None)
        return out

    def _combine(self, spec: AggSpec, slots: list[int], ks: np.ndarray) -> np.ndarray:
        return np.asarray(self._combine_any(spec, slots, ks))

    def _combine_any(self, spec: AggSpec, slots: list[int], ks: np.ndarray) -> Any:
        a = self.arrays
        i = self.fields.index(spec.field)  # type: ignore[arg-type]
        if len(slots) == 1:
            return self._one_pane(spec, i, slots[0], ks)
        sel = np.ix_(np.asarray(slots, dtype=np.intp), ks)
        c = a[f"{i}.cnt"][sel]
        n = c.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            match spec.agg:
                case "count":
                    return n
                case "sum":
                    return a[f"{i}.sum"][sel].sum(axis=0)
                case "mean":
                    return a[f"{i}.sum"][sel].sum(axis=0) / n
                case "min":
                    return np.where(n > 0, a[f"{i}.min"][sel].min(axis=0), np.nan)
                case "max":
                    return np.where(n > 0, a[f"{i}.max"][sel].max(axis=0), np.nan)
                case "std" | "var":
                    t = a[f"{i}.sum"][sel]
                    mean = t.sum(axis=0) / n
                    pane_mean = np.where(c > 0, t / np.maximum(c, 1), 0.0)
                    m2 = a[f"{i}.m2"][sel].sum(axis=0) + (c * (pane_mean - mean) ** 2).sum(axis=0)
                    var = np.where(n > 1, m2 / (n - 1), np.nan)
                    return np.sqrt(var) if spec.agg == "std" else var
                case "first":
                    idx = np.argmax(c > 0, axis=0)
                    return a[f"{i}.fv"][sel][idx, np.arange(ks.size)]
                case "last":
                    idx = c.shape[0] - 1 - np.argmax((c > 0)[::-1], axis=0)
                    return a[f"{i}.lv"][sel][idx, np.arange(ks.size)]
        raise ValueError(f"{spec.agg!r} is not a mergeable aggregation")  # pragma: no cover

    def _one_pane(self, spec: AggSpec, i: int, slot: int, ks: np.ndarray) -> Any:
        """The same values for a window of one pane (tumbling windows): plain gathers, nothing to merge."""
        a = self.arrays
        n = a[f"{i}.cnt"][slot, ks]
        with np.errstate(invalid="ignore", divide="ignore"):
            match spec.agg:
                case "count":
                    return n
                case "sum":
                    return a[f"{i}.sum"][slot, ks]
                case "mean":
                    return a[f"{i}.sum"][slot, ks] / n
                case "min" | "max":
                    return np.where(n > 0, a[f"{i}.{spec.agg}"][slot, ks], np.nan)
                case "std" | "var":
                    var = np.where(n > 1, a[f"{i}.m2"][slot, ks] / (n - 1), np.nan)
                    return np.sqrt(var) if spec.agg == "std" else var
                case "first" | "last":
                    return np.where(n > 0, a[f"{i}.{'fv' if spec.agg == 'first' else 'lv'}"][slot, ks], np.nan)
        raise ValueError(f"{spec.agg!r} is not a mergeable aggregation")  # pragma: no cover


def _pairs(ws: list[np.ndarray], ks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    if not ws:
        return None
    w, k = np.concatenate(ws), np.concatenate(ks)
    return (w, k) if w.size else None
