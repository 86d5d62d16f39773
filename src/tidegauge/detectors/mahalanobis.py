"""``Mahalanobis``: online multivariate distance over a key's feature vector."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from tidegauge._jit import lazy_njit
from tidegauge.detectors.base import Batch, Detector, DetectorLogic, DetectorSnapshot, check_fields, check_positive

__all__ = ["Mahalanobis", "MahalanobisSnapshot"]

logger = logging.getLogger(__name__)


class MahalanobisSnapshot(DetectorSnapshot, frozen=True, tag="detector/mahalanobis/1"):
    """State of :class:`Mahalanobis`: EWMA mean vector and covariance matrix per key."""


class Mahalanobis(Detector):
    """Online Mahalanobis distance of a key's feature vector from its EWMA mean and covariance.

    Each key keeps an exponentially weighted mean vector and covariance matrix (weight ``alpha``,
    bias-corrected like :class:`ZScore`). A record's squared distance ``d2`` against the state before
    it is turned into a score by the chi-square CDF with ``len(fields)`` degrees of freedom (Wilson-
    Hilferty normal approximation), so correlated fields are judged jointly: a reading whose fields
    disagree with their usual relation scores high even if each is in range. A distance beyond ``clip``
    (in the equivalent normal z) moves the mean a bounded step and leaves the covariance alone. A record
    with any NaN, inf or null field is skipped (score 0, not learned). ``ridge`` (relative to each
    variance) keeps the covariance invertible.

    Examples
    --------
    >>> import numpy as np, polars as pl
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(0, 1, 300); b = a + rng.normal(0, 0.1, 300)
    >>> a[-1], b[-1] = 1.0, -1.0   # each in range, together impossible
    >>> out = Mahalanobis(["a", "b"]).build().score_learn(pl.DataFrame({"a": a, "b": b}))
    >>> out["is_anomaly"].to_list()[-1]
    True
    """

    kind = "mahalanobis"
    snapshot_type = MahalanobisSnapshot

    def __init__(
        self,
        fields: Sequence[str],
        *,
        alpha: float = 0.02,
        threshold: float = 0.999,
        warmup: int = 30,
        clip: float | None = 4.0,
        ridge: float = 1e-6,
        name: str | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> None:
        super().__init__(name=name, threshold=threshold, warmup=warmup, key=key, time=time)
        self.fields = check_fields(fields)
        check_positive("alpha", alpha, upper=1.0)
        if clip is not None:
            check_positive("clip", clip)
        check_positive("ridge", ridge)
        self.alpha = float(alpha)
        self.clip = -1.0 if clip is None else float(clip)
        self.ridge = float(ridge)

    def _new_logic(self) -> DetectorLogic:
        return _MahalanobisLogic(self)


class _MahalanobisLogic(DetectorLogic):
    definition: Mahalanobis

    def __init__(self, definition: Mahalanobis) -> None:
        super().__init__(definition)
        f = len(definition.fields)
        self._declare("mean", (f,), np.float64, 0.0)
        self._declare("cov", (f, f), np.float64, 0.0)
        self._declare("count", (), np.int64, 0)

    def _run(self, batch: Batch, out: np.ndarray, score: bool, learn: bool) -> None:
        d = self.definition
        self._warn_missing(d.fields, batch)
        a = self._arrays
        _mahalanobis_kernel(
            batch.keys, batch.values(d.fields), a["mean"], a["cov"], a["count"],
            d.alpha, d.clip, d.ridge, max(d.warmup, 2), score, learn, out,
        )  # fmt: skip


@lazy_njit(cache=True, nogil=True)
def _mahalanobis_kernel(
    keys: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    cov: np.ndarray,
    count: np.ndarray,
    alpha: float,
    clip: float,
    ridge: float,
    warmup: int,
    do_score: bool,
    do_learn: bool,
    out: np.ndarray,
) -> None:
    n, f = x.shape
    dev = np.empty(f)
    y = np.empty(f)
    chol = np.empty((f, f))
    h = 2.0 / (9.0 * f)
    for i in range(n):
        ok = True
        for j in range(f):
            if math.isnan(x[i, j]):
                ok = False
        if not ok:
            continue
        k = keys[i]
        c = count[k]
        for j in range(f):
            dev[j] = x[i, j] - mean[k, j]
        # Cholesky of cov + ridge, then d2 = |L^-1 dev|^2
        for r in range(f):
            for q in range(r + 1):
                s = cov[k, r, q]
                if r == q:
                    s += ridge * (1.0 + cov[k, r, r])
                for p in range(q):
                    s -= chol[r, p] * chol[q, p]
                if r == q:
                    chol[r, r] = math.sqrt(max(s, 1e-300))
                else:
                    chol[r, q] = s / chol[q, q]
        d2 = 0.0
        for r in range(f):
            s = dev[r]
            for p in range(r):
                s -= chol[r, p] * y[p]
            y[r] = s / chol[r, r]
            d2 += y[r] * y[r]
        # Wilson-Hilferty: (d2/f)^(1/3) is about normal with mean 1 - h and variance h
        z = ((d2 / f) ** (1.0 / 3.0) - (1.0 - h)) / math.sqrt(h)
        if do_score and c >= warmup:
            out[i] = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        if do_learn:
            c += 1
            count[k] = c
            a = max(1.0 / c, alpha)
            if clip > 0.0 and c > warmup and z > clip:
                shrink = clip / z
                for j in range(f):
                    mean[k, j] += a * dev[j] * shrink
            else:
                for r in range(f):
                    mean[k, r] += a * dev[r]
                for r in range(f):
                    for q in range(f):
                        cov[k, r, q] = (1.0 - a) * (cov[k, r, q] + a * dev[r] * dev[q])
