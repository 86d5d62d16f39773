"""``Threshold``: a fixed range per field (a stateless rule)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields

__all__ = ["Threshold", "ThresholdSnapshot"]

logger = logging.getLogger(__name__)


class ThresholdSnapshot(DetectorSnapshot, frozen=True, tag="detector/threshold/1"):
    """State of :class:`Threshold` (none: the rule is stateless)."""


class Threshold(Detector):
    """Flag values outside ``[lower, upper]``.

    The score is 1.0 when any field of the record is below ``lower`` or above ``upper`` and 0.0
    otherwise; a NaN, inf or null value is skipped (score 0). Give one bound or both.

    Parameters
    ----------
    fields:
        Value columns to check (all with the same bounds; use one ``Threshold`` per range).
    lower, upper:
        Inclusive bounds of the normal range (``None``: unbounded on that side).

    Examples
    --------
    >>> import polars as pl
    >>> logic = Threshold(["t"], upper=45.0).build()
    >>> logic.score_learn(pl.DataFrame({"t": [20.0, 46.0, None]}))["is_anomaly"].to_list()
    [False, True, False]
    """

    kind = "threshold"
    snapshot_type = ThresholdSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        lower: float | None = None,
        upper: float | None = None,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=0.5, warmup=0, key=key, time=time)
        self.fields = check_fields(fields)
        for label, bound in (("lower", lower), ("upper", upper)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int | float)):
                raise TypeError(f"{label}={bound!r}: give a number or None")
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{label}={bound!r}: give a finite number, or None for no bound")
        if lower is None and upper is None:
            raise ValueError("Threshold needs a bound: give lower=..., upper=... or both")
        if lower is not None and upper is not None and lower > upper:
            raise ValueError(f"lower={lower!r} is above upper={upper!r}; swap them")
        self.lower = -math.inf if lower is None else float(lower)
        self.upper = math.inf if upper is None else float(upper)

    def _new_logic(self) -> DetectorLogic:
        return _ThresholdLogic(self)


class _ThresholdLogic(DetectorLogic):
    definition: Threshold

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        if score:
            _range_kernel(batch.values(d.fields), d.lower, d.upper, out)


@lazy_njit(cache=True, nogil=True)
def _range_kernel(x: np.ndarray, lower: float, upper: float, out: np.ndarray) -> None:
    n, f = x.shape
    for i in range(n):
        for j in range(f):
            v = x[i, j]
            if v < lower or v > upper:  # NaN compares False: skipped
                out[i] = 1.0
                break
