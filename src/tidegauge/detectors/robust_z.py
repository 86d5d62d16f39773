"""``RobustZ``: per-key rolling median and MAD."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["RobustZ", "RobustZSnapshot"]

logger = logging.getLogger(__name__)

# MAD of a normal distribution is 0.6745 sd: 1.4826 * MAD estimates the sd
_MAD_TO_SD = 1.4826


class RobustZSnapshot(DetectorSnapshot, frozen=True, tag="detector/robust_z/1"):
    """State of :class:`RobustZ`: the last ``window`` values per key and field (ring buffers)."""


class RobustZ(Detector):
    """Robust z-score against the rolling median and MAD of each key's last ``window`` values.

    ``z = |x - median| / (1.4826 * MAD)`` (the MAD scaled to a standard deviation, floored at
    ``min_std``) and the score is ``erf(z / sqrt(2))``, as for :class:`ZScore`; a record's score is the
    maximum over its fields. Outliers barely move a median, so no winsorising is needed; a sustained
    shift is absorbed once it fills half the window. NaN, inf and null values are skipped. Memory is
    ``8 * window`` bytes per key and field.

    Parameters
    ----------
    fields:
        Value columns to score.
    window:
        Values kept per key and field (>= 3).
    warmup:
        Values needed before scoring (at most ``window``).

    Examples
    --------
    >>> import polars as pl
    >>> logic = RobustZ(["t"], window=10, warmup=5).build()
    >>> out = logic.score_learn(pl.DataFrame({"t": [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 50.0]}))
    >>> out["is_anomaly"].to_list()
    [False, False, False, False, False, False, True]
    """

    kind = "robust_z"
    snapshot_type = RobustZSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        window: int = 60,
        threshold: float = 0.999,
        warmup: int = 20,
        min_std: float = 1e-6,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=warmup, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("window", window, integer=True)
        if window < 3:
            raise ValueError(f"window={window!r}: give at least 3 values, e.g. window=60")
        if warmup > window:
            raise ValueError(f"warmup={warmup!r} exceeds window={window!r}; use warmup <= window")
        check_positive("min_std", min_std)
        self.window = window
        self.min_std = float(min_std)

    def _new_logic(self) -> DetectorLogic:
        return _RobustZLogic(self)


class _RobustZLogic(DetectorLogic):
    definition: RobustZ

    def __init__(self, definition: RobustZ) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("buf", (f, definition.window), np.float64, 0.0)
        self._declare("count", (f,), np.int64, 0)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _robust_kernel(
            batch.keys, batch.values(d.fields), a["buf"], a["count"], d.min_std, max(d.warmup, 1), score, learn, out
        )


@lazy_njit(cache=True, nogil=True)
def _robust_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    buf: np.ndarray,
    count: np.ndarray,
    min_std: float,
    warmup: int,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    w = buf.shape[2]
    tmp = np.empty(w)
    for i in range(n):
        k = keys[i]
        best = 0.0
        for j in range(f):
            v = x[i, j]
            if math.isnan(v):
                continue
            c = count[k, j]
            if do_score and c >= warmup:
                m = min(c, w)
                med = np.median(buf[k, j, :m])
                for q in range(m):
                    tmp[q] = abs(buf[k, j, q] - med)
                sd = max(_MAD_TO_SD * np.median(tmp[:m]), min_std)
                s = math.erf(abs(v - med) / sd / math.sqrt(2.0))
                if s > best:
                    best = s
            if do_learn:
                buf[k, j, c % w] = v
                count[k, j] = c + 1
        out[i] = best
