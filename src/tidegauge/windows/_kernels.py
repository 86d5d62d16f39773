"""Compiled folding kernels of the fixed-window fast path (numba, cached on disk).

Kept to two kernels so that first use in a fresh process compiles little (``cache=True`` reuses the
machine code across processes).
"""

from __future__ import annotations

import logging

import numpy as np

from tidegauge._jit import lazy_njit

__all__ = ["count_rows", "fold_field"]

logger = logging.getLogger(__name__)


@lazy_njit(cache=True, nogil=True)
def count_rows(cell: np.ndarray, rows: np.ndarray) -> None:  # pragma: no cover - compiled
    """``rows[cell[i]] += 1`` for every record."""
    for i in range(cell.size):
        rows[cell[i]] += 1


@lazy_njit(cache=True, nogil=True)
def fold_field(
    cell: np.ndarray,
    ts: np.ndarray,
    x: np.ndarray,
    cnt: np.ndarray,
    tot: np.ndarray,
    m2: np.ndarray,
    mn: np.ndarray,
    mx: np.ndarray,
    fts: np.ndarray,
    fv: np.ndarray,
    lts: np.ndarray,
    lv: np.ndarray,
    want_m2: bool,
    want_fl: bool,
) -> None:  # pragma: no cover - compiled
    """Fold values ``x`` (NaN = missing, skipped) into the state cells ``cell``.

    ``m2`` is the Welford sum of squared deviations, updated from the running sum so that ``sum`` stays
    the exact sequential sum. ``first`` keeps the smallest time (ties: earliest arrival), ``last`` the
    largest (ties: latest arrival).
    """
    for i in range(cell.size):
        v = x[i]
        if v != v:
            continue
        s = cell[i]
        c = cnt[s] + 1
        cnt[s] = c
        old = tot[s]
        new = old + v
        tot[s] = new
        if want_m2 and c > 1:
            m2[s] += (v - old / (c - 1)) * (v - new / c)
        if v < mn[s]:
            mn[s] = v
        if v > mx[s]:
            mx[s] = v
        if want_fl:
            t = ts[i]
            if c == 1 or t < fts[s]:
                fts[s] = t
                fv[s] = v
            if c == 1 or t >= lts[s]:
                lts[s] = t
                lv[s] = v
