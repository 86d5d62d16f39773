"""``Flatline``: a value stuck for N readings."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["Flatline", "FlatlineSnapshot"]

logger = logging.getLogger(__name__)


class FlatlineSnapshot(DetectorSnapshot, frozen=True, tag="detector/flatline/1"):
    """State of :class:`Flatline`: the last value and the length of its run, per key and field."""


class Flatline(Detector):
    """Flag a field whose value has not changed (within ``tolerance``) for ``n`` readings in a row.

    The ``n``-th identical reading and every one after it score 1.0; a changed value resets the run.
    A NaN, inf or null value is skipped: it neither extends nor breaks the run.

    Parameters
    ----------
    fields:
        Value columns to watch.
    n:
        Run length (readings, >= 2) from which the value counts as stuck.
    tolerance:
        Largest absolute change still counted as "the same value".

    Examples
    --------
    >>> import polars as pl
    >>> logic = Flatline(["t"], n=3).build()
    >>> logic.score_learn(pl.DataFrame({"t": [1.0, 2.0, 2.0, 2.0, 2.0, 3.0]}))["is_anomaly"].to_list()
    [False, False, False, True, True, False]
    """

    kind = "flatline"
    snapshot_type = FlatlineSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        n: int = 10,
        tolerance: float = 0.0,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=0.5, warmup=0, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("n", n, integer=True)
        if n < 2:
            raise ValueError(f"n={n!r}: a run needs at least 2 readings, e.g. n=10")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
            raise ValueError(f"tolerance={tolerance!r}: give a number >= 0")
        self.n = n
        self.tolerance = float(tolerance)

    def _new_logic(self) -> DetectorLogic:
        return _FlatlineLogic(self)


class _FlatlineLogic(DetectorLogic):
    definition: Flatline

    def __init__(self, definition: Flatline) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("last", (f,), np.float64, math.nan)
        self._declare("run", (f,), np.int64, 0)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _flatline_kernel(batch.keys, batch.values(d.fields), a["last"], a["run"], d.n, d.tolerance, score, learn, out)


@lazy_njit(cache=True, nogil=True)
def _flatline_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    last: np.ndarray,
    run: np.ndarray,
    n_stuck: int,
    tol: float,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    for i in range(n):
        k = keys[i]
        for j in range(f):
            v = x[i, j]
            if math.isnan(v):
                continue
            same = abs(v - last[k, j]) <= tol  # False while last is NaN (no value yet)
            r = run[k, j] + 1 if same else 1
            if do_score and r >= n_stuck:
                out[i] = 1.0
            if do_learn:
                run[k, j] = r
                last[k, j] = v
