"""``Cusum``: an online changepoint detector (two-sided CUSUM per field, re-baselined after each alarm)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["Cusum", "CusumSnapshot"]

logger = logging.getLogger(__name__)


class CusumSnapshot(DetectorSnapshot, frozen=True, tag="detector/cusum/1"):
    """State of :class:`Cusum`: noise scale, regime reference and CUSUM sums per key and field."""


class Cusum(Detector):
    """Online changepoint detection: Page's two-sided CUSUM per key and field, restarted at each alarm.

    Each key first learns, per field, the noise scale ``sd`` (mean and standard deviation of its first
    ``warmup`` valid values, Welford) and takes their mean as the reference level of the current
    *regime*. Every later value gives ``z = (x - reference) / sd`` and updates the one-sided sums

    ``S+ = max(0, S+ + z - drift)`` and ``S- = max(0, S- - z - drift)``,

    so a sustained shift of more than ``drift`` standard deviations accumulates while noise does not.
    The record's statistic is the largest sum over its fields and its score ``s / (s + h)`` (0.5 when
    the statistic reaches ``h``). A flagged record is a **changepoint**: it is the only row of the
    episode with ``is_anomaly`` True, and the key starts a new regime: the sums restart at 0 and the
    next ``reference`` valid values of each field set the new reference level (scored 0 meanwhile),
    so the detector follows a signal from level to level and alarms once per change, also when the
    signal leaves a new level again (the end of an anomaly). The scale learned in warm-up is kept.

    This is a changepoint detector, not an outlier detector: a single spike rarely moves a sum past
    ``h``. ``tidegauge eval skab`` scores its flagged rows as predicted changepoints directly.
    A NaN, inf or null value is skipped (score 0 for that field, no state change).

    Parameters
    ----------
    fields:
        Value columns to watch.
    h:
        Decision interval in standard deviations (larger: fewer false alarms, longer delays).
    drift:
        Allowance ``k`` in standard deviations subtracted at every step (about half the smallest
        shift worth detecting).
    reference:
        Values averaged into the new reference level after a changepoint (>= 1).
    warmup:
        Values per key and field that set the noise scale and the first reference (>= 2).
    threshold:
        Score at which a record is flagged (and the regime restarts); 0.5 means ``S >= h``.
    min_std:
        Floor on the learned standard deviation, so a constant field does not make jitter infinite.

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> rng = np.random.default_rng(1)
    >>> x = np.r_[rng.normal(0, 1, 100), rng.normal(4, 1, 100), rng.normal(0, 1, 100)]
    >>> out = Cusum(["v"], warmup=50, h=8.0).build().score_learn(pl.DataFrame({"v": x}))
    >>> np.flatnonzero(out["is_anomaly"].to_numpy()).tolist()
    [101, 202]
    """

    kind = "cusum"
    snapshot_type = CusumSnapshot
    emits_changepoints = True

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        h: float = 8.0,
        drift: float = 0.5,
        reference: int = 10,
        warmup: int = 30,
        threshold: float = 0.5,
        min_std: float = 1e-6,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=warmup, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("h", h)
        if isinstance(drift, bool) or not isinstance(drift, int | float) or not drift >= 0:
            raise ValueError(f"drift={drift!r}: give a number of standard deviations >= 0, e.g. drift=0.5")
        check_positive("reference", reference, integer=True)
        check_positive("min_std", min_std)
        if warmup < 2:
            raise ValueError(f"warmup={warmup!r}: the noise scale needs at least 2 values, e.g. warmup=30")
        if self.threshold <= 0.0:
            raise ValueError("threshold=0 would restart the regime at every record; give a value in (0, 1]")
        self.h = float(h)
        self.drift = float(drift)
        self.reference = reference
        self.min_std = float(min_std)

    def _new_logic(self) -> DetectorLogic:
        return _CusumLogic(self)

    def __repr__(self) -> str:
        return f"Cusum(fields={list(self.fields)!r}, h={self.h}, drift={self.drift}, name={self.name!r})"


class _CusumLogic(DetectorLogic):
    definition: Cusum

    def __init__(self, definition: Cusum) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("count", (f,), np.int64, 0)  # valid values learned (warm-up progress)
        self._declare("mean", (f,), np.float64, 0.0)  # Welford mean of the warm-up values
        self._declare("m2", (f,), np.float64, 0.0)  # Welford sum of squared deviations
        self._declare("ref_n", (f,), np.int64, 0)  # values averaged into ref_mean (complete at reference)
        self._declare("ref_mean", (f,), np.float64, 0.0)  # level of the current regime
        self._declare("pos", (f,), np.float64, 0.0)  # S+
        self._declare("neg", (f,), np.float64, 0.0)  # S-

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _cusum_kernel(
            batch.keys, batch.values(d.fields), a["count"], a["mean"], a["m2"], a["ref_n"], a["ref_mean"],
            a["pos"], a["neg"], d.h, d.drift, d.reference, d.warmup, d.min_std, d.threshold,
            score, learn, out,
        )  # fmt: skip


@lazy_njit(cache=True, nogil=True)
def _cusum_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    count: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    ref_n: np.ndarray,
    ref_mean: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    h: float,
    drift: float,
    reference: int,
    warmup: int,
    min_std: float,
    threshold: float,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    for i in range(n):
        k = keys[i]
        best = 0.0
        for j in range(f):
            v = x[i, j]
            if math.isnan(v):
                continue
            c = count[k, j]
            if c < warmup:
                if do_learn:
                    c += 1
                    count[k, j] = c
                    delta = v - mean[k, j]
                    mean[k, j] += delta / c
                    m2[k, j] += delta * (v - mean[k, j])
                    if c == warmup:
                        # the warm-up values are the first regime's reference
                        ref_mean[k, j] = mean[k, j]
                        ref_n[k, j] = reference
                continue
            if ref_n[k, j] < reference:
                # re-baselining after a changepoint: this value helps set the new regime's level
                if do_learn:
                    r = ref_n[k, j] + 1
                    ref_n[k, j] = r
                    ref_mean[k, j] += (v - ref_mean[k, j]) / r
                continue
            sd = math.sqrt(m2[k, j] / (warmup - 1))
            if sd < min_std:
                sd = min_std
            z = (v - ref_mean[k, j]) / sd
            sp = pos[k, j] + z - drift
            if sp < 0.0:
                sp = 0.0
            sn = neg[k, j] - z - drift
            if sn < 0.0:
                sn = 0.0
            s = sp if sp > sn else sn
            if s > best:
                best = s
            if do_learn:
                pos[k, j] = sp
                neg[k, j] = sn
        sc = best / (best + h)
        if do_score:
            out[i] = sc
        if do_learn and best > 0.0 and sc >= threshold:
            # a changepoint: start a new regime for every warmed-up field of this key
            for j in range(f):
                if count[k, j] >= warmup:
                    pos[k, j] = 0.0
                    neg[k, j] = 0.0
                    ref_n[k, j] = 0
                    ref_mean[k, j] = 0.0
