"""``RateOfChange``: a value changing faster than a limit."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["RateOfChange", "RateOfChangeSnapshot"]

logger = logging.getLogger(__name__)

_NO_TIME = np.iinfo(np.int64).min


class RateOfChangeSnapshot(DetectorSnapshot, frozen=True, tag="detector/rate_of_change/1"):
    """State of :class:`RateOfChange`: previous value and event time per key and field."""


class RateOfChange(Detector):
    """Flag a field whose change from the key's previous valid value exceeds ``max_change``.

    With ``per="reading"`` the change is ``|x - previous|``; with ``per="second"`` it is divided by the
    event time elapsed since the previous value (``_tg_ts``, or the ``time=`` column standalone); records
    with no elapsed time (duplicate or out-of-order timestamps) are not scored. Score 1.0 when the rule
    fires, else 0.0. NaN, inf and null values are skipped: the next valid value is compared with the last
    valid one.

    Parameters
    ----------
    fields:
        Value columns to watch.
    max_change:
        Largest normal change (per reading, or per second).
    per:
        ``"reading"`` or ``"second"``.

    Examples
    --------
    >>> import polars as pl
    >>> logic = RateOfChange(["t"], max_change=5.0).build()
    >>> logic.score_learn(pl.DataFrame({"t": [20.0, 21.0, 30.0, 31.0]}))["is_anomaly"].to_list()
    [False, False, True, False]
    """

    kind = "rate_of_change"
    snapshot_type = RateOfChangeSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        max_change: float,
        per: Literal["reading", "second"] = "reading",
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=0.5, warmup=0, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("max_change", max_change)
        if per not in ("reading", "second"):
            raise ValueError(f"per={per!r}: give 'reading' or 'second'")
        self.max_change = float(max_change)
        self.per = per

    def _new_logic(self) -> DetectorLogic:
        return _RateLogic(self)


class _RateLogic(DetectorLogic):
    definition: RateOfChange

    def __init__(self, definition: RateOfChange) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("prev", (f,), np.float64, math.nan)
        self._declare("prev_ts", (f,), np.int64, _NO_TIME)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        per_second = d.per == "second"
        ts = batch.ts if per_second else np.zeros(batch.height, dtype=np.int64)
        _rate_kernel(
            batch.keys, ts, batch.values(d.fields), a["prev"], a["prev_ts"], d.max_change, per_second, score, learn, out
        )


@lazy_njit(cache=True, nogil=True)
def _rate_kernel(
    keys: np.ndarray,
    ts: np.ndarray,
    x: np.ndarray,
    prev: np.ndarray,
    prev_ts: np.ndarray,
    max_change: float,
    per_second: bool,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    no_time = np.iinfo(np.int64).min
    for i in range(n):
        k = keys[i]
        t = ts[i]
        for j in range(f):
            v = x[i, j]
            if math.isnan(v):
                continue
            p = prev[k, j]
            if do_score and not math.isnan(p):
                change = abs(v - p)
                if per_second:
                    pt = prev_ts[k, j]
                    if t == no_time or pt == no_time or t <= pt:
                        change = 0.0
                    else:
                        change = change / ((t - pt) * 1e-6)
                if change > max_change:
                    out[i] = 1.0
            if do_learn:
                prev[k, j] = v
                prev_ts[k, j] = t
