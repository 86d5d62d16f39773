"""``ZScore``: per-key EWMA mean and variance, scored by the two-sided normal tail."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["ZScore", "ZScoreSnapshot"]

logger = logging.getLogger(__name__)

_SQRT2 = math.sqrt(2.0)
_SUSTAIN = 10
"""Winsorised readings in a row that make a shift sustained when ``restart`` is off (else ``restart[0]``)."""


class ZScoreSnapshot(DetectorSnapshot, frozen=True, tag="detector/zscore/1"):
    """State of :class:`ZScore`: ``mean``, ``var``, ``count`` per key and field."""


class ZScore(Detector):
    """Exponentially weighted z-score per key and field.

    Each key keeps, per field, an exponentially weighted mean and variance with weight ``alpha``
    (bias-corrected: the first ``1/alpha`` values are averaged with weight ``1/n``, so the estimate is
    exact from the start). A value ``x`` gets ``z = |x - mean| / sd`` against the state before it and the
    score ``erf(z / sqrt(2))``: the probability mass of a normal within ``z`` standard deviations
    (``z = 3.29`` -> 0.999, ``z = 4`` -> 0.99994). A record's score is the maximum over its fields.

    Learning is winsorised: a value more than ``clip`` standard deviations away moves the mean by at most
    ``alpha * clip * sd`` and leaves the variance alone, so a sustained shift keeps being flagged for many
    readings instead of being absorbed at once, while a permanent change of level is still learned.
    When a mature baseline sees a sustained shift (``restart[0]`` winsorised values in a row), it
    remembers the level the shift left; a later value back within ``clip`` standard deviations of that
    level is scored against it and snaps the mean back, so the end of a long, absorbed anomaly is not
    flagged for thousands of readings.

    Parameters
    ----------
    fields:
        Value columns to score.
    alpha:
        Weight of a new value in the mean and variance, in (0, 1].
    threshold:
        ``is_anomaly`` when ``score >= threshold`` (0.999 is about 3.3 standard deviations).
    warmup:
        Values per key and field learned before scoring starts (score 0 until then).
    clip:
        Winsorising bound in standard deviations (``None``: plain EWMA updates).
    min_std:
        Floor on the standard deviation, so a constant signal does not make every jitter infinite.
    restart:
        ``(n, maturity)``: a key that has learned fewer than ``maturity`` values and then sees ``n``
        winsorised values in a row starts over (a new warm-up at the new level). A young baseline that
        was learned during an anomaly is thus dropped after ``n`` readings of normal data instead of
        flagging them for thousands; a mature baseline never restarts. ``None`` disables it.

    Examples
    --------
    >>> import polars as pl
    >>> det = ZScore(["t"], warmup=5, key="sensor")
    >>> logic = det.build()
    >>> df = pl.DataFrame({"sensor": ["a"] * 8, "t": [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 9.0]})
    >>> out = logic.score_learn(df)
    >>> out["is_anomaly"].to_list()
    [False, False, False, False, False, False, False, True]
    """

    kind = "zscore"
    snapshot_type = ZScoreSnapshot

    def __init__(
        self,
        fields: Sequence[str] | str,
        *,
        alpha: float = 0.02,
        threshold: float = 0.999,
        warmup: int = 30,
        clip: float | None = 3.0,
        min_std: float = 1e-6,
        restart: tuple[int, int] | None = (20, 1000),
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=warmup, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("alpha", alpha, upper=1.0)
        if clip is not None:
            check_positive("clip", clip)
        check_positive("min_std", min_std)
        if restart is not None:
            if len(restart) != 2:
                raise ValueError(f"restart={restart!r}: give (readings, maturity), e.g. (20, 1000), or None")
            check_positive("restart[0]", restart[0], integer=True)
            check_positive("restart[1]", restart[1], integer=True)
        self.restart = restart
        self.alpha = float(alpha)
        self.clip = None if clip is None else float(clip)
        self.min_std = float(min_std)

    def _new_logic(self) -> DetectorLogic:
        return _ZScoreLogic(self)


class _ZScoreLogic(DetectorLogic):
    definition: ZScore

    def __init__(self, definition: ZScore) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("mean", (f,), np.float64, 0.0)
        self._declare("var", (f,), np.float64, 0.0)
        self._declare("count", (f,), np.int64, 0)
        self._declare("run", (f,), np.int64, 0)
        self._declare("anchor", (f,), np.float64, np.nan)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _zscore_kernel(
            batch.keys,
            batch.values(d.fields),
            a["mean"],
            a["var"],
            a["count"],
            a["run"],
            a["anchor"],
            d.alpha,
            -1.0 if d.clip is None else d.clip,
            d.min_std * d.min_std,
            d.warmup,
            0 if d.restart is None else d.restart[0],
            0 if d.restart is None else d.restart[1],
            _SUSTAIN if d.restart is None else d.restart[0],
            score,
            learn,
            out,
        )


@njit(cache=True, nogil=True)
def _zscore_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    run: np.ndarray,
    anchor: np.ndarray,
    alpha: float,
    clip: float,
    min_var: float,
    warmup: int,
    restart_after: int,
    maturity: int,
    sustain: int,
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
            m = mean[k, j]
            s2 = var[k, j]
            if s2 < min_var:
                s2 = min_var
            sd = math.sqrt(s2)
            dev = v - m
            anc = anchor[k, j]
            # settled (not inside a shift) and back at the level held before the last sustained shift:
            # the shift is over, judge the value against that level
            back = clip > 0.0 and run[k, j] <= 0 and not math.isnan(anc) and abs(v - anc) <= clip * sd
            if do_score and c >= warmup and c > 0:
                z = abs(v - anc) if back and abs(v - anc) < abs(dev) else abs(dev)
                s = math.erf(z / sd / _SQRT2)
                if s > best:
                    best = s
            if do_learn:
                c += 1
                count[k, j] = c
                a = 1.0 / c
                if a < alpha:
                    a = alpha
                if clip > 0.0 and c > warmup and c > 1 and abs(dev) > clip * sd:
                    prev = run[k, j]
                    if back:
                        # return from a learned shift: snap to the earlier level instead of crawling back
                        mean[k, j] = anc
                        run[k, j] = 0
                        continue
                    r = prev + 1
                    if r == sustain and (c >= maturity or restart_after == 0):
                        # a sustained shift of a mature baseline: remember the level it leaves (single
                        # outliers never move it; the mean has moved only sustain bounded steps since)
                        anchor[k, j] = m
                    if restart_after > 0 and r >= restart_after and c < maturity:
                        # a young baseline contradicted for long: start over at the new level, and
                        # forget the old one (it may have been learned during an anomaly)
                        anchor[k, j] = math.nan
                        mean[k, j] = v
                        var[k, j] = 0.0
                        count[k, j] = 1
                        run[k, j] = 0
                        continue
                    run[k, j] = r
                    # winsorised: bounded step for the mean, variance untouched
                    mean[k, j] = m + a * math.copysign(clip * sd, dev)
                else:
                    run[k, j] = 0
                    mean[k, j] = m + a * dev
                    var[k, j] = (1.0 - a) * (var[k, j] + a * dev * dev)
        out[i] = best
